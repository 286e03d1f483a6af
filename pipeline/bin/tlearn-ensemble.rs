//! tlearn-ensemble: finished runs of the same classes averaged as one run — one deployable model
//! whose probabilities are the mean of theirs; evaluate, score and predict take it as any run.

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "Average finished runs (heads, fine-tunes, fits; other seeds, sizes or backbones) into one run: \
             runs/<NAME>/model.onnx outputs the mean of their probabilities"
)]
struct Args {
    /// The ensemble's run name (a folder under --runs; an ensemble there is replaced).
    #[arg(long, value_parser = tlearn::cli::run_name)]
    run: String,
    /// The members: run names under --runs, or paths to run folders (e.g. runs/cv/fold-1).
    #[arg(required = true, num_args = 2..)]
    members: Vec<String>,
    #[arg(long, default_value = tlearn::layout::RUNS)]
    runs: PathBuf,
    /// Where head runs' backbones are (their deployable models are built if missing).
    #[arg(long, default_value = tlearn::layout::ONNX)]
    onnx_dir: PathBuf,
}

fn main() -> std::process::ExitCode {
    tlearn::cli::main(|| run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    let members = a.members.iter().map(|m| tlearn::cli::run_dir(&a.runs, m)).collect();
    let job = tlearn::ensemble::EnsembleJob { run_dir: a.runs.join(&a.run), members, onnx_dir: a.onnx_dir };
    let term = tlearn::cli::Terminal::default();
    let done = tlearn::ensemble::make(&job, &term).with_context(|| format!("making the ensemble {}", a.run))?;
    tlearn::outln!(
        "{}: the mean of {} runs at {} px → {}",
        a.run,
        done.members.len(),
        done.size,
        job.run_dir.join(tlearn::runs::MODEL).display()
    );
    tlearn::outln!("next: tlearn evaluate --run {r}   ·   tlearn predict NEW_IMAGES/ --run {r}", r = a.run);
    Ok(())
}
