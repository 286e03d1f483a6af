//! Training's pieces checked through the library: learning-rate schedules, the optimizer update's
//! operands, and a model split before its first trained layer recomposing. (The other checks once
//! here are unit tests beside their modules now — imageio, metrics, fsutil, features/npy,
//! calibrate, spill — or in `tests/cutting.rs`, `tests/data.rs`, `tests/house/no_shell.rs`; these
//! stay until `train/` has a home for them.)

mod common;
use ndarray::ArrayD;
use std::path::Path;

#[test]
fn learning_rate_schedules() {
    use tlearn::train::optim::Schedule;
    assert_eq!(Schedule::Constant.lr(0.1, 7, 70, 100), 0.1);
    let step = Schedule::Step { every: 3, factor: 0.5 };
    let by_epoch: Vec<f64> = (0..7).map(|e| step.lr(1.0, e, 0, 100)).collect();
    assert_eq!(by_epoch, vec![1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]);
    let cos = Schedule::Cosine { alpha: 0.1 };
    assert!((cos.lr(2.0, 0, 0, 100) - 2.0).abs() < 1e-12);
    assert!((cos.lr(2.0, 0, 50, 100) - 2.0 * (0.9 * 0.5 + 0.1)).abs() < 1e-12);
    assert!((cos.lr(2.0, 0, 100, 100) - 0.2).abs() < 1e-12);
    assert!(Schedule::Step { every: 0, factor: 0.5 }.validate().is_err());
    assert!(Schedule::Cosine { alpha: 1.5 }.validate().is_err());
}

/// The conv base a lower learning rate applies to, and a split before the first trained layer
/// whose two parts compute what the whole model does.
#[test]
fn conv_base_initializers_and_a_split_that_recomposes() {
    let (_d, path, m) = common::tiny_loaded(4);
    let base = tlearn::onnx::cut::base_initializers(&m, &path, 32).unwrap();
    let mut base: Vec<&str> = base.iter().map(|s| s.as_str()).collect();
    base.sort();
    assert_eq!(base, ["conv/bias", "conv/kernel"]);
    let g = tlearn::onnx::graph(&m);
    let gemm = g.node.iter().position(|n| n.op_type == "Gemm").unwrap();
    let cut = tlearn::onnx::split::single_cut(g, gemm).unwrap();
    assert_eq!(g.node[cut.at - 1].op_type, "Flatten", "{cut:?}");
    let (before, after) = tlearn::onnx::split::split_at(&m, &cut, &[1, 8 * 16 * 16]);
    let names = |m: &tlearn::onnx::proto::ModelProto| -> Vec<String> {
        tlearn::onnx::graph(m).initializer.iter().map(|t| t.name.clone()).collect()
    };
    assert!(names(&after).iter().all(|n| n.starts_with("fc/")), "{:?}", names(&after));
    assert!(names(&before).iter().all(|n| n.starts_with("conv/")), "{:?}", names(&before));
    let opts = tlearn::runtime::SessionOptions { device: tlearn::runtime::Device::Cpu, threads: 1, precision: None };
    let x = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[3, 32, 32, 3]), |i| {
        ((i[1] * 5 + i[2] + i[3] * 7 + i[0]) % 13) as f32
    });
    let run = |m: &tlearn::onnx::proto::ModelProto, x: &ndarray::ArrayD<f32>| {
        tlearn::train::predict(&tlearn::onnx::encode_model(m), &path, x, 3, &opts).unwrap()
    };
    let whole = run(&m, &x);
    let parts = run(&after, &run(&before, &x));
    assert!((&whole - &parts).iter().all(|d| d.abs() < 1e-6), "{whole} vs {parts}");
    // Nothing frozen before the first layer: no cut but the input itself.
    assert!(tlearn::onnx::split::single_cut(g, 0).is_none());
}

/// The optimizer's update multiplies and adds no rank-0 scalar: onnxruntime broadcasts one over a
/// 1×1 convolution's weight (M, C, 1, 1) element by element, ~100× slower than a rank-matched one
/// (`make bench-train`'s ResNet-50 step spent 10 % of its time there). The rate inputs are only
/// reshaped, and every scalar constant the update adds has the rank of what it scales.
#[test]
fn the_update_broadcasts_no_rank_0_scalar() {
    use tlearn::onnx::{builder::A, Dim, GraphBuilder};
    use tlearn::train::{graph, optim};
    let mut b = GraphBuilder::new("pointwise").with_prefix("p/");
    b.input("x", &[Dim::named("N"), Dim::Fixed(4), Dim::Fixed(4), Dim::Fixed(8)]);
    let t = b.op("Transpose", &["x"], vec![("perm", A::Ints(vec![0, 3, 1, 2]))]);
    let w = b.init_f32("w", &ArrayD::from_elem(ndarray::IxDyn(&[16, 8, 1, 1]), 0.1));
    let h = b.op("Conv", &[&t, &w], vec![]);
    let h = b.op("Relu", &[&h], vec![]);
    let h = b.op("GlobalAveragePool", &[&h], vec![]);
    let f = b.op("Flatten", &[&h], vec![("axis", A::I(1))]);
    let k = b.init_f32("k", &ArrayD::from_elem(ndarray::IxDyn(&[16, 3]), 0.1));
    let bias = b.init_f32("bias", &ArrayD::from_elem(ndarray::IxDyn(&[3]), 0.0));
    let l = b.op("Gemm", &[&f, &k, &bias], vec![]);
    b.node("Softmax", &[&l], &["y"], vec![("axis", A::I(-1))]);
    b.output("y", &[Dim::named("N"), Dim::Fixed(3)]);
    let m = tlearn::onnx::model(b.finish(), "test");
    let tg = graph::compile(&m, Path::new("pointwise.onnx"), &|_| true, &[4, 4, 8], graph::Mode::Train).unwrap();
    let n = tg.params.len();
    let groups = optim::Groups { lr_scale: vec![0.5; n], decayed: vec![true; n] };
    for opt in [optim::Optimizer::rmsprop(1e-3), optim::Optimizer::adam(1e-3), optim::Optimizer::sgd(1e-3, 0.9)] {
        let u = optim::append_update(&tg, &opt, &groups);
        let g = tlearn::onnx::graph(&u);
        let before: std::collections::HashSet<&str> =
            tlearn::onnx::graph(&tg.model).node.iter().map(|n| n.name.as_str()).collect();
        let scalars: std::collections::HashSet<&str> =
            g.initializer.iter().filter(|t| t.dims.is_empty()).map(|t| t.name.as_str()).collect();
        for node in g.node.iter().filter(|n| !before.contains(n.name.as_str())) {
            for i in &node.input {
                let rank0 =
                    scalars.contains(i.as_str()) || (i == optim::LR || i == optim::DECAY) && node.op_type != "Reshape";
                assert!(!rank0, "{opt:?}: {} `{}` reads rank-0 `{i}`", node.op_type, node.name);
            }
        }
    }
}
