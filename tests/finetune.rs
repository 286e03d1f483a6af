//! `tlearn-finetune`'s data options end to end: what a run trains on.

mod common;
use common::*;

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
