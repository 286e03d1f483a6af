//! `tlearn-finetune` end to end: a net built from scratch fine-tuned, scored and previewed, a
//! cached trunk training the rest as the whole net would, and the data options (what a run trains
//! on); without validation it resumes and reports every file skipped (from the red-team pass).
//! (The first two from `tests/pipeline.rs`.)

mod common;
use common::*;
use std::path::Path;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Three classes of `per_class` generated images split into `data/toy`, and the mnist net for
/// them as `net.onnx`, in `w`; what `tlearn-convnet` printed.
fn toy(w: &Path, per_class: usize) -> String {
    make_dataset(&w.join("raw"), &["a", "b", "c"], per_class, false);
    ok("tlearn-data", &["split", "raw", "data/toy", "--seed", "1"], w);
    ok("tlearn-convnet", &["mnist", "--out", "net.onnx", "--classes", "3"], w)
}

/// The initializer `name` of the model at `file` (under `w`), as floats.
fn tensor(w: &Path, file: &str, name: &str) -> Vec<f32> {
    let m = tlearn::onnx::load_model(&w.join(file)).unwrap();
    let t = m.graph.unwrap().initializer.into_iter().find(|t| t.name == name).unwrap();
    tlearn::onnx::tensor_to_f32(&t).unwrap().into_iter().collect()
}

/// `--include-validation` trains on train/ and validation/ as on one folder holding both: the
/// same weights and history as a run on such a folder, byte for byte, the last epoch as the
/// model; with --patience, or without validation images, it is refused.
#[test]
fn include_validation_trains_as_on_one_folder_holding_both() {
    let w = workdir();
    let w = w.path();
    make_dataset(&w.join("raw"), &["cat", "dog", "fox"], 14, false);
    ok("tlearn-data", &["split", "raw", "data/toy", "--seed", "1"], w);
    for (from, to) in [("train", "train"), ("validation", "train"), ("test", "test")] {
        copy_tree(&w.join("data/toy").join(from), &w.join("data/merged").join(to));
    }
    ok("tlearn-convnet", &["mnist", "--out", "net.onnx", "--classes", "3"], w);
    let ft = |data: &str, name: &str, extra: &[&str]| {
        let mut args = vec!["net.onnx", "--data", data, "--run", name, "--epochs", "3", "--batch", "8"];
        args.extend_from_slice(&["--horizontal-flip", "--device", "cpu", "--explain", "0"]);
        args.extend_from_slice(extra);
        run("tlearn-finetune", &args, w)
    };
    let both = ft("data/toy", "both", &["--include-validation"]);
    assert!(both.status.success(), "{}", String::from_utf8_lossy(&both.stderr));
    assert!(ft("data/merged", "merged", &[]).status.success());
    let (a, b) = (w.join("runs/both"), w.join("runs/merged"));
    for f in ["best.onnx", "last.onnx", "model.onnx"] {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f} differs");
    }
    assert_eq!(history_sans_time(&a.join("history.csv")), history_sans_time(&b.join("history.csv")));
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("run.json")).unwrap()).unwrap();
    let count = |split: &str| count_files(&w.join("data/toy").join(split));
    assert_eq!(info["train_images"].as_u64(), Some((count("train") + count("validation")) as u64), "{info}");
    assert_eq!(
        (info["best_epoch"]["epoch"].as_u64(), info["config"]["include_validation"].as_bool()),
        (Some(3), Some(true))
    );

    let err =
        String::from_utf8_lossy(&ft("data/toy", "p", &["--include-validation", "--patience", "2"]).stderr).into_owned();
    assert!(err.contains("--patience") && err.contains("--include-validation"), "{err}");
    let err = String::from_utf8_lossy(&ft("data/merged", "m", &["--include-validation"]).stderr).into_owned();
    assert!(err.contains("data/merged/validation") && err.contains("no validation images"), "{err}");
}

/// Settings that would train nothing, or stop on nothing, are refused before any image is read:
/// a --trainable pattern that matches no parameter (the error lists some), --patience on data
/// without validation images.
#[test]
fn settings_that_select_or_watch_nothing_are_refused() {
    let w = workdir();
    let w = w.path();
    make_dataset(&w.join("raw"), &["cat", "dog"], 8, false);
    ok("tlearn-data", &["split", "raw", "data/toy", "--seed", "1", "--validation", "0"], w);
    tiny_classifier(&w.join("tiny.onnx"), 3);
    let ft = |extra: &[&str]| {
        let args = [&["tiny.onnx", "--data", "data/toy", "--run", "x", "--epochs", "1", "--device", "cpu"][..], extra];
        fails("tlearn-finetune", &args.concat(), w)
    };
    let err = ft(&["--trainable", "fc/*", "--trainable", "dense_typo"]);
    assert!(err.contains("dense_typo") && err.contains("matches no parameter") && err.contains("conv/kernel"), "{err}");
    let err = ft(&["--patience", "2"]);
    assert!(
        err.contains("patience") && err.contains("data/toy/validation") && err.contains("no validation images"),
        "{err}"
    );
    assert!(!w.join("runs/x").exists());
}

#[test]
fn convnet_from_scratch_finetune_score_and_preview() {
    let w = workdir();
    let w = w.path();
    let s = toy(w, 40);
    assert!(s.contains("(None, 26, 26, 32)") && s.contains("(None, 3)"), "{s}");
    assert!(s.contains("Total params: 92,867"), "93,322 − 650 + 64·3 + 3: {s}");
    // A net whose classifier does not fit the data is refused, naming both.
    ok("tlearn-convnet", &["mnist", "--out", "ten.onnx"], w);
    let err = fails("tlearn-finetune", &["ten.onnx", "--data", "data/toy", "--epochs", "1"], w);
    assert!(err.contains("ten.onnx") && err.contains("data/toy/train"), "{err}");

    let args = [
        "net.onnx",
        "--data",
        "data/toy",
        "--run",
        "t",
        "--epochs",
        "12",
        "--batch",
        "8",
        "--lr",
        "2e-3",
        "--rotation-range",
        "10",
        "--horizontal-flip",
        "--device",
        "cpu",
    ];
    let out = ok("tlearn-finetune", &args, w);
    assert_eq!(out.lines().filter(|l| l.starts_with("epoch")).count(), 12, "{out}");
    for f in ["best.onnx", "last.onnx", "model.onnx", "model.onnx.json", "history.csv", "history.png"] {
        assert!(w.join("runs/t").join(f).exists(), "runs/t/{f} missing:\n{out}");
    }
    let m: serde_json::Value = serde_json::from_str(&read(&w.join("reports/t/metrics.json"))).unwrap();
    assert!(m["accuracy"].as_f64().unwrap() >= 0.8, "separable brightness: {m}");
    assert_eq!(m["augment"]["rotation_range"], 10.0);
    // Same seed, same training: the best checkpoint is byte-identical.
    let first = std::fs::read(w.join("runs/t/best.onnx")).unwrap();
    let again: Vec<&str> = args.iter().copied().chain(["--restart"]).collect();
    ok("tlearn-finetune", &again, w);
    assert!(std::fs::read(w.join("runs/t/best.onnx")).unwrap() == first, "seeded augmentation and training");

    // Interrupted after 5 epochs, resumed to 12: the same weights as the uninterrupted run.
    let short: Vec<&str> = args
        .iter()
        .map(|a| {
            if *a == "12" {
                "5"
            } else if *a == "t" {
                "r"
            } else {
                a
            }
        })
        .collect();
    ok("tlearn-finetune", &short, w);
    let resumed: Vec<&str> = args.iter().map(|a| if *a == "t" { "r" } else { a }).chain(["--resume"]).collect();
    let out = ok("tlearn-finetune", &resumed, w);
    assert_eq!(out.lines().filter(|l| l.starts_with("epoch")).count(), 12, "history replayed + continued: {out}");
    let same = std::fs::read(w.join("runs/r/last.onnx")).unwrap() == std::fs::read(w.join("runs/t/last.onnx")).unwrap();
    assert!(same, "resumed weights differ from the uninterrupted run's");
    assert_eq!(read(&w.join("runs/r/history.csv")).lines().count(), 13);
    let other_lr: Vec<&str> = resumed.iter().map(|a| if *a == "2e-3" { "5e-3" } else { a }).collect();
    let err = fails("tlearn-finetune", &other_lr, w);
    assert!(err.contains("checkpoint.onnx") && err.contains("other settings"), "{err}");
    // A finished run rerun with other settings is refused, naming them; --restart replaces it.
    let finished = std::fs::read(w.join("runs/t/best.onnx")).unwrap();
    let other: Vec<&str> = args.iter().map(|a| if *a == "2e-3" { "5e-3" } else { a }).collect();
    let err = fails("tlearn-finetune", &other, w);
    assert!(err.contains("lr: 0.002 → 0.005") && err.contains("--restart"), "{err}");
    assert!(std::fs::read(w.join("runs/t/best.onnx")).unwrap() == finished, "the finished run is kept");

    // Fine-tuning only the dense layers leaves the conv kernels untouched.
    ok(
        "tlearn-finetune",
        &["net.onnx", "--data", "data/toy", "--run", "f", "--epochs", "1", "--trainable", "dense*", "--device", "cpu"],
        w,
    );
    let info: serde_json::Value = serde_json::from_str(&read(&w.join("runs/f/run.json"))).unwrap();
    assert_eq!(info["trainable_params"], 576 * 64 + 64 + 64 * 3 + 3, "{info}");
    assert_eq!(tensor(w, "net.onnx", "conv2d/kernel"), tensor(w, "runs/f/last.onnx", "conv2d/kernel"));
    assert_ne!(tensor(w, "net.onnx", "dense/kernel"), tensor(w, "runs/f/last.onnx", "dense/kernel"));

    // The deployable model (gray conversion and rescale in-graph) scores raw images like evaluation.
    ok("tlearn-score", &["data/toy/test", "--model", "runs/t/model.onnx", "--out", "s.csv", "--device", "cpu"], w);
    assert_scores_match_predictions(&read(&w.join("s.csv")), &read(&w.join("reports/t/predictions.csv")));

    let img = w.join("data/toy/train/a").read_dir().unwrap().next().unwrap().unwrap().path();
    ok("tlearn-finetune", &["net.onnx", "--preview", img.to_str().unwrap(), "--augment", "--preview-out", "p.png"], w);
    let p = image::open(w.join("p.png")).unwrap();
    assert_eq!((p.width(), p.height()), (4 * 32 + 4, 4 * 32 + 4), "4×4 grid of 28×28 with 4 px gaps");
}

#[test]
fn a_cached_trunk_trains_the_rest_as_the_whole_net_would() {
    let w = workdir();
    let w = w.path();
    toy(w, 20);
    let base = ["net.onnx", "--data", "data/toy", "--epochs", "3", "--batch", "8", "--lr", "1e-3"];
    let base = [&base[..], &["--trainable", "dense*", "--explain", "0", "--device", "cpu"]].concat();
    let losses = |out: &str| -> Vec<f64> {
        out.lines()
            .filter(|l| l.starts_with("epoch"))
            .map(|l| l.split_whitespace().nth(3).unwrap().parse().unwrap())
            .collect()
    };
    let whole = ok("tlearn-finetune", &[&base[..], &["--run", "whole"]].concat(), w);
    let cached = ok("tlearn-finetune", &[&base[..], &["--run", "cached", "--cache-trunk"]].concat(), w);
    let (lw, lc) = (losses(&whole), losses(&cached));
    assert_eq!(lw.len(), 3);
    for (a, b) in lw.iter().zip(&lc) {
        assert!((a - b).abs() < 2e-3, "the same fit: {lw:?} vs {lc:?}");
    }
    let info: serde_json::Value = serde_json::from_str(&read(&w.join("runs/cached/run.json"))).unwrap();
    assert_eq!(info["trunk"]["views"], serde_json::json!(["identity"]), "{info}");
    let acc = |run: &str| -> f64 {
        let m: serde_json::Value = serde_json::from_str(&read(&w.join(format!("reports/{run}/metrics.json")))).unwrap();
        m["accuracy"].as_f64().unwrap()
    };
    assert!((acc("whole") - acc("cached")).abs() < 0.05, "{} vs {}", acc("whole"), acc("cached"));
    // Flips: the trunk's output cached for each of the four views.
    let flips = ["--run", "flips", "--cache-trunk", "--horizontal-flip", "--vertical-flip"];
    ok("tlearn-finetune", &[&base[..], &flips].concat(), w);
    let info: serde_json::Value = serde_json::from_str(&read(&w.join("runs/flips/run.json"))).unwrap();
    assert_eq!(info["trunk"]["views"].as_array().unwrap().len(), 4, "{info}");
    // A random transform would need the trunk every epoch.
    let err = fails(
        "tlearn-finetune",
        &[&base[..], &["--run", "rot", "--cache-trunk", "--rotation-range", "10"]].concat(),
        w,
    );
    assert!(err.contains("fixed views"), "{err}");
}

#[test]
fn a_freeze_stride_trains_what_the_same_trainable_patterns_do() {
    let w = workdir();
    let w = w.path();
    toy(w, 12);
    let base = ["net.onnx", "--data", "data/toy", "--epochs", "2", "--batch", "8", "--lr", "1e-3", "--explain", "0"];
    let base = [&base[..], &["--device", "cpu"]].concat();
    let run = |extra: &[&str]| ok("tlearn-finetune", &[&base[..], extra].concat(), w);
    // The mnist net's convolutions give 26, 11 and 3 px of 28: stride 4 freezes the first two.
    run(&["--run", "frozen", "--freeze-stride", "4"]);
    run(&["--run", "patterns", "--trainable", "conv2d_2", "--trainable", "dense"]);
    let bytes = |run: &str| std::fs::read(w.join(format!("runs/{run}/last.onnx"))).unwrap();
    assert!(bytes("frozen") == bytes("patterns"), "the same layers trained the same way");
    let info: serde_json::Value = serde_json::from_str(&read(&w.join("runs/frozen/run.json"))).unwrap();
    assert_eq!(info["trainable_params"], 64 * 64 * 9 + 64 + 576 * 64 + 64 + 64 * 3 + 3, "{info}");
    assert_eq!(info["config"]["freeze_stride"], 4, "{info}");
    assert_eq!(tensor(w, "net.onnx", "conv2d_1/kernel"), tensor(w, "runs/frozen/last.onnx", "conv2d_1/kernel"));
    assert_ne!(tensor(w, "net.onnx", "conv2d_2/kernel"), tensor(w, "runs/frozen/last.onnx", "conv2d_2/kernel"));
    // The frozen layers are a trunk that can be run once and cached.
    run(&["--run", "cached", "--freeze-stride", "4", "--cache-trunk"]);
    let info: serde_json::Value = serde_json::from_str(&read(&w.join("runs/cached/run.json"))).unwrap();
    assert!(info["trunk"].is_object(), "{info}");
    // A stride no convolution reaches is refused, naming the one there is.
    let err = fails("tlearn-finetune", &[&base[..], &["--run", "x", "--freeze-stride", "16"]].concat(), w);
    assert!(err.contains("freeze-stride") && err.contains("stride 13 at most"), "{err}");
    let err = fails("tlearn-finetune", &[&base[..], &["--run", "x", "--freeze-stride", "1"]].concat(), w);
    assert!(err.contains("freeze-stride"), "{err}");
    // Patterns that select only frozen layers would train nothing.
    let only_frozen = ["--run", "x", "--freeze-stride", "4", "--trainable", "conv2d_1"];
    let err = fails("tlearn-finetune", &[&base[..], &only_frozen].concat(), w);
    assert!(err.contains("freezes every parameter"), "{err}");
}

#[test]
fn a_finetune_without_validation_resumes_and_reports_every_skipped_file() {
    let e = tlearn::history::Epoch {
        epoch: 1,
        loss: 0.5,
        accuracy: 0.75,
        val_loss: f64::NAN,
        val_accuracy: f64::NAN,
        lr: 1e-3,
        seconds: 1.0,
    };
    let back: tlearn::history::Epoch = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
    assert!(back.val_loss.is_nan() && back.loss == 0.5);

    let w = workdir();
    let w = w.path();
    make_dataset(&w.join("raw"), &["cat", "dog"], 10, false);
    ok("tlearn-data", &["split", "raw", "data/nv", "--validation", "0", "--seed", "1"], w);
    std::fs::remove_dir_all(w.join("data/nv/validation")).ok();
    std::os::unix::fs::symlink("/nonexistent/x.png", w.join("data/nv/train/cat/dangling.png")).unwrap();
    std::fs::write(w.join("data/nv/test/dog/broken.png"), b"\x89PNG\r\n\x1a\n broken").unwrap();
    ok("tlearn-convnet", &["mnist", "--out", "net.onnx", "--classes", "2"], w);
    let args =
        |epochs: &'static str| ["net.onnx", "--data", "data/nv", "--run", "nv", "--epochs", epochs, "--batch", "8"];
    let out = ok("tlearn-finetune", &args("1"), w);
    assert!(out.contains("test: skipped 1"), "{out}");
    let info = json(&w.join("runs/nv/run.json"));
    let skipped = info["skipped"].to_string();
    assert!(skipped.contains("dangling.png"), "link error not listed: {skipped}");
    let metrics = json(&w.join("reports/nv/metrics.json"));
    assert!(metrics["skipped"].to_string().contains("broken.png"), "{metrics}");
    // The same command with more epochs continues from the checkpoint.
    let out = ok("tlearn-finetune", &args("2"), w);
    assert!(out.contains("epoch   2/2"), "{out}");
    let hist = std::fs::read_to_string(w.join("runs/nv/history.csv")).unwrap();
    assert_eq!(hist.lines().count(), 3, "{hist}");
    // A best model replaced since the checkpoint is refused on resume, not taken as the best.
    std::fs::copy(w.join("net.onnx"), w.join("runs/nv/best.onnx")).unwrap();
    let err = fails("tlearn-finetune", &args("3"), w);
    assert!(err.contains("best.onnx") && err.contains("sha256"), "{err}");
    // The run folder may not overlap the data it trains on.
    let err = fails(
        "tlearn-finetune",
        &["net.onnx", "--data", "data/nv", "--runs", "data", "--run", "nv", "--epochs", "1"],
        w,
    );
    assert!(err.contains("input"), "{err}");
}
