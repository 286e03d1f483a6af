//! tlearn-evaluate: metrics of a trained run on a split of its cached features.

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use tlearn::runtime::{Device, SessionOptions};

#[derive(Parser)]
#[command(version, about = "Loss, accuracy, per-class P/R/F1, confusion matrix, ROC-AUC → reports/<run>/metrics.json")]
struct Args {
    /// Run name (folder under --runs).
    #[arg(long, default_value = "demo")]
    run: String,
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    #[arg(long, default_value = "reports")]
    reports: PathBuf,
    #[arg(long, default_value = "test")]
    split: String,
    /// Feature folder (default: the one the run was trained on).
    #[arg(long)]
    features: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
}

fn main() -> std::process::ExitCode {
    tlearn::cli::main(|| run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    let run_dir = a.runs.join(&a.run);
    let info = tlearn::run::RunInfo::load(&run_dir).with_context(|| format!("reading run {}", run_dir.display()))?;
    let fdir = a.features.unwrap_or_else(|| info.features_dir.clone());
    let opts = SessionOptions { device: a.device, threads: 0 };
    let (probs, f) = tlearn::run::predict_split(&run_dir, &info, &fdir, &a.split, &opts)
        .with_context(|| format!("predicting the {} split", a.split))?;
    let m = tlearn::metrics::compute(&probs, &f.labels, &info.classes);
    let out = a.reports.join(&a.run);
    let report = serde_json::json!({
        "run": a.run,
        "split": a.split,
        "backbone": info.features.backbone,
        "size": info.features.size,
        "head": info.head,
        "fit": info.fit,
        "train_views": info.train_views,
        "tta": info.tta,
        "classes": info.classes,
        "features_npy_sha256": f.info.npy_sha256,
        "head_sha256": info.head_sha256,
        "n_test": m.n_test,
        "accuracy": m.accuracy,
        "loss": m.loss,
        "macro_f1": m.macro_f1,
        "roc_auc": m.roc_auc,
        "per_class": m.per_class,
        "confusion": m.confusion,
    });
    tlearn::fsutil::write_json(&out.join("metrics.json"), &report)?;
    let mut w = csv::Writer::from_writer(vec![]);
    w.write_record(["path", "true", "predicted", "probability"])?;
    let cp = tlearn::metrics::class_probs(&probs);
    let pred = tlearn::metrics::predicted(&probs);
    for ((row, p), q) in f.files.iter().zip(&cp).zip(&pred) {
        w.write_record([row.path.clone(), row.class.clone(), info.classes[*q].clone(), format!("{:.6}", p[*q])])?;
    }
    tlearn::fsutil::write_bytes_atomic(&out.join("predictions.csv"), &w.into_inner()?)?;
    if let Err(e) = tlearn::plot::confusion(&out.join("confusion.png"), &info.classes, &m.confusion) {
        tracing::warn!("confusion plot not written: {e}");
    }
    println!("{} on {} ({} {}×{}):", a.run, a.split, info.features.backbone, info.features.size, info.features.size);
    print!("{}", tlearn::metrics::render(&m));
    println!("→ {}", out.join("metrics.json").display());
    Ok(())
}
