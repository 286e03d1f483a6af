//! The learning-rate range test: on a model whose good rates are known (logistic regression by
//! SGD, stable below 2/L with L the loss's curvature), the suggestion lies among them and the
//! sweep stops once the loss diverges above them; seeded, it repeats exactly and leaves the model
//! as it was. `tlearn-lr-find` writes its report and changes no model or run; `--lr auto` trains
//! at the suggestion and records it (a fine-tune's rerun keeps it).

mod common;
use common::*;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use std::path::Path;
use tlearn::params::ParamGuard;
use tlearn::runtime::{Device, SessionOptions};
use tlearn::train::lr_find::{Ended, Sweep};
use tlearn::train::optim::Optimizer;
use tlearn::train::{FitConfig, InMemory, Trainer};

const N: usize = 200;
const D: usize = 8;

/// Standard normal features (Box–Muller) and labels from a linear rule, a fifth of them flipped:
/// no rate separates them, so too large a rate throws the weights about and the loss grows.
fn noisy_linear() -> (ArrayD<f32>, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut normal = || {
        let (u, v): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    };
    let x = ArrayD::from_shape_simple_fn(IxDyn(&[N, D]), &mut normal);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
    let labels = (0..N)
        .map(|i| {
            let s: f32 = (0..D).map(|j| x[[i, j]] * (j as f32 - 3.5)).sum();
            ((s > 0.0) != (rng.gen::<f64>() < 0.2)) as usize
        })
        .collect();
    (x, labels)
}

/// The largest eigenvalue of XᵀX/n (with the bias's column of ones), by power iteration: the
/// logistic loss's curvature is at most a quarter of it, so plain gradient descent is stable
/// below 2/L = 8/λ.
fn lambda_max(x: &ArrayD<f32>) -> f64 {
    let rows: Vec<Vec<f64>> =
        (0..N).map(|i| (0..D).map(|j| x[[i, j]] as f64).chain(std::iter::once(1.0)).collect()).collect();
    let mut v = [1.0; D + 1];
    let mut lambda = 0.0;
    for _ in 0..200 {
        let mut w = [0.0; D + 1];
        for r in &rows {
            let dot: f64 = r.iter().zip(&v).map(|(a, b)| a * b).sum();
            for (k, a) in r.iter().enumerate() {
                w[k] += a * dot / N as f64;
            }
        }
        lambda = w.iter().map(|a| a * a).sum::<f64>().sqrt();
        v = w.map(|a| a / lambda);
    }
    lambda
}

fn logistic_trainer() -> Trainer {
    // No hidden layer: Dense(1, sigmoid) on the features, logistic regression.
    let spec = tlearn::heads::HeadSpec { layers: 0, dropout: 0.0, ..Default::default() };
    let m = tlearn::heads::dense::build(&[D], 2, &spec.check().unwrap(), 1, None).unwrap();
    let opts = SessionOptions { device: Device::Cpu, threads: 1, precision: None };
    Trainer::new(&m, Path::new("head.onnx"), &[D], 2, &opts).unwrap()
}

#[test]
fn the_suggestion_lies_where_a_fit_trains_and_the_sweep_stops_past_divergence() {
    let (x, labels) = noisy_linear();
    let data = InMemory { x: &x, labels: &labels };
    let stable = 8.0 / lambda_max(&x);
    assert!((2.0..20.0).contains(&stable), "standard features: 2/L = {stable}");
    let sgd = |lr| FitConfig::new(3, 20, 7, Optimizer::sgd(lr, 0.0)).check().unwrap();
    // Up to 1e3: past the stable rates (the default 10 is barely past them here).
    let sweep = Sweep { start: 1e-6, end: 1e3, steps: 100 };
    let mut tr = logistic_trainer();
    let before = tr.params.clone();
    let curve = tr.lr_sweep(&data, &sgd(0.1), &sweep, &tlearn::progress::Silent).unwrap();
    assert_eq!(tr.params, before, "the sweep leaves the model as it was");
    let last = *curve.lrs.last().unwrap();
    assert_eq!(curve.ended, Ended::Diverged, "stopped at {last:e} ({} steps)", curve.lrs.len());
    assert!(curve.lrs.len() < 100 && last > stable, "it stops after the stable rates: {last:e} vs {stable:e}");
    // fastai's stop: the first step whose smoothed loss passes 4× the lowest so far.
    let mut lowest = f64::INFINITY;
    let passed: Vec<bool> = curve
        .smoothed
        .iter()
        .map(|&s| {
            lowest = lowest.min(s);
            s > 4.0 * lowest
        })
        .collect();
    assert_eq!(passed.iter().position(|&p| p), Some(curve.lrs.len() - 1));
    let valley = curve.valley.unwrap();
    let steep = curve.steep.unwrap();
    eprintln!("2/L {stable:.3e}; valley {valley:.3e}, steep {steep:.3e}; stopped at {last:.3e}");
    assert!((stable / 1e3..stable).contains(&valley), "valley {valley:e} among the good rates below {stable:e}");
    assert!(steep < stable, "steep {steep:e}");
    // Seeded: the same sweep again is the same curve, bit for bit.
    assert_eq!(tr.lr_sweep(&data, &sgd(0.1), &sweep, &tlearn::progress::Silent).unwrap(), curve);
    // What the range means: three epochs at the valley lower the loss; at 10× the stable limit
    // they do not (or fail outright).
    let start = curve.losses[0];
    let trained = logistic_trainer().fit(&x, &labels, None, &sgd(valley), |_| {}).unwrap();
    assert!(trained.last().unwrap().loss < 0.8 * start, "{start} → {:?}", trained.last());
    let blown = logistic_trainer().fit(&x, &labels, None, &sgd(10.0 * stable), |_| {});
    assert!(blown.map_or(true, |h| h.last().unwrap().loss > start), "too large a rate does not train");
}

/// The run folder's files and their bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> =
        file_names(dir).into_iter().map(|n| (n.clone(), std::fs::read(dir.join(&n)).unwrap())).collect();
    v.sort();
    v
}

#[test]
fn tlearn_lr_find_reports_the_curve_and_changes_nothing() {
    let w = workdir();
    let w = w.path();
    let feats = prepared(w, &["cat", "dog"], 12);
    ok("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--device", "cpu"], w);
    ok("tlearn-convnet", &["mnist", "--out", "net.onnx", "--classes", "2"], w);
    ok("tlearn-finetune", &["net.onnx", "--data", "data/toy", "--run", "net", "--epochs", "1", "--explain", "0"], w);
    let (run, model) = (snapshot(&w.join("runs/net")), std::fs::read(w.join("net.onnx")).unwrap());
    let args =
        ["net.onnx", "--data", "data/toy", "--batch", "8", "--steps", "40", "--horizontal-flip", "--device", "cpu"];
    let out = ok("tlearn-lr-find", &args, w);
    assert!(snapshot(&w.join("runs/net")) == run, "the run folder is untouched");
    assert!(std::fs::read(w.join("net.onnx")).unwrap() == model, "the model is untouched");
    let report = w.join("reports/lr-find-net");
    let summary = json(&report.join("lr_find.json"));
    let rows = std::fs::read_to_string(report.join("lr_find.csv")).unwrap();
    assert_eq!(rows.lines().next(), Some("step,lr,loss,smoothed"));
    assert_eq!(rows.lines().count() - 1, summary["steps_run"].as_u64().unwrap() as usize);
    assert!(report.join("lr_find.png").exists());
    let valley = summary["valley"].as_f64().expect("a suggestion");
    assert!(out.contains(&format!("suggested learning rate: {valley:.3e}")), "{out}\n{summary}");
    // Seeded: the same sweep writes the same curve.
    ok("tlearn-lr-find", &[&args[..], &["--out", "again"]].concat(), w);
    assert_eq!(rows, std::fs::read_to_string(w.join("again/lr_find.csv")).unwrap());

    // A dense head on the extracted features.
    let out = ok("tlearn-lr-find", &["--features", &feats, "--units", "8", "--steps", "30"], w);
    assert!(out.contains("valley"), "{out}");
    assert!(w.join("reports/lr-find-tiny-32/lr_find.csv").exists());
    let err = fails("tlearn-lr-find", &["--features", &feats, "--steps", "3"], w);
    assert!(err.contains("steps") && err.contains("at least 6"), "{err}");
    let err = fails("tlearn-lr-find", &["--data", "data/toy"], w);
    assert!(err.contains("MODEL") || err.contains("model"), "{err}");
}

#[test]
fn lr_auto_trains_at_the_suggestion_and_records_it() {
    let w = workdir();
    let w = w.path();
    let feats = prepared(w, &["cat", "dog"], 12);
    ok("tlearn-convnet", &["mnist", "--out", "net.onnx", "--classes", "2"], w);
    let ft = |epochs: &'static str| -> Vec<&'static str> {
        vec!["net.onnx", "--data", "data/toy", "--run", "auto", "--epochs", epochs, "--batch", "8"]
            .into_iter()
            .chain(["--lr", "auto", "--explain", "0", "--device", "cpu"])
            .collect()
    };
    let out = ok("tlearn-finetune", &ft("1"), w);
    assert!(out.contains("chosen by the range test"), "{out}");
    let rec = json(&w.join("runs/auto/run.json"));
    let chosen = rec["config"]["lr_auto"]["lr"].as_f64().unwrap();
    assert_eq!(rec["config"]["fit"]["optimizer"]["lr"].as_f64(), Some(chosen), "{rec}");
    assert_eq!(rec["config"]["lr_auto"]["valley"].as_f64(), Some(chosen), "valley is the suggestion");
    let hist = std::fs::read_to_string(w.join("runs/auto/history.csv")).unwrap();
    let lr_col: f64 = hist.lines().nth(1).unwrap().split(',').nth(5).unwrap().parse().unwrap();
    assert_eq!(lr_col, chosen, "{hist}");
    // The rerun continues at the rate the first start chose, without sweeping again.
    let again = run("tlearn-finetune", &ft("2"), w);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success() && err.contains("as the run's first start chose"), "{err}");
    assert!(!err.contains("learning-rate sweep over"), "{err}");
    assert_eq!(json(&w.join("runs/auto/run.json"))["config"]["lr_auto"]["lr"].as_f64(), Some(chosen));
    let base = ["net.onnx", "--data", "data/toy", "--run", "b", "--lr", "auto", "--lr-base", "1e-4"];
    let err = fails("tlearn-finetune", &base, w);
    assert!(err.contains("--lr-base") && err.contains("auto"), "{err}");

    ok("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--device", "cpu"], w);
    let out =
        ok("tlearn-head", &["--features", &feats, "--run", "h", "--units", "8", "--epochs", "2", "--lr", "auto"], w);
    assert!(out.contains("chosen by the range test"), "{out}");
    let rec = json(&w.join("runs/h/run.json"));
    assert_eq!(rec["fit"]["optimizer"]["lr"].as_f64(), rec["lr_auto"]["lr"].as_f64(), "{rec}");
    let err = fails("tlearn-head", &["--features", &feats, "--run", "k", "--head", "knn", "--lr", "auto"], w);
    assert!(err.contains("only the dense head"), "{err}");
    let err = fails("tlearn-compare", &[&feats, "--heads", "dense", "--lr", "auto"], w);
    assert!(err.contains("auto"), "{err}");
}
