//! `tlearn fit --budget`: the fine-tune's length planned from a measured step, the fit ending
//! within the time given, the plan kept across a `kill -9`. A binary of its own so that no other
//! test shares the cores while the fit measures its step and then runs to the plan.

mod common;
use common::*;
use std::path::Path;

/// The fit's arguments: a cap and a patience so long that only the budget can end the fine-tune.
/// Batches of 12 fill both phases' epochs (144 train, 180 train + validation images). With 8, the
/// final fit's last batch of 4 (a new shape for the session) made its 1-ms steps up to 1.2× the
/// fine-tune's, which the plan cannot see, and a fit once ended just past its 20 s.
fn args<'a>(run: &'a str, budget: &'a str) -> Vec<&'a str> {
    let mut a = vec!["raw", "--run", run, "--backbone", "tiny", "--epochs", "1000", "--patience", "1000"];
    a.extend(["--head-epochs", "2", "--batch", "12", "--explain", "0", "--device", "cpu", "--budget", budget]);
    a
}

fn setup(w: &Path) {
    // Enough images that an epoch is mostly steps, as a real fit's are.
    make_dataset(&w.join("raw"), &["cat", "dog"], 120, false);
    tiny_classifier(&w.join("tiny.onnx"), 3);
    ok("tlearn-backbone", &["add", "tiny.onnx", "--output", "pool_out", "--preprocess", "caffe", "--size", "32"], w);
}

#[test]
fn a_budget_plans_the_length_from_a_measured_step_and_the_fit_ends_within_it() {
    let w = workdir();
    let w = w.path();
    setup(w);
    // Too little time for one epoch: what would do; the same fit then continues with more.
    let err = fails("tlearn-fit", &args("timed", "0.1s"), w);
    assert!(err.contains("leaves no time for one epoch") && err.contains("rerun with --budget"), "{err}");
    assert!(!w.join("runs/timed/plan.json").exists());
    let t = std::time::Instant::now();
    let o = run("tlearn-fit", &args("timed", "20s"), w);
    let took = t.elapsed().as_secs_f64();
    let log = text(&o.stderr);
    assert!(o.status.success(), "{log}");
    let fit = w.join("runs/timed");
    let plan = json(&fit.join("plan.json"));
    let epochs = plan["epochs"].as_u64().unwrap();
    eprintln!("the fit took {took:.1} s of its 20 s budget (the plan: {plan})");
    assert!(took <= 20.0, "the fit took {took:.1} s of its 20 s budget; the plan: {plan}\n{log}");
    assert!((1..1000).contains(&epochs), "the budget, not the cap, set the length: {plan}");
    assert!(log.contains(&format!("budget 20s: up to {epochs} epochs")), "{log}");
    assert!(log.contains("planned to end within"), "{log}");
    assert_eq!(json(&fit.join("tune/run.json"))["epochs_run"].as_u64(), Some(epochs));
    let last = plan["final_epochs"].as_u64().expect("the final fit's length, decided when the fine-tune ended");
    assert!(last >= 1 && last <= json(&fit.join("run.json"))["best_epoch"].as_u64().unwrap(), "{plan}");
    assert_eq!(json(&fit.join("final/run.json"))["epochs_run"].as_u64(), Some(last));
    assert_eq!(json(&fit.join("run.json"))["plan"], plan);
    let report = json(&w.join("reports/timed/metrics.json"));
    assert!(report["fit"]["budget"].as_str().unwrap().contains(&format!("up to {epochs} epochs")), "{report}");
    // Killed in the fine-tune, the same command continues with the plan it made.
    let cut = w.join("runs/cut");
    let mark = cut.join("tune/checkpoint.onnx");
    assert!(kill_at("tlearn-fit", &args("cut", "20s"), w, None, &|| mark.exists()), "killed in the fine-tune");
    let planned = json(&cut.join("plan.json"));
    ok("tlearn-fit", &args("cut", "20s"), w);
    let mut kept = json(&cut.join("plan.json"));
    // The final fit's length is added once the validated fine-tune ends; the rest is unchanged.
    assert!(kept.as_object_mut().unwrap().remove("final_epochs").is_some(), "{kept}");
    assert_eq!(kept, planned, "the plan is made once");
    let n = json(&cut.join("plan.json"))["epochs"].as_u64();
    assert_eq!(json(&cut.join("tune/run.json"))["epochs_run"].as_u64(), n);
    // Once planned, the budget is a setting like any other.
    let err = fails("tlearn-fit", &args("cut", "30s"), w);
    assert!(err.contains("budget: 20.0 → 30.0") && err.contains("--restart"), "{err}");
    let names = std::fs::read_dir(&cut).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap());
    assert!(names.filter(|n| n.starts_with(".rehearsal")).count() == 0, "the rehearsal's folder is gone");
}
