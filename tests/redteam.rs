//! Run records checked on load: a head changed since its run was recorded, a head of another
//! width under a record forged to match, and a deployable model its sidecar does not describe are
//! refused with a clear error, never used. (From the red-team pass, kept here while run records
//! are reworked; its other tests are with their subjects: `outputs.rs`, `inputs.rs`, `scale.rs`
//! (path spelling), `hostile.rs` (short JPEGs, absurd numbers, closed pipes), `finetune.rs` (no
//! validation).)

mod common;

use common::*;

fn no_panic(err: &str) {
    assert!(!err.contains("panicked"), "a panic instead of an error: {err}");
}

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
