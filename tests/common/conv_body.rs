//! Small convolutional classifiers around a body of convolutions, for the compiler's checks: the
//! unit tests beside it (`pipeline/train/compile/tests.rs`) and `tests/gradients.rs` include this
//! one file (`#[path]`), each with its own `onnx`, `GraphBuilder`, `A`, `Dim`, `ModelProto`,
//! `ArrayD`, `IxDyn`, `Path`, `Rg`, `Rng`, `SeedableRng` and `rand_array` in scope.

use super::*;

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
        onnx::probe::shapes(&probe, Path::new("probe"), vec![("x", x.view())], std::slice::from_ref(&f)).unwrap();
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
