# Benchmarks: the measurements behind docs/BENCHMARKS.md, and the Python environments they and the
# Keras comparisons use (included by the Makefile).
.PHONY: bench bench-int8 bench-memory bench-train bench-checkpoints bench-fit bench-tf-env bench-env

bench: setup data backbone bench-env ## benchmarks: extraction throughput (tlearn vs raw ORT vs Python), training-step time (tlearn vs Keras), scoring and extraction memory (1k vs 100k images)
	$(CARGO) bench --bench extract
	$(CARGO) bench --bench train_step
	$(CARGO) bench --bench memory
	$(CARGO) bench --bench quantize

bench-int8: setup data build ## benchmarks: int8 vs fp32 backbones on ELPV (tlearn-backbone quantize): extraction img/s and head test accuracy side by side, for each fetched backbone
	$(CARGO) bench --bench quantize

bench-memory: setup ## benchmarks: peak memory of tlearn-score and tlearn-extract on 1,000 vs 100,000 generated images, tlearn-finetune --max-memory on 1,000 vs 20,000 (goal ≤ 1.5×)
	$(CARGO) bench --bench memory

bench-train: setup ## benchmarks: training-step time of the mnist and v1 nets and a ResNet-50 fine-tuning step (224, batch 16): tlearn vs Keras (TF default and oneDNN) when bench-tf-env exists
	$(CARGO) bench --bench train_step

bench-checkpoints: setup ## benchmarks: where a 16 M-parameter dense head's fit (EfficientNet-Lite0 features, flattened) and its --trainable 'head/*' fine-tune spend their time: epochs vs checkpoints and the rest (BENCH_BIN_DIR=<older build>/release for a before/after)
	$(CARGO) bench --bench checkpoints

bench-fit: setup data/elpv/manifest.csv ## benchmarks: time to accuracy on ELPV binary — one `tlearn fit` of the seed-42 split with BENCH_FIT_ARGS (default: finetune-best's recipe) from nothing, extraction included: the CPU, the recipe, each fine-tune's epochs and sizes, the wall clock, the test accuracy
	$(CARGO) bench --bench fit

bench-tf-env: .cache/tfenv/bin/python ## benchmarks: a Python venv with tensorflow-cpu 2.21 for bench-train and agree (large download)

.cache/tfenv/bin/python:
	$(PYTHON) -m venv .cache/tfenv
	.cache/tfenv/bin/pip install --disable-pip-version-check -q tensorflow-cpu==2.21.0 tf2onnx==1.17.0

bench-env: .cache/benchenv/bin/python ## benchmarks: a Python venv with onnxruntime 1.31.1, numpy and Pillow for `make bench`

.cache/benchenv/bin/python: $(ORT_LIB)
	$(PYTHON) -m venv .cache/benchenv
	.cache/benchenv/bin/pip install --disable-pip-version-check -q .cache/wheels/$(ORT_WHEEL) numpy pillow
