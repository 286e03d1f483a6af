//! tlearn-evaluate: metrics of a trained run (a head or a fine-tune) on a split of what it
//! trained on: the head run's cached features, the fine-tune's dataset.

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use tlearn::evaluate;

#[derive(Parser)]
#[command(
    version,
    about = "Loss, accuracy, per-class P/R/F1, confusion matrix, ROC-AUC of a head or fine-tune run → reports/<run>/metrics.json + index.html"
)]
struct Args {
    /// Run name (required): a folder under --runs.
    #[arg(long, value_parser = tlearn::cli::run_name)]
    run: String,
    #[arg(long, default_value = tlearn::layout::RUNS)]
    runs: PathBuf,
    #[arg(long, default_value = tlearn::layout::REPORTS)]
    reports: PathBuf,
    #[arg(long, default_value = "test")]
    split: String,
    /// What to evaluate on (default: what the run trained on): a feature folder for a head run,
    /// a dataset of class folders for a fine-tuned one.
    #[arg(long, visible_alias = "features", visible_alias = "data")]
    source: Option<PathBuf>,
    /// Grad-CAM overlays in the report for the N most confident mistakes and N/2 most confident
    /// right answers (0: none); made with the run's deployable model (built if missing).
    #[arg(long, default_value_t = 8)]
    explain: usize,
    /// Where the run's backbone is (for the deployable model).
    #[arg(long, default_value = tlearn::layout::ONNX)]
    onnx_dir: PathBuf,
    /// Print one line on the evaluation already in reports/<run>/ (accuracy, loss, ROC-AUC,
    /// macro-F1, n, training time) and stop: nothing is computed.
    #[arg(long)]
    summary: bool,
    /// Bytes a fine-tune run's decoded images may hold in memory (e.g. 2G); past it they are read
    /// from a file in the run folder, with the same result. Default: as tlearn-finetune's.
    #[arg(long, value_parser = tlearn::cli::byte_size)]
    max_memory: Option<u64>,
    #[command(flatten)]
    ort: tlearn::cli::OrtArgs,
}

fn main() -> std::process::ExitCode {
    tlearn::cli::main(|| run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    let run_dir = a.runs.join(&a.run);
    if a.summary {
        let report = a.reports.join(&a.run);
        if !report.exists() && !run_dir.exists() {
            // Nothing of that name: the runs there are named instead.
            return Err(tlearn::runs::unknown_run(&run_dir).into());
        }
        tlearn::outln!("{}", evaluate::summary(&report)?);
        return Ok(());
    }
    let run = tlearn::runs::Run::open(&run_dir).with_context(|| format!("reading run {}", run_dir.display()))?;
    let out = a.reports.join(&a.run);
    let term = tlearn::cli::Terminal::default();
    let ensemble = matches!(run.record, tlearn::runs::Record::Ensemble(_));
    let explain = match a.explain {
        0 => None,
        // One mean of several nets has no one last convolution to weigh.
        _ if ensemble => None,
        n => match run.deployable(&a.onnx_dir, &term) {
            Ok(model) => Some(evaluate::Explain { model, mistakes: n, session: a.ort.session() }),
            Err(e) => {
                tracing::warn!("no Grad-CAM overlays: the run's deployable model could not be built: {e}");
                None
            }
        },
    };
    let how = (a.split.as_str(), a.source.as_deref());
    let opts = tlearn::runs::PredictOptions { session: a.ort.session(), max_memory: a.max_memory };
    let e = evaluate::run(&run, how, &out, &opts, explain.as_ref(), &term)
        .with_context(|| format!("evaluating run {} on the {} split", a.run, a.split))?;
    if e.skipped > 0 {
        tlearn::outln!("{}: skipped {} unreadable image(s) (listed in the report's metrics.json)", a.split, e.skipped);
    }
    tlearn::outln!("{} on {} ({}):", a.run, a.split, run.describe());
    tlearn::out!("{}", evaluate::render(&e.metrics));
    tlearn::outln!("→ {} and {}", out.join("metrics.json").display(), out.join("index.html").display());
    Ok(())
}
