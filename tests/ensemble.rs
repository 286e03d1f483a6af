//! `tlearn ensemble`: finished runs averaged into one run whose deployable model is the mean of
//! its members' — scored, evaluated and predicted like any run; members changed since refused.

mod common;
use common::*;
use std::collections::HashMap;
use std::path::Path;

/// P(second class) per file name, from rows `path,class,probability…` of a binary run (`b` the
/// second class): the probability given is the predicted class's.
fn p_b(csv: &str, class_col: usize, prob_col: usize) -> HashMap<String, f64> {
    csv.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let name = Path::new(f[0]).file_name().unwrap().to_string_lossy().into_owned();
            let p: f64 = f[prob_col].parse().unwrap();
            (name, if f[class_col] == "b" { p } else { 1.0 - p })
        })
        .collect()
}

fn mean_of(parts: &[HashMap<String, f64>]) -> HashMap<String, f64> {
    parts[0].keys().map(|k| (k.clone(), parts.iter().map(|p| p[k]).sum::<f64>() / parts.len() as f64)).collect()
}

fn assert_close(a: &HashMap<String, f64>, b: &HashMap<String, f64>, tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: rows");
    for (k, v) in a {
        assert!((v - b[k]).abs() < tol, "{what}: {k}: {v} vs {}", b[k]);
    }
}

/// Two heads of other seeds and a fine-tune on the toy data: the members.
fn members(w: &Path) -> String {
    let feats = trained(w, &["a", "b"], 8);
    ok("tlearn-head", &["--features", &feats, "--run", "toy2", "--epochs", "3", "--units", "4", "--seed", "7"], w);
    ok("tlearn-score", &["--run", "toy", "--export-only", "--device", "cpu"], w);
    let ft = ["runs/toy/model.onnx", "--data", "data/toy", "--run", "ft", "--epochs", "1", "--explain", "0"];
    ok("tlearn-finetune", &ft, w);
    feats
}

#[test]
fn an_ensemble_is_the_mean_of_its_members_scored_evaluated_and_predicted() {
    let w = workdir();
    let w = w.path();
    members(w);
    let out = ok("tlearn-ensemble", &["--run", "ens", "toy", "toy2", "ft"], w);
    assert!(out.contains("the mean of 3 runs") && out.contains("runs/ens/model.onnx"), "{out}");
    let record = json(&w.join("runs/ens/run.json"));
    assert_eq!(record["type"], "ensemble");
    assert_eq!(record["members"].as_array().unwrap().len(), 3);

    // The deployable model: its scores are the mean of the members' deployable models' scores.
    let score = |run: &str| {
        let out = format!("{run}.csv");
        ok("tlearn-score", &["data/toy/test", "--run", run, "--device", "cpu", "--out", &out], w);
        p_b(&std::fs::read_to_string(w.join(out)).unwrap(), 1, 2)
    };
    let each: Vec<_> = ["toy", "toy2", "ft"].iter().map(|r| score(r)).collect();
    assert_close(&score("ens"), &mean_of(&each), 1e-5, "ensemble model vs the members' mean");

    // Its evaluation: the members' own predictions averaged, and the same as its model's scores.
    let evaluate = |run: &str| {
        ok("tlearn-evaluate", &["--run", run, "--device", "cpu", "--explain", "0"], w);
        p_b(&std::fs::read_to_string(w.join(format!("reports/{run}/predictions.csv"))).unwrap(), 2, 3)
    };
    let each: Vec<_> = ["toy", "toy2", "ft"].iter().map(|r| evaluate(r)).collect();
    let ens = evaluate("ens");
    assert_close(&ens, &mean_of(&each), 2e-6, "ensemble evaluation vs the members' evaluations");
    assert_close(&ens, &score("ens"), 1e-4, "ensemble evaluation vs its deployable model");
    let metrics = json(&w.join("reports/ens/metrics.json"));
    assert_eq!(metrics["members"].as_array().unwrap().len(), 3, "{metrics}");

    let printed = ok("tlearn-predict", &["data/toy/test", "--run", "ens", "--format", "csv", "--device", "cpu"], w);
    assert_close(&p_b(&printed, 1, 2), &score("ens"), 1e-6, "predict vs score");

    // Made again: the same model, byte for byte.
    let before = std::fs::read(w.join("runs/ens/model.onnx")).unwrap();
    ok("tlearn-ensemble", &["--run", "ens", "toy", "toy2", "ft"], w);
    assert_eq!(std::fs::read(w.join("runs/ens/model.onnx")).unwrap(), before);
}

#[test]
fn a_member_changed_since_and_members_that_do_not_fit_are_refused() {
    let w = workdir();
    let w = w.path();
    let feats = members(w);
    ok("tlearn-ensemble", &["--run", "ens", "toy", "toy2"], w);

    // toy2 retrained (and its model rebuilt): the ensemble no longer says what it averages.
    ok("tlearn-head", &["--features", &feats, "--run", "toy2", "--epochs", "4", "--units", "4", "--seed", "8"], w);
    ok("tlearn-score", &["--run", "toy2", "--export-only", "--device", "cpu"], w);
    let err = fails("tlearn-evaluate", &["--run", "ens", "--device", "cpu", "--explain", "0"], w);
    assert!(err.contains("member `toy2` changed") && err.contains("tlearn ensemble"), "{err}");

    // Another class list: refused, naming both.
    make_dataset(&w.join("raw3"), &["a", "b", "c"], 6, false);
    ok("tlearn-data", &["split", "raw3", "data/three", "--seed", "1"], w);
    ok("tlearn-extract", &["--data", "data/three", "--backbone", "tiny", "--device", "cpu"], w);
    ok("tlearn-head", &["--features", "features/three/tiny-32", "--run", "three", "--epochs", "1"], w);
    let err = fails("tlearn-ensemble", &["--run", "mixed", "toy", "three"], w);
    assert!(err.contains("classes a, b, c differ") && err.contains("same order"), "{err}");

    // Not a run, itself, twice, or over another run: each refused before anything is written.
    let err = fails("tlearn-ensemble", &["--run", "e2", "toy", "nosuch"], w);
    assert!(err.contains("unknown run `nosuch`") && err.contains("its runs: "), "{err}");
    let err = fails("tlearn-ensemble", &["--run", "ens", "ens", "toy"], w);
    assert!(err.contains("its own member"), "{err}");
    let err = fails("tlearn-ensemble", &["--run", "e3", "toy", "runs/toy"], w);
    assert!(err.contains("given twice"), "{err}");
    let err = fails("tlearn-ensemble", &["--run", "ft", "toy", "toy2"], w);
    assert!(err.contains("holds another run"), "{err}");
    assert!(w.join("runs/ft/best.onnx").is_file(), "the fine-tune is untouched");
    assert!(!w.join("runs/mixed").join("run.json").exists() && !w.join("runs/e2").exists());
}
