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

.PHONY: help setup setup-cuda build test demo demo-best data backbone extract head evaluate score bench clean fmt lint

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}'

setup: $(ORT_LIB) ## put libonnxruntime $(ORT_VERSION) (pinned PyPI wheel, sha256 checked) into .ort/

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

lint: ## rustfmt + clippy, warnings are errors
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings
