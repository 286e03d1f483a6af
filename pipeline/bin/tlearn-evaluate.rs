//! tlearn-evaluate: metrics of a trained run on a split of its cached features.

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use tlearn::evaluate;

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
    /// Grad-CAM overlays in the report for the N most confident mistakes and N/2 most confident
    /// right answers (0: none); made with the run's deployable model (built if missing).
    #[arg(long, default_value_t = 8)]
    explain: usize,
    /// Where the run's backbone is (for the deployable model).
    #[arg(long, default_value = "onnx")]
    onnx_dir: PathBuf,
    #[command(flatten)]
    ort: tlearn::cli::OrtArgs,
}

fn main() -> std::process::ExitCode {
    tlearn::cli::main(|| run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    let run_dir = a.runs.join(&a.run);
    let info = tlearn::run::RunInfo::load(&run_dir).with_context(|| format!("reading run {}", run_dir.display()))?;
    let fdir = a.features.unwrap_or_else(|| info.features_dir.clone());
    let out = a.reports.join(&a.run);
    let explain = match a.explain {
        0 => None,
        n => match tlearn::score::export_run(&run_dir, &a.onnx_dir, &tlearn::cli::Terminal::default()) {
            Ok(model) => Some(evaluate::Explain { model, mistakes: n, session: a.ort.session() }),
            Err(e) => {
                tracing::warn!("no Grad-CAM overlays: the run's deployable model could not be built: {e}");
                None
            }
        },
    };
    let m = evaluate::head_run(&run_dir, &info, &fdir, &a.split, &out, &a.ort.session(), explain.as_ref())
        .with_context(|| format!("evaluating run {} on the {} split", a.run, a.split))?;
    let (backbone, size) = (&info.features.backbone, info.features.size);
    tlearn::outln!("{} on {} ({backbone} {size}×{size}):", a.run, a.split);
    tlearn::out!("{}", evaluate::render(&m));
    tlearn::outln!("→ {} and {}", out.join("metrics.json").display(), out.join("index.html").display());
    Ok(())
}
