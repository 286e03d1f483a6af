"""Export keras_nets.build(NET) (Keras initialisers, or weights from a tlearn dump) to ONNX with
tf2onnx — the "Keras tf2onnx export" that tlearn-finetune must train.

usage: keras_export_net.py NET OUT.onnx [WEIGHTS_DIR]
WEIGHTS_DIR (optional) holds `<layer>__kernel.npy` / `<layer>__bias.npy` as keras_agree.py reads them.
The graph takes NHWC float32 `input` and ends in the net's Softmax/Sigmoid (tf2onnx's NCHW
Transposes inside), opset 13.
"""
import os
import sys

import numpy as np
import tensorflow as tf
import tf2onnx

import keras_nets

net, out = sys.argv[1], sys.argv[2]
model, _, _, shape = keras_nets.build(net)
if len(sys.argv) > 3:
    for layer in model.layers:
        if layer.weights:
            k = np.load(os.path.join(sys.argv[3], f"{layer.name}__kernel.npy"))
            if k.ndim == 4:
                k = k.transpose(2, 3, 1, 0)
            layer.set_weights([k, np.load(os.path.join(sys.argv[3], f"{layer.name}__bias.npy"))])
spec = (tf.TensorSpec((None,) + shape, tf.float32, name="input"),)
tmp = out + ".tmp"
# from_keras cannot map Keras 3 Sequential outputs; a tf.function of the model converts cleanly.
forward = tf.function(lambda x: model(x, training=False), input_signature=spec)
tf2onnx.convert.from_function(forward, input_signature=spec, opset=13, output_path=tmp)
os.replace(tmp, out)
