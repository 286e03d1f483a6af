//! tlearn-evaluate: metrics of a trained run on a split of its cached features.

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use tlearn::runtime::{Device, SessionOptions};

#[derive(Parser)]
#[command(
    version,
    about = "Loss, accuracy, per-class P/R/F1, confusion matrix, ROC-AUC → reports/<run>/metrics.json + index.html"
)]
struct Args {
    /// Run name (folder under --runs).
    #[arg(long, default_value = "demo", value_parser = tlearn::cli::run_name)]
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
    let out = a.reports.join(&a.run);
    let context = serde_json::json!({
        "run": a.run,
        "split": a.split,
        "backbone": info.features.backbone,
        "size": info.features.size,
        "kind": info.kind,
        "head": info.head,
        "classical": info.classical,
        "fit": info.fit,
        "train_views": info.train_views,
        "tta": info.tta,
        "features_npy_sha256": f.info.npy_sha256,
        "head_sha256": info.head_sha256,
    });
    let files: Vec<(String, usize)> = f.files.iter().map(|r| (r.path.clone(), r.label)).collect();
    let history = run_dir.join(tlearn::run::HISTORY_PNG);
    let m = tlearn::metrics::write_report(&out, context, &probs, &files, &info.classes, Some(&history))?;
    tlearn::outln!(
        "{} on {} ({} {}×{}):",
        a.run,
        a.split,
        info.features.backbone,
        info.features.size,
        info.features.size
    );
    tlearn::out!("{}", tlearn::metrics::render(&m));
    tlearn::outln!("→ {} and {}", out.join("metrics.json").display(), out.join("index.html").display());
    Ok(())
}
