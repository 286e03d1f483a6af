//! tlearn-predict: each image's class and probability under a run, on standard output (a table
//! at a terminal, CSV in a pipe); no file is written but the run's deployable model.

use anyhow::{Context, Result};
use clap::Parser;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use tlearn::score::PredictionFormat;

#[derive(Parser)]
#[command(
    version,
    about = "Print path, class and probability of each image under a run (head or fine-tune): a table at a \
             terminal, CSV when piped"
)]
struct Args {
    /// Images, folder trees or quoted glob patterns (`'shots/**/*.jpg'`), as tlearn-score takes them.
    #[arg(required_unless_present = "list")]
    inputs: Vec<PathBuf>,
    /// Files listing images, one path per line (or a scores file), as tlearn-score reads them.
    #[arg(long)]
    list: Vec<PathBuf>,
    /// The run to predict with (a folder under --runs).
    #[arg(long, value_parser = tlearn::cli::run_name)]
    run: String,
    #[arg(long, default_value = tlearn::layout::RUNS)]
    runs: PathBuf,
    /// Where a head run's backbone is, when its deployable model must be built.
    #[arg(long, default_value = tlearn::layout::ONNX)]
    onnx_dir: PathBuf,
    /// table, csv or jsonl (default: table when standard output is a terminal, else csv).
    #[arg(long, value_enum)]
    format: Option<PredictionFormat>,
    /// Binary models: predict the positive class (the second) when its probability ≥ this.
    #[arg(long)]
    threshold: Option<f64>,
    #[arg(long, default_value_t = 20)]
    batch: usize,
    #[arg(long, default_value_t = tlearn::imageio::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    #[command(flatten)]
    ort: tlearn::cli::OrtArgs,
}

fn main() -> std::process::ExitCode {
    tlearn::cli::main(|| run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    // The predictions are the data on standard output; every other line goes to standard error.
    tlearn::cli::send_report_to_stderr();
    let listed = tlearn::inputs::collect(&a.inputs, &a.list)?;
    if listed.files.is_empty() {
        return Err(listed.nothing_read(&listed.unreadable).into());
    }
    let term = tlearn::cli::Terminal::default();
    let run_dir = a.runs.join(&a.run);
    let model = tlearn::runs::Run::open(&run_dir)
        .and_then(|r| r.deployable(&a.onnx_dir, &term))
        .with_context(|| format!("the deployable model of run {}", run_dir.display()))?;
    let o = tlearn::score::ScoreOptions {
        batch: a.batch,
        max_pixels: a.max_pixels,
        threshold: a.threshold,
        top_k: 1,
        format: tlearn::score::Format::Csv,
        shard: None,
        checkpoint_every: 1,
    };
    let p = tlearn::score::predict(&model, &listed.files, &o, &a.ort.session(), &term)
        .with_context(|| format!("predicting with {}", model.display()))?;
    let unreadable: Vec<_> = listed.unreadable.iter().chain(&p.unreadable).cloned().collect();
    if p.rows.is_empty() {
        return Err(listed.nothing_read(&unreadable).into());
    }
    let format = a.format.unwrap_or(if std::io::stdout().is_terminal() {
        PredictionFormat::Table
    } else {
        PredictionFormat::Csv
    });
    let bytes = format.render(&p.rows);
    match tlearn::output::write_stream(&tlearn::output::target(Path::new("-"))?, |w| w.write_all(&bytes)) {
        // A reader that stopped early (`| head`) ends the output, not in an error.
        Err(tlearn::Error::Io { err, .. }) if err.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    if !unreadable.is_empty() {
        tlearn::errln!("skipped {} unreadable file(s):", unreadable.len());
        for (_, why) in &unreadable {
            tlearn::errln!("  {why}");
        }
    }
    if !listed.not_images.is_empty() {
        tlearn::errln!("left out {} file(s) not named as images", listed.not_images.len());
    }
    Ok(())
}
