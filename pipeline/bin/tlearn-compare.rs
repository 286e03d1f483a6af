//! tlearn-compare: every head on every backbone's cached features → one table and a bar chart.

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use tlearn::compare::{self, Plan};
use tlearn::heads::HeadKind;

#[derive(Parser)]
#[command(
    version,
    about = "Train every head on every feature folder; test accuracy, ROC-AUC, F1, train and score times → table.md/.csv + accuracy.png"
)]
struct Args {
    /// Feature folders written by tlearn-extract (one per backbone/size), with train/validation/test.
    #[arg(required = true)]
    features: Vec<PathBuf>,
    /// Heads to train on each.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "dense,logistic,svm,rbf,forest,knn")]
    heads: Vec<HeadKind>,
    /// Output folder of the table and chart.
    #[arg(long, default_value = tlearn::layout::COMPARE_REPORTS)]
    out: PathBuf,
    /// Runs go to <runs>/<backbone>-<size>-<head>/ (each usable by tlearn-evaluate and tlearn-score).
    #[arg(long, default_value = tlearn::layout::COMPARE_RUNS)]
    runs: PathBuf,
    #[arg(long, default_value = tlearn::layout::ONNX)]
    onnx_dir: PathBuf,
    /// Title of the table and chart (default: the output folder's name).
    #[arg(long)]
    title: Option<String>,
    #[command(flatten)]
    params: tlearn::cli::HeadArgs,
    #[command(flatten)]
    ort: tlearn::cli::OrtArgs,
}

fn main() -> std::process::ExitCode {
    tlearn::cli::main(|| run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    let plan = Plan {
        features: a.features.clone(),
        heads: a.heads.clone(),
        spec: a.params.spec(HeadKind::Dense),
        standardize: a.params.shape.standardize,
        classical: a.params.classical()?,
        fit: a.params.fit()?,
        opts: a.ort.session(),
        runs: a.runs.clone(),
        onnx_dir: a.onnx_dir.clone(),
    };
    let term = tlearn::cli::Terminal::default();
    let rows = compare::run(&plan, &term, |r| {
        tlearn::progress::Sink::note(
            &term,
            &format!(
                "{}: accuracy {:.4}  ROC-AUC {}  macro-F1 {:.4}  ({:.1} s training)",
                r.run,
                r.accuracy,
                r.roc_auc.map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into()),
                r.macro_f1,
                r.train_seconds
            ),
        )
    })
    .context("comparing heads")?;
    let title =
        a.title.unwrap_or_else(|| a.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    compare::write(&a.out, &rows, &title)?;
    tlearn::out!("{}", compare::markdown(&rows));
    tlearn::outln!("→ {}", a.out.join("table.md").display());
    Ok(())
}
