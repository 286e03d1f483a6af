"""Reference losses for tlearn's training-graph compiler (tests/keras_agreement.rs).

usage: keras_agree.py DIR NET BATCH LR
DIR holds x.npy (steps·batch samples, NHWC float32), y.npy (one-hot or 0/1 labels) and one
`<layer>__kernel.npy` / `<layer>__bias.npy` per parameter as tlearn stores them (conv kernels
OIHW, dense kernels [in, out]). Loads them into keras_nets.build(NET), trains one RMSprop(LR)
step per consecutive batch with train_on_batch (float32, one thread, deterministic ops) and
prints each step's loss (computed before that step's update, as tlearn reports it), one per line.
"""
import os
import sys

import numpy as np
import tensorflow as tf
from tensorflow import keras

import keras_nets

d, net, batch, lr = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.config.experimental.enable_op_determinism()
model, loss, _, _ = keras_nets.build(net)
for layer in model.layers:
    if not layer.weights:
        continue
    kernel = np.load(os.path.join(d, f"{layer.name}__kernel.npy"))
    if kernel.ndim == 4:  # OIHW → Keras HWIO
        kernel = kernel.transpose(2, 3, 1, 0)
    layer.set_weights([kernel, np.load(os.path.join(d, f"{layer.name}__bias.npy"))])
model.compile(optimizer=keras.optimizers.RMSprop(lr), loss=loss)
x, y = np.load(os.path.join(d, "x.npy")), np.load(os.path.join(d, "y.npy"))
for s in range(0, len(x), batch):
    print(float(model.train_on_batch(x[s:s + batch], y[s:s + batch])))
