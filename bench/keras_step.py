"""Keras training-step time of tlearn's built-in nets, for `make bench-train`.

usage: keras_step.py NET BATCH STEPS THREADS   → prints the median seconds per step.
The nets equal `tlearn-convnet mnist|v1` (same layers, Keras default initialisers); RMSprop 1e-4,
random inputs, train_on_batch (forward + backward + update), as tlearn's step does.
"""
import sys
import time

import numpy as np
import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import layers

net, batch, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
if net == "mnist":
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"), layers.Flatten(),
        layers.Dense(64, activation="relu"), layers.Dense(10, activation="softmax"),
    ])
    loss, k, shape = "categorical_crossentropy", 10, (28, 28, 1)
else:
    model = keras.Sequential([
        keras.Input((150, 150, 3)),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(128, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(128, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dense(512, activation="relu"), layers.Dense(1, activation="sigmoid"),
    ])
    loss, k, shape = "binary_crossentropy", 1, (150, 150, 3)
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
