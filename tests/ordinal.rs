//! `--target ordinal`: ordered classes through a cumulative-link output — the head's deployable
//! model gives the probabilities its evaluation gives, a fit carries the output into the fine-tuned
//! net, and what cannot be ordinal says so.

mod common;
use common::*;

/// The `p(class)` of every row of a scores JSON-lines file (`--top-k` all classes).
fn class_probs(jsonl: &str) -> Vec<Vec<(String, f64)>> {
    jsonl
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let top = v["top"].as_array().unwrap_or_else(|| panic!("no top-k in {l}"));
            top.iter().map(|t| (t["class"].as_str().unwrap().to_string(), t["probability"].as_f64().unwrap())).collect()
        })
        .collect()
}

#[test]
fn an_ordinal_head_deploys_the_probabilities_it_evaluates() {
    let w = workdir();
    let w = w.path();
    let feats = prepared(w, &["a", "b", "c"], 10);
    ok("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--device", "cpu"], w);
    let head = ["--features", &feats, "--run", "ord", "--epochs", "4", "--units", "8", "--target", "ordinal"];
    let o = run("tlearn-head", &head, w);
    let told = String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && told.contains("Dense(1) → 2 ordered thresholds (ordinal)"), "{told}");
    assert!(!told.contains("softmax"), "{told}");
    let record = json(&w.join("runs/ord/run.json"));
    assert_eq!(record["head"]["target"], "ordinal", "{record}");
    ok("tlearn-evaluate", &["--run", "ord", "--device", "cpu", "--explain", "0"], w);
    ok("tlearn-score", &["data/toy/test", "--run", "ord", "--device", "cpu", "--out", "s.csv"], w);
    let read = |f: &str| std::fs::read_to_string(w.join(f)).unwrap();
    assert_scores_match_predictions(&read("s.csv"), &read("reports/ord/predictions.csv"));
    let args = ["data/toy/test", "--run", "ord", "--device", "cpu", "--out", "s.jsonl", "--top-k", "3"];
    ok("tlearn-score", &args, w);
    for row in class_probs(&read("s.jsonl")) {
        assert_eq!(row.len(), 3);
        let sum: f64 = row.iter().map(|r| r.1).sum();
        assert!((sum - 1.0).abs() < 1e-4 && row.iter().all(|r| r.1 > 0.0), "{row:?}");
    }
    // A classical head has no ordinal output; two classes need none.
    let err =
        fails("tlearn-head", &["--features", &feats, "--run", "x", "--head", "logistic", "--target", "ordinal"], w);
    assert!(err.contains("only the dense head") && err.contains("--head dense"), "{err}");
}

#[test]
fn a_fit_keeps_the_ordinal_output_through_the_fine_tune() {
    let w = workdir();
    let w = w.path();
    make_dataset(&w.join("raw"), &["g0", "g1", "g2"], 10, false);
    tiny_classifier(&w.join("tiny.onnx"), 3);
    ok("tlearn-backbone", &["add", "tiny.onnx", "--output", "pool_out", "--preprocess", "caffe", "--size", "32"], w);
    let fit = ["raw", "--run", "ord", "--backbone", "tiny", "--epochs", "2", "--head-epochs", "2", "--batch", "8"];
    let out = ok("tlearn-fit", &[&fit[..], &["--explain", "0", "--device", "cpu", "--target", "ordinal"]].concat(), w);
    assert!(out.contains("--target ordinal"), "the k-fold hint carries the target: {out}");
    let model = tlearn::onnx::load_model(&w.join("runs/ord/model.onnx")).unwrap();
    let names: Vec<&str> = tlearn::onnx::graph(&model).initializer.iter().map(|t| t.name.as_str()).collect();
    assert!(names.iter().any(|n| n.ends_with("ordinal/gap_roots")), "the thresholds are in the deployable model");
    assert_eq!(json(&w.join("runs/ord/fit.json"))["target"], "ordinal");
    assert!(w.join("reports/ord/metrics.json").is_file());

    make_dataset(&w.join("two"), &["lo", "hi"], 8, false);
    let two = ["two", "--run", "t", "--backbone", "tiny", "--epochs", "1", "--head-epochs", "1", "--device", "cpu"];
    let err = fails("tlearn-fit", &[&two[..], &["--target", "ordinal"]].concat(), w);
    assert!(err.contains("2 classes") && err.contains("three or more"), "{err}");
}
