//! What the compiler's unit tests share: small models with a convolutional body, a training
//! graph run once at a model's initial weights, and array comparisons.

use crate::onnx::builder::A;
use crate::onnx::{self, proto::ModelProto, Dim, GraphBuilder};
use crate::runtime::{Device, SessionOptions};
use crate::train::compile::TrainGraph;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use std::path::Path;

pub type Rg = rand_chacha::ChaCha8Rng;

pub fn opts() -> SessionOptions {
    SessionOptions { device: Device::Cpu, threads: 1, precision: None }
}

pub fn rand_array(rng: &mut impl Rng, shape: &[usize], scale: f32) -> ArrayD<f32> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.gen_range(-scale..scale))
}

/// NHWC input → Transpose → conv body (NCHW) built by `body` → Flatten → Gemm → Sigmoid/Softmax.
pub fn conv_model(
    input: [usize; 3],
    classes: usize,
    body: impl FnOnce(&mut GraphBuilder, &mut Rg, String) -> String,
) -> ModelProto {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    let mut b = GraphBuilder::new("conv").with_prefix("c/");
    b.input(
        "x",
        &[Dim::named("N"), Dim::Fixed(input[0] as i64), Dim::Fixed(input[1] as i64), Dim::Fixed(input[2] as i64)],
    );
    let t = b.op("Transpose", &["x"], vec![("perm", A::Ints(vec![0, 3, 1, 2]))]);
    let h = body(&mut b, &mut rng, t);
    let f = b.op("Flatten", &[&h], vec![("axis", A::I(1))]);
    // Size of the flattened features: run the body's shapes through a probe-free count.
    let probe = onnx::model(
        {
            let mut g = b.graph.clone();
            g.output = vec![onnx::value_info(&f, onnx::proto::dtype::FLOAT, &[])];
            g
        },
        "probe",
    );
    let x = ArrayD::<f32>::zeros(IxDyn(&[1, input[0], input[1], input[2]]));
    let shapes =
        crate::onnx::probe::shapes(&probe, Path::new("probe"), vec![("x", x.view())], std::slice::from_ref(&f))
            .unwrap();
    let d = shapes[&f][1];
    let k = if classes == 2 { 1 } else { classes };
    let w = b.init_f32("dense_w", &rand_array(&mut rng, &[d, k], 0.3));
    let bias = b.init_f32("dense_b", &rand_array(&mut rng, &[k], 0.1));
    let z = b.op("Gemm", &[&f, &w, &bias], vec![]);
    if classes == 2 {
        b.node("Sigmoid", &[&z], &["y"], vec![]);
    } else {
        b.node("Softmax", &[&z], &["y"], vec![("axis", A::I(-1))]);
    }
    b.output("y", &[Dim::named("N"), Dim::Fixed(k as i64)]);
    onnx::model(b.finish(), "test")
}

pub fn conv(
    b: &mut GraphBuilder,
    rng: &mut Rg,
    x: &str,
    cin: usize,
    cout: usize,
    k: usize,
    attrs: Vec<(&str, A)>,
) -> String {
    let w = b.fresh("w");
    let w = b.init_f32(&w, &ArrayD::from_shape_simple_fn(IxDyn(&[cout, cin, k, k]), || rng.gen_range(-0.5..0.5)));
    let bias = b.fresh("b");
    let bias = b.init_f32(&bias, &ArrayD::from_shape_simple_fn(IxDyn(&[cout]), || rng.gen_range(-0.1..0.1)));
    b.op("Conv", &[x, &w, &bias], attrs)
}

/// Run the training graph `model` (compiled from `m` as `tg`, or a rewrite of it) on one batch at
/// `m`'s initial weights; returns the tensors `names`.
pub fn run_train_graph(
    model: &ModelProto,
    m: &ModelProto,
    tg: &TrainGraph,
    x: &ArrayD<f32>,
    y: &ArrayD<f32>,
    names: &[String],
) -> Vec<ArrayD<f32>> {
    let what = Path::new("test.onnx");
    let mut s = crate::runtime::open(&onnx::encode_model(model), what, &opts()).unwrap().session;
    let params: Vec<ArrayD<f32>> = tg
        .params
        .iter()
        .map(|p| onnx::tensor_to_f32(onnx::graph(m).initializer.iter().find(|t| &t.name == p).unwrap()).unwrap())
        .collect();
    let ones = ArrayD::ones(IxDyn(&[y.shape()[0], 1]));
    let mut feed = vec![
        (tg.input.as_str(), x.view()),
        (crate::train::compile::LABELS, y.view()),
        (crate::train::compile::WEIGHTS, ones.view()),
    ];
    feed.extend(tg.params.iter().map(|p| p.as_str()).zip(params.iter().map(|a| a.view())));
    let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    crate::runtime::run_f32(&mut s, feed, &names).unwrap()
}

/// Largest absolute difference and largest magnitude of `a`.
pub fn max_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> (f32, f32) {
    let d = (a - b).iter().fold(0f32, |m, v| m.max(v.abs()));
    (d, a.iter().fold(0f32, |m, v| m.max(v.abs())))
}

/// One-hot labels (N, k): the targets of a categorical cross-entropy.
pub fn one_hot(labels: &[usize], k: usize) -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(&[labels.len(), k]), |i| (labels[i[0]] == i[1]) as u8 as f32)
}
