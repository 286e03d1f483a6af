"""Keras training-step time of tlearn's built-in nets, for `make bench-train`.

usage: keras_step.py NET BATCH STEPS THREADS   → prints the median seconds per step.
The nets are keras_nets.py's twins of `tlearn-convnet mnist|v1`; RMSprop 1e-4,
random inputs, train_on_batch (forward + backward + update), as tlearn's step does.
"""
import sys
import time

import numpy as np
import tensorflow as tf
from tensorflow import keras

import keras_nets

net, batch, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
model, loss, k, shape = keras_nets.build(net)
model.compile(optimizer=keras.optimizers.RMSprop(1e-4), loss=loss)
rng = np.random.default_rng(0)
x = rng.random((batch,) + shape, dtype=np.float32)
if k == 1:
    y = (np.arange(batch) % 2).astype(np.float32).reshape(-1, 1)
else:
    y = np.eye(k, dtype=np.float32)[np.arange(batch) % k]
times = []
for i in range(steps + 3):
    t = time.perf_counter()
    model.train_on_batch(x, y)
    if i >= 3:
        times.append(time.perf_counter() - t)
print(sorted(times)[len(times) // 2])
