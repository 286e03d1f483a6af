//! One test per correctness hole a read-through of the code found: constants that training must
//! not change, panics reachable from unusual models, a fine-tune that could not learn because its
//! input was scaled twice, an empty validation folder, and a catalog that only worked in the
//! project folder.

mod common;
use common::*;
use ndarray::{ArrayD, IxDyn};
use std::collections::HashMap;
use std::path::Path;
use tlearn::onnx::{self, Dim, GraphBuilder};
use tlearn::runtime::{Device, SessionOptions};

fn initializers(path: &Path) -> HashMap<String, ArrayD<f32>> {
    let m = onnx::load_model(path).unwrap();
    onnx::graph(&m)
        .initializer
        .iter()
        .filter_map(|t| onnx::tensor_to_f32(t).ok().map(|a| (t.name.clone(), a)))
        .collect()
}

fn opts() -> SessionOptions {
    SessionOptions { device: Device::Cpu, threads: 1, precision: None }
}

/// A standardising head fused into a deployable model has its statistics renamed
/// `head/frozen/…`; fine-tuning the head (`--trainable 'head/*'`) trains its weights and leaves
/// those constants as they were.
#[test]
fn frozen_constants_stay_frozen_after_fusion() {
    let w = workdir();
    let w = w.path();
    let feats = prepared(w, &["cat", "dog"], 10);
    ok("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--device", "cpu"], w);
    let head = ["--features", &feats, "--run", "std", "--epochs", "1", "--units", "4", "--standardize"];
    ok("tlearn-head", &head, w);
    ok("tlearn-score", &["data/toy/test", "--run", "std", "--out", "s.csv", "--device", "cpu"], w);
    let fused = initializers(&w.join("runs/std/model.onnx"));
    let frozen: Vec<&String> = fused.keys().filter(|k| k.contains("frozen/")).collect();
    assert!(frozen.len() >= 2, "the fused head keeps its statistics as head/frozen/…: {:?}", fused.keys());
    let args = [
        "runs/std/model.onnx",
        "--data",
        "data/toy",
        "--run",
        "ft",
        "--trainable",
        "head/*",
        "--epochs",
        "2",
        "--batch",
        "4",
        "--lr",
        "0.01",
        "--device",
        "cpu",
    ];
    ok("tlearn-finetune", &args, w);
    let tuned = initializers(&w.join("runs/ft/last.onnx"));
    for k in &frozen {
        assert_eq!(tuned[*k], fused[*k], "{k} is a constant and was trained");
    }
    let moved = fused.keys().filter(|k| k.starts_with("head/") && !k.contains("frozen/") && tuned[*k] != fused[*k]);
    assert!(moved.count() > 0, "the head's weights were trained");
}

/// A model that scales its own input (a Keras `Rescaling(1/255)` exported as a leading Mul) is
/// fed raw pixels by default; given pre-scaled pixels anyway, its loss does not move, and the
/// fit says so.
#[test]
fn a_model_that_rescales_its_input_is_fed_raw_pixels_and_a_stuck_loss_is_reported() {
    let w = workdir();
    let w = w.path();
    make_dataset(&w.join("raw"), &["cat", "dog"], 12, false);
    ok("tlearn-data", &["split", "raw", "data/r", "--seed", "1"], w);
    ok("tlearn-convnet", &["mnist", "--out", "net.onnx", "--classes", "2"], w);
    // net.onnx with its input multiplied by 1/255 first, as tf2onnx exports a Rescaling layer.
    let mut m = onnx::load_model(&w.join("net.onnx")).unwrap();
    let g = m.graph.as_mut().unwrap();
    let input = g.input[0].name.clone();
    for n in g.node.iter_mut() {
        for i in n.input.iter_mut().filter(|i| **i == input) {
            *i = "rescaled".into();
        }
    }
    g.initializer.push(onnx::tensor_f32("rescaling/scale", &ndarray::arr0(1.0f32 / 255.0).into_dyn()));
    let mul = tlearn::onnx::proto::NodeProto {
        name: "rescaling".into(),
        op_type: "Mul".into(),
        input: vec![input, "rescaling/scale".into()],
        output: vec!["rescaled".into()],
        ..Default::default()
    };
    g.node.insert(0, mul);
    assert_eq!(tlearn::finetune::own_rescale(&m), Some(1.0 / 255.0));
    onnx::save_model(&m, &w.join("rescaling.onnx")).unwrap();
    let args =
        |run: &'static str| ["rescaling.onnx", "--data", "data/r", "--run", run, "--epochs", "3", "--batch", "8"];
    let o = run("tlearn-finetune", &args("raw"), w);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("--rescale 1"), "{err}");
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(w.join("runs/raw/run.json")).unwrap()).unwrap();
    assert_eq!(info["config"]["rescale"], 1.0);
    let o = run("tlearn-finetune", &[&args("scaled")[..], &["--rescale", "0.00392156862745098"]].concat(), w);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("has not moved"), "{err}");
    // The built-in nets do not scale their input: Keras' 1/255.
    let plain = onnx::load_model(&w.join("net.onnx")).unwrap();
    assert_eq!(tlearn::finetune::own_rescale(&plain), None);
    assert_eq!(tlearn::finetune::default_rescale(&plain, Path::new("net.onnx")), 1.0 / 255.0);
}

/// An existing but empty `validation/` is "no validation" (with a warning), as a missing one is;
/// the epoch lines then leave the validation columns out instead of printing NaN.
#[test]
fn an_empty_validation_folder_means_no_validation_and_no_nan_is_printed() {
    let w = workdir();
    let w = w.path();
    make_dataset(&w.join("raw"), &["cat", "dog"], 10, false);
    ok("tlearn-data", &["split", "raw", "data/e", "--validation", "0", "--seed", "1"], w);
    std::fs::create_dir_all(w.join("data/e/validation/cat")).unwrap();
    ok("tlearn-convnet", &["mnist", "--out", "net.onnx", "--classes", "2"], w);
    let o = run("tlearn-finetune", &["net.onnx", "--data", "data/e", "--run", "e", "--epochs", "2", "--batch", "8"], w);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{err}");
    assert!(err.contains("validation") && err.contains("no images"), "{err}");
    assert!(out.contains("epoch   2/2") && !out.contains("NaN") && !out.contains("val_loss"), "{out}");
}

/// The built-in catalog is part of the binaries: `tlearn-backbone` lists and registers backbones
/// in a folder that has no `onnx/backbones.toml` (as an installed tlearn runs anywhere).
#[test]
fn the_catalog_works_from_any_folder() {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let out = ok("tlearn-backbone", &["list"], w);
    assert!(out.contains("vgg16") && out.contains("resnet50-thin"), "{out}");
    tiny_classifier(&w.join("tiny.onnx"), 3);
    let args = ["add", "tiny.onnx", "--output", "pool_out", "--preprocess", "caffe", "--size", "32"];
    ok("tlearn-backbone", &args, w);
    assert!(w.join("onnx/tiny.onnx").is_file() && w.join("onnx/user-backbones.toml").is_file());
    assert!(!w.join("onnx/backbones.toml").exists());
    let out = ok("tlearn-backbone", &["list"], w);
    assert!(out.contains("tiny") && out.contains("vgg16"), "{out}");
    // Built-in names stay reserved without the file, too.
    let err = fails("tlearn-backbone", &[&args[..], &["--name", "vgg16"]].concat(), w);
    assert!(err.contains("built-in"), "{err}");
}

/// One-class data: `split` warns; extraction and fine-tuning refuse it at their start with one
/// message (it used to panic after training, in the metrics or in scoring).
#[test]
fn one_class_data_is_refused_before_training() {
    let w = workdir();
    let w = w.path();
    make_dataset(&w.join("raw"), &["only"], 12, false);
    let o = run("tlearn-data", &["split", "raw", "data/toy", "--seed", "1"], w);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stderr).contains("at least two"));
    tiny_classifier(&w.join("tiny.onnx"), 3);
    ok("tlearn-backbone", &["add", "tiny.onnx", "--output", "pool_out", "--preprocess", "caffe", "--size", "32"], w);
    // Extraction (the heads' first step) refuses it before any image is decoded.
    let err = fails("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--device", "cpu"], w);
    assert!(err.contains("only 1 class (`only`)") && err.contains("at least two"), "{err}");
    assert!(!w.join("features/toy/tiny-32/train.npy").exists());
    let err = fails("tlearn-finetune", &["tiny.onnx", "--data", "data/toy", "--run", "ft", "--epochs", "1"], w);
    assert!(err.contains("data/toy/train") && err.contains("at least two") && !err.contains("panicked"), "{err}");
}

/// A backbone whose nodes have no names (valid ONNX; common in Caffe2 and older exports): every
/// ONNX file the stages write from it has unique, non-empty node names and loads in onnxruntime.
#[test]
fn every_onnx_file_written_has_unique_node_names_and_loads() {
    let w = workdir();
    let w = w.path();
    make_dataset(&w.join("raw"), &["a", "b"], 8, false);
    ok("tlearn-data", &["split", "raw", "data/toy", "--seed", "1"], w);
    let (_d, _, mut m) = tiny_loaded(3);
    for n in &mut m.graph.as_mut().unwrap().node {
        n.name.clear();
    }
    onnx::save_model(&m, &w.join("anon.onnx")).unwrap();
    ok("tlearn-backbone", &["add", "anon.onnx", "--output", "pool_out", "--preprocess", "caffe", "--size", "32"], w);
    ok("tlearn-extract", &["--data", "data/toy", "--backbone", "anon", "--device", "cpu"], w);
    ok("tlearn-head", &["--features", "features/toy/anon-32", "--run", "h", "--epochs", "2", "--units", "8"], w);
    ok("tlearn-score", &["data/toy/test", "--run", "h", "--device", "cpu", "--out", "s.csv"], w);
    let ft = ["runs/h/model.onnx", "--data", "data/toy", "--run", "ft", "--epochs", "1", "--explain", "0"];
    ok("tlearn-finetune", &ft, w);
    ok("tlearn-score", &["data/toy/test", "--model", "runs/ft/model.onnx", "--device", "cpu", "--out", "t.csv"], w);
    let mut seen = 0;
    for e in walkdir::WalkDir::new(w).into_iter().filter_map(|e| e.ok()) {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "onnx") || p.starts_with(w.join("anon.onnx")) {
            continue;
        }
        let m = onnx::load_model(p).unwrap();
        let mut names = std::collections::HashSet::new();
        for n in &onnx::graph(&m).node {
            assert!(!n.name.is_empty() && names.insert(n.name.clone()), "{}: node name {:?}", p.display(), n.name);
        }
        tlearn::runtime::open(&onnx::encode_model(&m), p, &opts()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        seen += 1;
    }
    assert!(seen >= 5, "{seen} ONNX files");
}

/// `--size` below the backbone's total stride (the tiny backbone: 32 → 16×16, stride 2) is
/// refused before any image is read: its features would come from padding alone.
#[test]
fn a_size_below_the_total_stride_is_refused() {
    let w = workdir();
    let w = w.path();
    prepared(w, &["a", "b"], 4);
    let err =
        fails("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--size", "1", "--device", "cpu"], w);
    assert!(err.contains("total stride (2") && err.contains("--size ≥ 2"), "{err}");
    ok("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--size", "2", "--device", "cpu"], w);
}

/// A backbone of opset 9 with Clip and Pad in their attribute form (ReLU6 and explicit padding as
/// older exporters wrote them): extracted as it is, and fused into a deployable model and
/// fine-tuned at tlearn's opset with the two rewritten to their input form.
#[test]
fn clip_and_pad_in_their_attribute_form_are_rewritten_where_the_opset_rises() {
    use tlearn::onnx::builder::A;
    let w = workdir();
    let w = w.path();
    make_dataset(&w.join("raw"), &["a", "b"], 8, false);
    ok("tlearn-data", &["split", "raw", "data/toy", "--seed", "1"], w);
    let mut b = GraphBuilder::new("old");
    b.input("input_1", &[Dim::named("N"), Dim::Fixed(16), Dim::Fixed(16), Dim::Fixed(3)]);
    let x = b.op("Transpose", &["input_1"], vec![("perm", A::Ints(vec![0, 3, 1, 2]))]);
    let x = b.op("Pad", &[&x], vec![("pads", A::Ints(vec![0, 0, 1, 1, 0, 0, 1, 1])), ("value", A::F(0.0))]);
    let k = b.init_f32(
        "k",
        &ArrayD::from_shape_fn(IxDyn(&[4, 3, 3, 3]), |i| 0.01 * (i[0] as f32 + 1.0) - 0.005 * i[1] as f32),
    );
    let c = b.op("Conv", &[&x, &k], vec![("kernel_shape", A::Ints(vec![3, 3]))]);
    b.node("Clip", &[&c], &["feat"], vec![("min", A::F(0.0)), ("max", A::F(6.0))]);
    let f = b.op("Flatten", &["feat"], vec![]);
    let wd = b.init_f32("wd", &ArrayD::from_elem(IxDyn(&[4 * 16 * 16, 2]), 0.001));
    let g = b.op("MatMul", &[&f, &wd], vec![]);
    b.node("Softmax", &[&g], &["prob"], vec![]);
    b.output("prob", &[Dim::named("N"), Dim::Fixed(2)]);
    let mut m = onnx::model(b.finish(), "old exporter");
    m.opset_import[0].version = 9;
    onnx::save_model(&m, &w.join("old.onnx")).unwrap();
    ok("tlearn-backbone", &["add", "old.onnx", "--output", "feat", "--preprocess", "caffe", "--size", "16"], w);
    ok("tlearn-extract", &["--data", "data/toy", "--backbone", "old", "--device", "cpu"], w);
    ok("tlearn-head", &["--features", "features/toy/old-16", "--run", "h", "--epochs", "2", "--units", "4"], w);
    ok("tlearn-score", &["data/toy/test", "--run", "h", "--device", "cpu", "--out", "s.csv"], w);
    let ft = ["runs/h/model.onnx", "--data", "data/toy", "--run", "ft", "--epochs", "1", "--explain", "0"];
    ok("tlearn-finetune", &ft, w);
    let fused = onnx::load_model(&w.join("runs/h/model.onnx")).unwrap();
    let rewritten: Vec<_> =
        onnx::graph(&fused).node.iter().filter(|n| n.op_type == "Clip" || n.op_type == "Pad").collect();
    assert_eq!(rewritten.len(), 2);
    for n in rewritten {
        assert!(n.input.len() >= 2 && n.attribute.iter().all(|a| a.name == "mode"), "{n:?}");
    }
}

/// Eight `tlearn-backbone add`s of different names at once: every one that says "registered"
/// is in the catalog (each write takes the catalog's lock and re-reads it under the lock).
#[test]
fn concurrent_registrations_all_land() {
    let w = workdir();
    let w = w.path();
    tiny_classifier(&w.join("tiny.onnx"), 3);
    let names: Vec<String> = (0..8).map(|i| format!("tiny{i}")).collect();
    let children: Vec<_> = names
        .iter()
        .map(|n| {
            std::process::Command::new(bin("tlearn-backbone"))
                .args(["add", "tiny.onnx", "--output", "pool_out", "--preprocess", "caffe", "--size", "32"])
                .args(["--name", n])
                .current_dir(w)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let toml = std::fs::read_to_string(w.join("onnx/user-backbones.toml")).unwrap();
    for n in &names {
        assert!(toml.contains(&format!("[{n}]")), "{n} lost:\n{toml}");
    }
    let out = ok("tlearn-backbone", &["list"], w);
    assert!(names.iter().all(|n| out.contains(n.as_str())), "{out}");
}

/// A graph with one input `x` (N, 4) ending in `last` (op, inputs).
fn ending_in(op: &str, inputs: &[&str]) -> tlearn::onnx::proto::ModelProto {
    let mut b = GraphBuilder::new("odd");
    b.input("x", &[Dim::named("N"), Dim::Fixed(4)]);
    let w = b.init_f32("w", &ArrayD::from_elem(IxDyn(&[4, 1]), 0.1));
    let h = b.op("MatMul", &["x", &w], vec![]);
    let ins: Vec<&str> = inputs.iter().map(|i| if *i == "h" { h.as_str() } else { i }).collect();
    b.node(op, &ins, &["y"], vec![]);
    b.output("y", &[Dim::named("N"), Dim::Fixed(1)]);
    onnx::model(b.finish(), "test")
}

/// Unusual models and data end in errors naming the problem, never in a panic: a last node
/// without inputs (compiler), a model without inputs (prediction), a head standardised on no rows
/// (head builder). (Outputs of another rank: `metrics`' unit tests.)
#[test]
fn unusual_models_and_empty_data_are_errors_not_panics() {
    let m = ending_in("Sigmoid", &[]);
    let e = tlearn::train::Trainer::new(&m, Path::new("odd.onnx"), &[4], 2, &opts()).err().unwrap();
    assert!(e.to_string().contains("has no input"), "{e}");
    // An unnamed last node that is not the probabilities is named by its op and index; a second
    // output is named with the first.
    let mut m = ending_in("Relu", &["h"]);
    m.graph.as_mut().unwrap().node.iter_mut().for_each(|n| n.name.clear());
    let e = tlearn::train::Trainer::new(&m, Path::new("odd.onnx"), &[4], 2, &opts()).err().unwrap();
    assert!(e.to_string().contains("node `Relu_1`") && e.to_string().contains("Softmax"), "{e}");
    let mut m = ending_in("Sigmoid", &["h"]);
    let extra = m.graph.as_ref().unwrap().output[0].clone();
    m.graph.as_mut().unwrap().output.insert(0, tlearn::onnx::proto::ValueInfoProto { name: "logits".into(), ..extra });
    let e = tlearn::train::Trainer::new(&m, Path::new("odd.onnx"), &[4], 2, &opts()).err().unwrap();
    assert!(e.to_string().contains("2 outputs (logits, y)") && e.to_string().contains("probabilities"), "{e}");

    let mut b = GraphBuilder::new("no-input");
    let c = b.const_vec_f32("c", &[0.5]);
    b.node("Identity", &[&c], &["y"], vec![]);
    b.output("y", &[Dim::Fixed(1)]);
    let bytes = onnx::encode_model(&onnx::model(b.finish(), "test"));
    let x = ArrayD::<f32>::zeros(IxDyn(&[2, 4]));
    let e = tlearn::train::predict(&bytes, Path::new("c.onnx"), &x, 8, &opts()).err().unwrap();
    assert!(e.to_string().contains("no input"), "{e}");

    use tlearn::params::ParamGuard;
    let spec = tlearn::heads::HeadSpec { pool: tlearn::heads::Pool::Avg, standardize: true, ..Default::default() };
    let empty = ArrayD::<f32>::zeros(IxDyn(&[0, 2, 2, 3]));
    let e = tlearn::heads::dense::build(&[2, 2, 3], 2, &spec.check().unwrap(), 1, Some(&empty)).err().unwrap();
    assert!(matches!(e, tlearn::Error::Param { name: "standardize", .. }), "{e}");
}

/// The fit driver: a run that stopped early stays stopped when rerun (its checkpoint says so).
#[test]
fn an_early_stopped_fit_rerun_ends_where_it_stopped() {
    use tlearn::params::ParamGuard;
    use tlearn::train::learner::{self, Checkpointing, FitOptions};
    use tlearn::train::{FitConfig, InMemory, Trainer};
    let spec = tlearn::heads::HeadSpec { units: 8, dropout: 0.0, ..Default::default() }.check().unwrap();
    let m = tlearn::heads::dense::build(&[4], 2, &spec, 3, None).unwrap();
    let x = ArrayD::from_shape_fn(IxDyn(&[40, 4]), |i| (((i[0] * 7 + i[1] * 3) % 11) as f32 - 5.0) / 5.0);
    let labels: Vec<usize> = (0..40).map(|i| (i * 7 % 11 > 5) as usize).collect();
    // Validation labels that disagree with training: the validation loss rises, patience stops.
    let flipped: Vec<usize> = labels.iter().map(|l| 1 - l).collect();
    let dir = tempfile::tempdir().unwrap();
    let fit = FitConfig::new(30, 8, 1, tlearn::train::optim::Optimizer::rmsprop(1e-2));
    let o = FitOptions {
        fit: fit.check().unwrap(),
        checkpoint: Some(Checkpointing {
            path: dir.path().join("checkpoint.onnx"),
            config: serde_json::json!({"test": 1}),
            resume: Default::default(),
            share: tlearn::train::pacing::SHARE,
        }),
        models: Some(dir.path().into()),
        patience: Some(2),
        wrap: None,
        live: None,
    };
    let run = || {
        let mut tr = Trainer::new(&m, Path::new("head.onnx"), &[4], 2, &opts()).unwrap();
        let val = InMemory { x: &x, labels: &flipped };
        learner::fit(&mut tr, &InMemory { x: &x, labels: &labels }, Some(&val), &o, &tlearn::progress::Silent).unwrap()
    };
    let first = run();
    assert!(first.history.len() < 30, "patience stopped the fit: {} epochs", first.history.len());
    let last = std::fs::read(dir.path().join("last.onnx")).unwrap();
    let again = run();
    assert_eq!(again.history, first.history, "the rerun ends where the run stopped");
    assert_eq!(std::fs::read(dir.path().join("last.onnx")).unwrap(), last, "and writes nothing new");
    assert_eq!(again.best.map(|b| b.0.epoch), first.best.map(|b| b.0.epoch));
}

/// The input-scale detection: a cycle in an unchecked graph ends the walk; a leading factor that
/// does not map 0..255 to about 0..1 or 0..2 does not switch to raw pixels.
#[test]
fn the_input_scale_detection_stops_on_cycles_and_odd_factors() {
    let model = |op: &str, factor: f32, cycle: bool| {
        let mut b = GraphBuilder::new("scaled");
        b.input("x", &[Dim::named("N"), Dim::Fixed(4)]);
        let c = b.init_f32("factor", &ndarray::arr0(factor).into_dyn());
        if cycle {
            b.node("Identity", &["x", "loop"], &["loop"], vec![]);
        }
        b.node(op, &["x", &c], &["y"], vec![]);
        b.output("y", &[Dim::named("N"), Dim::Fixed(4)]);
        onnx::model(b.finish(), "test")
    };
    let p = Path::new("m.onnx");
    assert_eq!(tlearn::finetune::own_rescale(&model("Mul", 1.0 / 255.0, true)), None, "two readers of x");
    assert_eq!(tlearn::finetune::own_rescale(&model("Div", 127.5, false)), Some(1.0 / 127.5));
    assert_eq!(tlearn::finetune::default_rescale(&model("Div", 127.5, false), p), 1.0);
    assert_eq!(tlearn::finetune::own_rescale(&model("Mul", 255.0, false)), Some(255.0));
    assert_eq!(tlearn::finetune::default_rescale(&model("Mul", 255.0, false), p), 1.0 / 255.0);
    let mut cyc = GraphBuilder::new("cycle");
    cyc.input("x", &[Dim::named("N")]);
    cyc.node("Identity", &["x"], &["a"], vec![]);
    cyc.node("Identity", &["a"], &["x"], vec![]);
    cyc.output("a", &[Dim::named("N")]);
    assert_eq!(tlearn::finetune::own_rescale(&onnx::model(cyc.finish(), "test")), None);
}

/// Copies of one file are computed once: the copy's row is the original's, and the copy of a
/// file that fails is skipped with it, named and counted.
#[test]
fn copies_of_a_file_are_computed_once_and_fail_together() {
    let w = workdir();
    let w = w.path();
    let feats = prepared(w, &["cat", "dog"], 6);
    let train = w.join("data/toy/train");
    let good = std::fs::read_dir(train.join("cat")).unwrap().next().unwrap().unwrap().path();
    std::fs::copy(&good, train.join("dog/zz_copy_of_a_cat.png")).unwrap();
    std::fs::write(train.join("cat/broken.jpg"), b"\xFF\xD8\xFF\xE0 truncated").unwrap();
    std::fs::write(train.join("dog/broken_copy.jpg"), b"\xFF\xD8\xFF\xE0 truncated").unwrap();
    let out = ok("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--device", "cpu"], w);
    let line = out.lines().find(|l| l.starts_with("train ")).unwrap();
    let n_train =
        std::fs::read_dir(train.join("cat")).unwrap().count() + std::fs::read_dir(train.join("dog")).unwrap().count();
    let f = tlearn::features::load(&w.join(&feats), "train").unwrap();
    assert_eq!(f.files.len(), n_train - 2, "{line}");
    assert!(line.contains(&format!("{} computed", n_train - 3)) && line.contains("2 skipped"), "{line}");
    let row = |name: &str| f.files.iter().position(|r| r.path.ends_with(name)).unwrap();
    let orig = row(good.file_name().unwrap().to_str().unwrap());
    assert_eq!(f.x.index_axis(ndarray::Axis(0), orig), f.x.index_axis(ndarray::Axis(0), row("zz_copy_of_a_cat.png")));
    let skipped: Vec<&str> = f.info.skipped.iter().map(|s| s.reason.as_str()).collect();
    assert!(skipped.iter().any(|r| r.contains("same bytes as") && r.contains("broken.jpg")), "{skipped:?}");
}
