"""int8 vs uint8 weights in one of tlearn's QDQ backbones: the same model with its per-channel int8
weights moved to uint8 (+128, zero point 128), which ORT's QLinearConv multiplies as u8u8 (no 16-bit
pair sums to overflow on CPUs without VNNI). Prints img/s of each (batch 16, 2 threads, best of 4,
random inputs), how far their features differ, and the ops ORT ran for the uint8 one.

usage: int8_weight_types.py onnx/NAME-int8.onnx SIZE   (onnx + onnxruntime: make bench-tf-env)
"""
import collections
import json
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

src, size = sys.argv[1], int(sys.argv[2])
s8 = onnx.load(src)
u8 = onnx.ModelProto()
u8.CopyFrom(s8)
for t in u8.graph.initializer:
    if t.name.endswith("/w_int8") or t.name.endswith("/w_zero"):
        a = numpy_helper.to_array(t).astype(np.int16) + 128
        t.CopyFrom(numpy_helper.from_array(a.astype(np.uint8), t.name))


def session(model, profile=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


inp = s8.graph.input[0]
nhwc = inp.type.tensor_type.shape.dim[-1].dim_value == 3
shape = (16, size, size, 3) if nhwc else (16, 3, size, size)
x = (np.random.default_rng(0).random(shape) * 100).astype(np.float32)
out = {}
for label, model in [("int8 weights", s8), ("uint8 weights", u8)]:
    s = session(model)
    s.run(None, {inp.name: x})
    best = float("inf")
    for _ in range(4):
        t = time.perf_counter()
        y = s.run(None, {inp.name: x})[0]
        best = min(best, time.perf_counter() - t)
    out[label] = y
    print(f"{label}: {16 / best:.1f} img/s")
a, b = out["int8 weights"], out["uint8 weights"]
print(f"max |int8 - uint8| / max |int8|: {np.abs(a - b).max() / np.abs(a).max():.2e}")
s = session(u8, "/tmp/int8_weight_types")
s.run(None, {inp.name: x})
ops = collections.Counter(e["args"].get("op_name") for e in json.load(open(s.end_profiling())) if e.get("cat") == "Node")
print("uint8 model ran:", {k: v for k, v in sorted(ops.items()) if "Conv" in str(k) or "Quant" in str(k)})
