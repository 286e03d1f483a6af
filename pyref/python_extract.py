"""Reference loop for `make bench`: a plain Python onnxruntime + Pillow feature extraction.

Decodes each image with Pillow (Keras' load_img: RGB, NEAREST resize), applies the Caffe
preprocessing with numpy, and runs the backbone in batches. Prints one JSON line.
"""
import argparse, json, time

import numpy as np
import onnxruntime as ort
from PIL import Image

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--list", required=True, help="file with one image path per line")
p.add_argument("--size", type=int, default=150)
p.add_argument("--batch", type=int, default=20)
p.add_argument("--threads", type=int, default=0)
p.add_argument("--dump", help="write the features of the first batch to this .npy")
p.add_argument("--rounds", type=int, default=1, help="best of this many passes")
a = p.parse_args()

paths = [l.strip() for l in open(a.list) if l.strip()]
so = ort.SessionOptions()
so.intra_op_num_threads = a.threads
sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
mean = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def load(path):
    img = Image.open(path).convert("RGB").resize((a.size, a.size), Image.NEAREST)
    x = np.asarray(img, dtype=np.float32)[..., ::-1]
    return x - mean


best = None
for _ in range(a.rounds):
    t = time.perf_counter()
    first = None
    for i in range(0, len(paths), a.batch):
        x = np.stack([load(q) for q in paths[i : i + a.batch]])
        y = sess.run(["features"], {"image": x})[0]
        if first is None:
            first = y
    elapsed = time.perf_counter() - t
    best = elapsed if best is None else min(best, elapsed)
if a.dump:
    np.save(a.dump, first)
print(json.dumps({"images": len(paths), "seconds": best, "img_per_s": len(paths) / best}))
