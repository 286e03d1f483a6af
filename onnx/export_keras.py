#!/usr/bin/env python3
"""Export a keras.applications conv base to ONNX with tf2onnx and register it with tlearn.

Optional, for users with internet access (ImageNet weights are downloaded by Keras):

    pip install tensorflow tf2onnx
    python onnx/export_keras.py VGG19 --size 224            # → onnx/vgg19-keras.onnx, registered
    python onnx/export_keras.py ResNet50 --weights none     # architecture only (tests, no download)

The exported graph takes NHWC float32 input; tf2onnx computes NCHW inside, so the conv base's last
tensor is cut with `--layout nchw` (tlearn appends the Transpose back to NHWC).
"""
import argparse
import pathlib
import subprocess
import sys

# keras.applications name → (preprocessing convention used by tlearn, default size)
MODELS = {
    "VGG16": ("caffe", 224),
    "VGG19": ("caffe", 224),
    "ResNet50": ("caffe", 224),
    "ResNet101": ("caffe", 224),
    "InceptionV3": ("tf", 299),
    "Xception": ("tf", 299),
    "MobileNet": ("tf", 224),
    "MobileNetV2": ("tf", 224),
    "DenseNet121": ("torch", 224),
    "NASNetMobile": ("tf", 224),
    "EfficientNetB0": ("raw", 224),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("--size", type=int, help="default input size recorded in the catalog")
    p.add_argument("--weights", default="imagenet", help="'imagenet' or 'none' (random init)")
    p.add_argument("--name", help="catalog name (default: <model>-keras, lower case)")
    p.add_argument("--onnx-dir", default="onnx")
    p.add_argument("--opset", type=int, default=13)
    p.add_argument("--no-register", action="store_true", help="only write the ONNX file")
    a = p.parse_args()

    import tensorflow as tf
    import tf2onnx

    pre, default_size = MODELS[a.model]
    size = a.size or default_size
    name = a.name or f"{a.model.lower()}-keras"
    weights = None if a.weights.lower() == "none" else a.weights
    ctor = getattr(tf.keras.applications, a.model)
    base = ctor(include_top=False, weights=weights, input_shape=(size, size, 3))
    spec = (tf.TensorSpec((None, None, None, 3), tf.float32, name="input"),)
    out_dir = pathlib.Path(a.onnx_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / f"{name}.src.onnx"
    tmp = src.with_suffix(".tmp")
    model_proto, _ = tf2onnx.convert.from_keras(base, input_signature=spec, opset=a.opset, output_path=str(tmp))
    tmp.replace(src)
    # The conv base's last op computes NCHW inside tf2onnx graphs: cut at the input of the final
    # Transpose back to NHWC when there is one, else at the graph output.
    out_name = model_proto.graph.output[0].name
    producer = {o: n for n in model_proto.graph.node for o in n.output}
    node = producer.get(out_name)
    if node is not None and node.op_type == "Transpose":
        cut, layout = node.input[0], "nchw"
    else:
        cut, layout = out_name, "nhwc"
    print(f"{a.model}: {base.count_params():,} parameters → {src} (cut at {cut}, {layout})")
    if a.no_register:
        return
    cmd = ["tlearn-backbone", "--onnx-dir", str(out_dir), "add", str(src), "--name", name,
           "--output", cut, "--layout", layout, "--preprocess", pre, "--size", str(size)]
    exe = pathlib.Path("target/release/tlearn-backbone")
    if exe.exists():
        cmd[0] = str(exe)
    sys.exit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
