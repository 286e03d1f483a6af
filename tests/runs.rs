//! Runs as one domain type (`tlearn::runs::Run`): every kind of run — a head on features, a
//! fine-tuned net — opens from its folder, is evaluated and scored afterwards by the same
//! commands, and folders written before the record was versioned still open; what a record holds
//! is checked on load.

mod common;
use common::*;

/// `tlearn-evaluate --run` and `tlearn-score --run` on a fine-tune run, after it finished: the
/// evaluation is the one the run made of itself (same metrics, same predictions), and the scores
/// come from the run's deployable model.
#[test]
fn a_fine_tune_run_is_evaluated_and_scored_afterwards() {
    let w = workdir();
    let w = w.path();
    make_dataset(&w.join("raw"), &["cat", "dog"], 12, false);
    ok("tlearn-data", &["split", "raw", "data/toy", "--seed", "1"], w);
    ok("tlearn-convnet", &["mnist", "--out", "net.onnx", "--classes", "2"], w);
    let args = ["net.onnx", "--data", "data/toy", "--run", "ft", "--epochs", "2", "--batch", "8", "--explain", "0"];
    ok("tlearn-finetune", &args, w);
    let record = json(&w.join("runs/ft/run.json"));
    assert_eq!((record["format"].as_u64(), record["type"].as_str()), (Some(2), Some("finetune")), "{record}");
    let own = json(&w.join("reports/ft/metrics.json"));
    let own_predictions = std::fs::read(w.join("reports/ft/predictions.csv")).unwrap();

    let out = ok("tlearn-evaluate", &["--run", "ft", "--reports", "again", "--explain", "0"], w);
    assert!(out.contains("ft on test") && out.contains("fine-tuned"), "{out}");
    let again = json(&w.join("again/ft/metrics.json"));
    for key in ["accuracy", "loss", "n_test", "confusion", "model_sha256", "best_epoch"] {
        assert_eq!(again[key], own[key], "{key}");
    }
    assert_eq!(std::fs::read(w.join("again/ft/predictions.csv")).unwrap(), own_predictions);
    // The one line a make target prints, read from the report, nothing computed.
    let line = ok("tlearn-evaluate", &["--run", "ft", "--summary"], w);
    let accuracy = format!("accuracy {:.4},", own["accuracy"].as_f64().unwrap());
    assert!(line.starts_with("ft on test:") && line.contains(&accuracy) && line.contains("s training"), "{line}");
    let err = fails("tlearn-evaluate", &["--run", "ft", "--reports", "nowhere", "--summary"], w);
    assert!(err.contains("no evaluation here yet"), "{err}");
    // Another split of the run's own dataset, and Grad-CAM overlays from its deployable model.
    let out = ok("tlearn-evaluate", &["--run", "ft", "--split", "validation", "--reports", "val", "--explain", "2"], w);
    assert!(out.contains("ft on validation"), "{out}");
    assert!(w.join("val/ft/gradcam/index.csv").is_file());

    ok("tlearn-score", &["data/toy/test", "--run", "ft", "--out", "scores.csv"], w);
    let scores = std::fs::read_to_string(w.join("scores.csv")).unwrap();
    assert_eq!(scores.lines().count() - 1, count_files(&w.join("data/toy/test")), "{scores}");
    // The same run as an older tlearn left it (the record in model.onnx.json, no run.json) is
    // evaluated and scored alike.
    let mut old = record.clone();
    old.as_object_mut().unwrap().retain(|k, _| k != "format" && k != "type" && k != "best_sha256");
    std::fs::write(w.join("runs/ft/model.onnx.json"), old.to_string()).unwrap();
    std::fs::remove_file(w.join("runs/ft/run.json")).unwrap();
    ok("tlearn-evaluate", &["--run", "ft", "--reports", "old", "--explain", "0"], w);
    assert_eq!(std::fs::read(w.join("old/ft/predictions.csv")).unwrap(), own_predictions);
    ok("tlearn-score", &["data/toy/test", "--run", "ft", "--out", "old.csv"], w);
    assert_eq!(std::fs::read(w.join("old.csv")).unwrap(), std::fs::read(w.join("scores.csv")).unwrap());
    std::fs::write(w.join("runs/ft/run.json"), record.to_string()).unwrap();
    // A best.onnx changed after the run is refused, not evaluated.
    let mut best = std::fs::read(w.join("runs/ft/best.onnx")).unwrap();
    best.extend_from_slice(b"\0\0");
    std::fs::write(w.join("runs/ft/best.onnx"), best).unwrap();
    let err = fails("tlearn-evaluate", &["--run", "ft", "--reports", "third", "--explain", "0"], w);
    assert!(err.contains("best.onnx"), "{err}");
}

/// A head run writes `run.json` (format 2, type head); a folder written before (the record as
/// `head.onnx.json`, a fine-tune's as `model.onnx.json`) is still evaluated and scored.
#[test]
fn run_folders_of_an_older_tlearn_still_open() {
    let w = workdir();
    let w = w.path();
    trained(w, &["cat", "dog"], 12);
    let record = json(&w.join("runs/toy/run.json"));
    assert_eq!((record["format"].as_u64(), record["type"].as_str()), (Some(2), Some("head")), "{record}");
    ok("tlearn-evaluate", &["--run", "toy", "--explain", "0"], w);
    let new = json(&w.join("reports/toy/metrics.json"));
    // The same run as an older tlearn left it: the record, without format and type, beside the head.
    let mut old = record.clone();
    old.as_object_mut().unwrap().retain(|k, _| k != "format" && k != "type");
    std::fs::write(w.join("runs/toy/head.onnx.json"), old.to_string()).unwrap();
    std::fs::remove_file(w.join("runs/toy/run.json")).unwrap();
    ok("tlearn-evaluate", &["--run", "toy", "--reports", "old", "--explain", "0"], w);
    assert_eq!(json(&w.join("old/toy/metrics.json"))["accuracy"], new["accuracy"]);
    ok("tlearn-score", &["data/toy/test", "--run", "toy", "--out", "old.csv"], w);
    // A folder with no record names what it lacks and how to go on.
    std::fs::create_dir_all(w.join("runs/empty")).unwrap();
    let err = fails("tlearn-evaluate", &["--run", "empty"], w);
    assert!(err.contains("not a run folder") && err.contains("run.json"), "{err}");
    // A record from a newer tlearn is refused, not misread.
    let mut newer = record;
    newer["format"] = 99.into();
    std::fs::write(w.join("runs/toy/run.json"), newer.to_string()).unwrap();
    let err = fails("tlearn-evaluate", &["--run", "toy"], w);
    assert!(err.contains("format 99"), "{err}");
}

fn no_panic(err: &str) {
    assert!(!err.contains("panicked"), "a panic instead of an error: {err}");
}

/// Run records checked on load (from the red-team pass): a head changed since its run was
/// recorded, a head of another width under a record forged to match, and a deployable model its
/// sidecar does not describe are refused with a clear error, never used.
#[test]
fn recorded_checksums_and_class_counts_are_checked_on_load() {
    let w = workdir();
    let w = w.path();
    trained(w, &["cat", "dog", "fox"], 8);
    // A second run on two classes: its head has one sigmoid output.
    make_dataset(&w.join("raw2"), &["a", "b"], 8, false);
    ok("tlearn-data", &["split", "raw2", "data/two", "--seed", "1"], w);
    ok("tlearn-extract", &["--data", "data/two", "--backbone", "tiny", "--device", "cpu"], w);
    ok("tlearn-head", &["--features", "features/two/tiny-32", "--run", "two", "--epochs", "1", "--units", "8"], w);
    ok("tlearn-score", &["data/toy", "--run", "toy", "--out", "before.csv"], w);
    let head = w.join("runs/toy/head.onnx");
    let original = std::fs::read(&head).unwrap();
    std::fs::copy(w.join("runs/two/head.onnx"), &head).unwrap();
    for (bin, args) in [
        ("tlearn-evaluate", vec!["--run", "toy"]),
        ("tlearn-score", vec!["data/toy", "--run", "toy", "--out", "after.csv"]),
    ] {
        let err = fails(bin, &args, w);
        assert!(err.contains("head.onnx") && err.contains("changed since the run was recorded"), "{bin}: {err}");
    }
    // Even with the record forged to match, a head of another width is a clear error.
    let side = w.join("runs/toy/run.json");
    let mut rec = json(&side);
    rec["head_sha256"] = json(&w.join("runs/two/run.json"))["head_sha256"].clone();
    std::fs::write(&side, serde_json::to_string(&rec).unwrap()).unwrap();
    for (bin, args) in [
        ("tlearn-evaluate", vec!["--run", "toy"]),
        ("tlearn-score", vec!["data/toy", "--run", "toy", "--out", "after.csv"]),
    ] {
        let err = fails(bin, &args, w);
        no_panic(&err);
        assert!(err.contains("class"), "{bin}: {err}");
    }
    // A deployable model whose sidecar describes another file is refused.
    std::fs::write(&head, &original).unwrap();
    let mut rec = json(&side);
    rec["head_sha256"] = serde_json::json!(tlearn::fsutil::sha256_bytes(&original));
    std::fs::write(&side, serde_json::to_string(&rec).unwrap()).unwrap();
    ok("tlearn-score", &["data/toy", "--run", "toy", "--out", "again.csv"], w);
    let model = w.join("runs/toy/model.onnx");
    let mut bytes = std::fs::read(&model).unwrap();
    bytes.extend_from_slice(b"\0");
    std::fs::write(&model, &bytes).unwrap();
    let err = fails("tlearn-score", &["data/toy", "--model", "runs/toy/model.onnx", "--out", "m.csv"], w);
    assert!(err.contains("sha256"), "{err}");
}

/// A deployable model beside a run's record is used only while the record says it is the run's:
/// a record that cannot be read is an error (not a pass), a model the run's head did not build (a
/// fine-tune's left in a folder retrained as a head run) is stale; a run reached through a link
/// keeps the link's name.
#[test]
fn a_deployable_model_is_checked_against_its_runs_record() {
    let w = workdir();
    let w = w.path();
    trained(w, &["cat", "dog"], 10);
    ok("tlearn-score", &["data/toy/test", "--run", "toy", "--out", "a.csv"], w);
    let model = ["data/toy/test", "--model", "runs/toy/model.onnx", "--out", "b.csv"];
    ok("tlearn-score", &model, w);
    let side = w.join("runs/toy/model.onnx.json");
    let built = std::fs::read_to_string(&side).unwrap();
    let mut fine_tunes: serde_json::Value = serde_json::from_str(&built).unwrap();
    fine_tunes.as_object_mut().unwrap().retain(|k, _| k != "head_sha256" && k != "backbone_sha256");
    std::fs::write(&side, fine_tunes.to_string()).unwrap();
    let err = fails("tlearn-score", &model, w);
    assert!(err.contains("stale") && err.contains("run.json") && err.contains("--export-only"), "{err}");
    std::fs::write(&side, built).unwrap();
    let record = std::fs::read_to_string(w.join("runs/toy/run.json")).unwrap();
    std::fs::write(w.join("runs/toy/run.json"), &record[..record.len() / 2]).unwrap();
    let err = fails("tlearn-score", &model, w);
    assert!(err.contains("run.json"), "{err}");
    std::fs::write(w.join("runs/toy/run.json"), record).unwrap();
    std::os::unix::fs::symlink("toy", w.join("runs/best")).unwrap();
    ok("tlearn-evaluate", &["--run", "best", "--explain", "0"], w);
    assert_eq!(json(&w.join("reports/best/metrics.json"))["run"], "best");
}
