//! Library-level checks: cutting, ELPV labels, schedules, byte sizes, no shell. (Preprocessing,
//! resizing, metrics, file safety, npy, calibration and spill files: unit tests beside their modules.)

mod common;
use ndarray::{ArrayD, Axis};
use std::path::Path;
use tlearn::imageio::{self, Interpolation, Preprocess, PreprocessKind};

#[test]
fn elpv_labels_and_classes() {
    let cells = tlearn::elpv::parse_labels(
        "images/cell0001.png  1.0  mono\nimages/cell0002.png 0.3333333333333333 poly\n",
        Path::new("labels.csv"),
    )
    .unwrap();
    assert_eq!(tlearn::elpv::class_of(&cells[0], 2), "defective");
    assert_eq!(tlearn::elpv::class_of(&cells[1], 2), "functional");
    assert_eq!(tlearn::elpv::class_of(&cells[1], 4), "p033");
    match tlearn::elpv::parse_labels("images/x.png oops mono", Path::new("labels.csv")) {
        Err(tlearn::Error::BadData { path, reason }) => {
            assert!(path == Path::new("labels.csv") && reason.starts_with("line 1:"), "{reason}")
        }
        other => panic!("expected bad data, got {:?}", other.map(|c| c.len())),
    }
}

#[test]
fn cut_backbone_equals_the_original_graph_and_a_plain_session() {
    let (d, src, m) = common::tiny_loaded(8);
    let cut = tlearn::onnx::cut::cut_model(&m, &src, "pool_out", tlearn::onnx::cut::Layout::Nchw).unwrap();
    assert_eq!(tlearn::onnx::cut::param_count(&cut), 224);
    // The same preprocessed tensor through the cut graph (tlearn's runtime) and through the
    // original graph with `pool_out` exposed (a plain ort session).
    let img = common::make_image(1, 3, 40, 30);
    let p = d.path().join("i.png");
    img.save(&p).unwrap();
    let x = imageio::load(&p, (32, 32), Interpolation::Nearest, &Preprocess::of(PreprocessKind::Caffe), u64::MAX)
        .unwrap()
        .insert_axis(Axis(0))
        .into_dyn();
    let bytes = tlearn::onnx::encode_model(&cut);
    let mut s = tlearn::runtime::open(&bytes, &src, &Default::default()).unwrap().session;
    let y = tlearn::runtime::run_f32(&mut s, vec![("image", x.view())], &["features"]).unwrap().remove(0);
    let shapes = tlearn::onnx::probe::shapes(&m, &src, vec![("input_1", x.view())], &["pool_out".to_string()]).unwrap();
    assert_eq!(shapes["pool_out"], vec![1, 8, 16, 16]);
    let mut full = m.clone();
    let g = full.graph.as_mut().unwrap();
    g.output = vec![tlearn::onnx::value_info("pool_out", tlearn::onnx::proto::dtype::FLOAT, &[])];
    let mut plain = ort::session::Session::builder(ort_env())
        .unwrap()
        .commit_from_memory(&tlearn::onnx::encode_model(&full))
        .unwrap();
    let out = plain.run(ort::inputs!["input_1" => ort::value::TensorRef::from_array_view(x.view()).unwrap()]).unwrap();
    let reference = out["pool_out"].try_extract_array::<f32>().unwrap().permuted_axes(vec![0, 2, 3, 1]).to_owned();
    let scale = reference.iter().fold(0f32, |a, v| a.max(v.abs()));
    let diff = y.iter().zip(reference.iter()).fold(0f32, |a, (p, q)| a.max((p - q).abs()));
    assert!(scale > 0.0 && diff <= 1e-4 * scale, "max diff {diff} vs scale {scale}");
    // Bit-for-bit stable across runs.
    let y2 = tlearn::runtime::run_f32(&mut s, vec![("image", x.view())], &["features"]).unwrap().remove(0);
    assert_eq!(y, y2);
}

fn ort_env() -> &'static ort::environment::Environment {
    tlearn::runtime::init().unwrap();
    tlearn::runtime::environment().unwrap()
}

#[test]
fn multiscale_cut_pools_and_concatenates() {
    use tlearn::onnx::cut::{cut_model, cut_model_pooled, GlobalPool, Layout};
    let (_dir, src, m) = common::tiny_loaded(4);
    let relu = m.graph.as_ref().unwrap().node.iter().find(|n| n.op_type == "Relu").unwrap().output[0].clone();
    let pooled =
        cut_model_pooled(&m, &src, &["pool_out".into(), relu], Layout::Nchw, Some(GlobalPool::AvgMax)).unwrap();
    let plain = cut_model(&m, &src, "pool_out", Layout::Nchw).unwrap();
    let x = ArrayD::from_shape_fn(ndarray::IxDyn(&[2, 32, 32, 3]), |i| {
        ((i[1] * 3 + i[2] * 5 + i[3] * 7 + i[0]) % 11) as f32 * 10.0
    });
    let run = |m: &tlearn::onnx::proto::ModelProto| {
        let mut s = tlearn::runtime::open(&tlearn::onnx::encode_model(m), &src, &Default::default()).unwrap().session;
        tlearn::runtime::run_f32(&mut s, vec![("image", x.view())], &["features"]).unwrap().remove(0)
    };
    let (yp, y) = (run(&pooled), run(&plain));
    assert_eq!(yp.shape(), &[2, 1, 1, 32], "avg+max of two 8-channel tensors");
    for n in 0..2 {
        for c in 0..8 {
            let v: Vec<f32> =
                (0..16).flat_map(|h| (0..16).map(move |w| (h, w))).map(|(h, w)| y[[n, h, w, c]]).collect();
            let mean = v.iter().sum::<f32>() / v.len() as f32;
            let max = v.iter().fold(f32::MIN, |a, &b| a.max(b));
            assert!((yp[[n, 0, 0, c]] - mean).abs() < 1e-4 * mean.abs().max(1.0), "avg of pool_out channel {c}");
            assert_eq!(yp[[n, 0, 0, 8 + c]], max, "max of pool_out channel {c}");
        }
    }
    let err = cut_model_pooled(&m, &src, &["pool_out".into(), "nope".into()], Layout::Nchw, Some(GlobalPool::Avg))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}

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

/// No library or binary code starts a shell (user-controlled strings must never reach one), and
/// every subprocess is one of the pinned downloaders.
#[test]
fn no_shell_is_ever_invoked() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline");
    let mut spawns = vec![];
    for e in walkdir::WalkDir::new(&root).into_iter().filter_map(|e| e.ok()) {
        if e.path().extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        for (i, line) in text.lines().enumerate() {
            for shell in ["\"sh\"", "\"bash\"", "\"/bin/sh\"", "\"-c\""] {
                assert!(!line.contains(shell), "{}:{}: {line}", e.path().display(), i + 1);
            }
            if line.contains("Command::new(") {
                spawns.push(format!("{}:{}", e.path().strip_prefix(&root).unwrap().display(), line.trim()));
            }
        }
    }
    spawns.sort();
    assert_eq!(
        spawns,
        [
            "backbone.rs:let status = std::process::Command::new(&python)",
            "mnist.rs:let status = std::process::Command::new(\"npm\")",
        ],
        "new subprocesses need a review (no shell, pinned inputs)"
    );
}

/// A model the fuzzer found (a layer node without outputs) once panicked the Keras-style summary;
/// now it is summarised or refused with an error.
#[test]
fn summary_of_a_malformed_model_does_not_panic() {
    let p =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/onnx_model/regression-node-without-outputs");
    let m = tlearn::onnx::decode_model(&std::fs::read(&p).unwrap(), &p).expect("it decodes");
    let r = std::panic::catch_unwind(|| tlearn::onnx::summary::rows(&m, &p, 32).map(|rows| rows.len()));
    assert!(r.is_ok(), "summary::rows panicked");
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

#[test]
fn byte_sizes_read_as_powers_of_1024() {
    use tlearn::cli::byte_size;
    assert_eq!(byte_size("4096"), Ok(4096));
    assert_eq!(byte_size("1K"), Ok(1024));
    assert_eq!(byte_size("512M"), Ok(512 << 20));
    assert_eq!(byte_size("1.5G"), Ok(3 << 29));
    assert_eq!(byte_size("2GiB"), Ok(2 << 30));
    assert_eq!(byte_size("2gb"), Ok(2 << 30));
    for bad in ["", "G", "-1M", "12Q", "1e400", "nanG"] {
        assert!(byte_size(bad).is_err(), "{bad}");
    }
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
