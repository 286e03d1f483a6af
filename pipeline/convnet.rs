//! Small convnets defined as ONNX, initialised like Keras (Glorot-uniform kernels, zero biases):
//! the MNIST net and the 150×150 cats-vs-dogs nets of "Deep Learning with Python" (v1, and v2
//! with Dropout). Input `image` (N,H,W,C) channels-last, rescaled to 0..1 by the caller; the
//! convolutions run NCHW between two Transposes, so Flatten sees Keras' (H,W,C) order.

use crate::error::{Error, Result};
use crate::init::glorot_uniform;
use crate::onnx::builder::A;
use crate::onnx::proto::ModelProto;
use crate::onnx::{self, cut, Dim, GraphBuilder};
use ndarray::{ArrayD, IxDyn};
use rand::SeedableRng;

/// A layer of a sequential net.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// 3×3 "valid" convolution + ReLU.
    Conv(usize),
    /// 2×2 max pooling.
    Pool,
    Flatten,
    Dropout(f32),
    /// Dense + ReLU.
    Dense(usize),
    /// The classifier: Dense(1, sigmoid) for 2 classes, Dense(k, softmax) otherwise.
    Classifier(usize),
}

/// A named net: input (H, W, C) and its layers.
#[derive(Clone, Debug, PartialEq)]
pub struct NetSpec {
    pub name: String,
    pub input: [usize; 3],
    pub layers: Vec<Layer>,
}

/// The nets' output: class probabilities.
pub const OUTPUT: &str = "probs";

/// The catalog of built-in nets.
pub const NAMES: &[&str] = &["mnist", "v1", "v2"];

pub fn spec(name: &str) -> Result<NetSpec> {
    use Layer::*;
    let (input, layers) = match name {
        // Conv32-Pool-Conv64-Pool-Conv64-Flatten-Dense64-Dense10 softmax: 93,322 parameters.
        "mnist" => ([28, 28, 1], vec![Conv(32), Pool, Conv(64), Pool, Conv(64), Flatten, Dense(64), Classifier(10)]),
        // Conv32-Pool-Conv64-Pool-Conv128-Pool-Conv128-Pool-Flatten-Dense512-Dense1: 3,453,121.
        "v1" | "v2" => {
            let mut l = vec![Conv(32), Pool, Conv(64), Pool, Conv(128), Pool, Conv(128), Pool, Flatten];
            if name == "v2" {
                l.push(Dropout(0.5));
            }
            l.extend([Dense(512), Classifier(2)]);
            ([150, 150, 3], l)
        }
        other => {
            return Err(Error::Param {
                name: "net",
                value: other.into(),
                reason: format!("unknown net; built in: {}", NAMES.join(", ")),
            })
        }
    };
    Ok(NetSpec { name: name.into(), input, layers })
}

impl NetSpec {
    /// The same net with a classifier for `k` classes.
    pub fn with_classes(mut self, k: usize) -> Result<NetSpec> {
        if k < 2 {
            return Err(Error::Param { name: "classes", value: k.to_string(), reason: "at least 2".into() });
        }
        for l in self.layers.iter_mut() {
            if let Layer::Classifier(c) = l {
                *c = k;
            }
        }
        Ok(self)
    }
}

/// Keras-style layer names: conv2d, conv2d_1, …
fn keras_name(counts: &mut std::collections::HashMap<&'static str, usize>, base: &'static str) -> String {
    let c = counts.entry(base).or_default();
    let name = if *c == 0 { base.to_string() } else { format!("{base}_{c}") };
    *c += 1;
    name
}

/// Build `spec` as an ONNX model with weights drawn from `seed`.
pub fn build(spec: &NetSpec, seed: u64) -> Result<ModelProto> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let [h, w, c] = spec.input;
    let net = &spec.name;
    let mut b = GraphBuilder::new(net).with_prefix(&format!("{net}/"));
    b.input(cut::IMAGE, &[Dim::named("N"), Dim::Fixed(h as i64), Dim::Fixed(w as i64), Dim::Fixed(c as i64)]);
    let mut counts = std::collections::HashMap::new();
    let mut x = format!("{net}/input/nchw");
    b.node("Transpose", &[cut::IMAGE], &[&x], vec![("perm", A::Ints(vec![0, 3, 1, 2]))]);
    let (mut ch, mut hh, mut ww) = (c, h, w);
    let mut flat = 0usize;
    let mut nchw = true;
    for layer in &spec.layers {
        match *layer {
            Layer::Conv(f) => {
                let name = keras_name(&mut counts, "conv2d");
                let k = b.init_f32(&format!("{name}/kernel"), &glorot_uniform(&mut rng, &[f, ch, 3, 3], ch * 9, f * 9));
                let bias = b.init_f32(&format!("{name}/bias"), &ArrayD::zeros(IxDyn(&[f])));
                let y = format!("{net}/{name}/Conv");
                b.node("Conv", &[&x, &k, &bias], &[&y], vec![("kernel_shape", A::Ints(vec![3, 3]))]);
                x = format!("{net}/{name}/Relu");
                b.node("Relu", &[&y], &[&x], vec![]);
                (ch, hh, ww) = (f, hh - 2, ww - 2);
            }
            Layer::Pool => {
                let name = keras_name(&mut counts, "max_pooling2d");
                let y = format!("{net}/{name}/MaxPool");
                let k = A::Ints(vec![2, 2]);
                b.node("MaxPool", &[&x], &[&y], vec![("kernel_shape", k.clone()), ("strides", k)]);
                x = y;
                (hh, ww) = (hh / 2, ww / 2);
            }
            Layer::Flatten => {
                let name = keras_name(&mut counts, "flatten");
                let t = format!("{net}/{name}/nhwc");
                b.node("Transpose", &[&x], &[&t], vec![("perm", A::Ints(vec![0, 2, 3, 1]))]);
                x = format!("{net}/{name}/Flatten");
                b.node("Flatten", &[&t], &[&x], vec![("axis", A::I(1))]);
                flat = ch * hh * ww;
                nchw = false;
            }
            Layer::Dropout(p) => {
                let name = keras_name(&mut counts, "dropout");
                let r = b.init_f32(&format!("{name}/ratio"), &ArrayD::from_elem(IxDyn(&[]), p));
                let y = format!("{net}/{name}/Dropout");
                b.node("Dropout", &[&x, &r], &[&y], vec![]);
                x = y;
            }
            Layer::Dense(units) | Layer::Classifier(units) => {
                if nchw {
                    return Err(Error::Other(format!("{net}: Dense before Flatten")));
                }
                let classifier = matches!(layer, Layer::Classifier(_));
                let out = if classifier { crate::metrics::output_width(units) } else { units };
                let name = keras_name(&mut counts, "dense");
                let k = b.init_f32(&format!("{name}/kernel"), &glorot_uniform(&mut rng, &[flat, out], flat, out));
                let bias = b.init_f32(&format!("{name}/bias"), &ArrayD::zeros(IxDyn(&[out])));
                let z = format!("{net}/{name}/MatMul");
                b.node("Gemm", &[&x, &k, &bias], &[&z], vec![]);
                let act = match (classifier, out) {
                    (false, _) => "Relu",
                    (true, 1) => "Sigmoid",
                    (true, _) => "Softmax",
                };
                x = if classifier { OUTPUT.to_string() } else { format!("{net}/{name}/{act}") };
                let attrs = if act == "Softmax" { vec![("axis", A::I(-1))] } else { vec![] };
                b.node(act, &[&z], &[&x], attrs);
                flat = out;
            }
        }
    }
    if x != OUTPUT {
        return Err(Error::Other(format!("{net}: the last layer must be the classifier")));
    }
    b.output(OUTPUT, &[Dim::named("N"), Dim::Fixed(flat as i64)]);
    let mut m = onnx::model(b.finish(), "tlearn-convnet");
    m.metadata_props.push(onnx::proto::StringStringEntryProto { key: "tlearn.net".into(), value: net.clone() });
    Ok(m)
}
