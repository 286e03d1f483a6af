//! tlearn-score: export one deployable ONNX (preprocessing + backbone + head) and score folders.

use anyhow::{Context, Result};
use clap::Parser;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    version,
    about = "Score images (folders, files, glob patterns, --list files) → CSV or JSON lines, sorted by path",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Folder trees, images, or quoted glob patterns (`'shots/**/*.jpg'`) to score; omit with
    /// --export-only.
    inputs: Vec<PathBuf>,
    /// Files listing images to score: one path per line, as written (no comments; empty lines
    /// skipped; tlearn's `\\` and `\xHH` escapes read), or a scores file from an earlier run.
    #[arg(long)]
    list: Vec<PathBuf>,
    /// Binary models: predict the positive class (the second) when its probability ≥ this.
    #[arg(long)]
    threshold: Option<f64>,
    /// Multi-class models: also write the k most probable classes.
    #[arg(long, default_value_t = 1)]
    top_k: usize,
    /// Output format (default: jsonl for a .jsonl/.ndjson --out, else csv).
    #[arg(long, value_enum)]
    format: Option<tlearn::score::Format>,
    /// Run whose model to use (a folder under --runs); required unless --model is given.
    #[arg(long, value_parser = tlearn::cli::run_name, required_unless_present = "model")]
    run: Option<String>,
    #[arg(long, default_value = tlearn::layout::RUNS)]
    runs: PathBuf,
    /// A deployable model instead of the run's (runs/<run>/model.onnx, built when missing or stale).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output file (default: reports/<run>/scores.csv; with --model and no --run, required); a
    /// summary goes to <out>.summary.json. A
    /// link is written at its target; `-` (standard output), a FIFO or a device as a stream,
    /// with no summary file beside it.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value = tlearn::layout::ONNX)]
    onnx_dir: PathBuf,
    /// Only write runs/<run>/model.onnx.
    #[arg(long)]
    export_only: bool,
    #[arg(long, default_value_t = 20)]
    batch: usize,
    #[command(flatten)]
    ort: tlearn::cli::OrtArgs,
    #[arg(long, default_value_t = tlearn::imageio::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Score only part I of N of the inputs (0-based, by path hash), e.g. a Slurm array task or
    /// a Kubernetes Indexed Job pod; combine the parts with `tlearn-score merge`.
    #[arg(long)]
    shard: Option<tlearn::shard::Shard>,
    /// Journal progress every this many images (a killed run resumes from there).
    #[arg(long, default_value_t = 1000)]
    checkpoint_every: usize,
    /// Also write a Grad-CAM overlay of every scored image (the predicted class) into this folder,
    /// with index.csv naming them. Each costs about two inferences.
    #[arg(long)]
    explain: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Combine the outputs of all `--shard I/N` runs into what one run writes.
    Merge {
        /// Output file of the merged scores (its summary goes to <out>.summary.json).
        #[arg(long)]
        out: PathBuf,
        /// The N shard outputs (each with its .summary.json next to it).
        #[arg(required = true)]
        parts: Vec<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    tlearn::cli::main(|| run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    if let Some(Cmd::Merge { out, parts }) = &a.cmd {
        if tlearn::output::target(out)?.is_stdout() {
            tlearn::cli::send_report_to_stderr();
        }
        let s = tlearn::score::merge(parts, out).with_context(|| format!("merging into {}", out.display()))?;
        tlearn::outln!("merged {} parts: {} images scored → {}", parts.len(), s.scored, out.display());
        return Ok(());
    }
    let (run_dir, model) = run_model(&a)?;
    if a.export_only {
        tlearn::outln!("{}", model.display());
        return Ok(());
    }
    if a.inputs.is_empty() && a.list.is_empty() {
        anyhow::bail!("give folders, images, glob patterns or --list files to score (or --export-only)");
    }
    let out = match (&a.out, &a.run) {
        (Some(out), _) => out.clone(),
        (None, Some(run)) => tlearn::layout::scores_path(Path::new(tlearn::layout::REPORTS), run),
        (None, None) => anyhow::bail!("give --out FILE for the scores (or --run NAME: reports/NAME/scores.csv)"),
    };
    if tlearn::output::target(&out)?.is_stdout() {
        tlearn::cli::send_report_to_stderr();
    }
    tlearn::score::check_outputs(&out, &model, &run_dir, (&a.inputs, &a.list), a.explain.as_deref())?;
    let mut listed = tlearn::inputs::collect(&a.inputs, &a.list)?;
    if listed.files.is_empty() {
        return Err(listed.nothing_read(&listed.unreadable)).context("nothing scored");
    }
    let (files, unreadable) = (std::mem::take(&mut listed.files), std::mem::take(&mut listed.unreadable));
    let not_images = &listed.not_images;
    for p in not_images {
        tracing::warn!("{}: skipped (not named as an image)", p.display());
    }
    let to_explain = a.explain.as_ref().map(|_| {
        let mut f = files.clone();
        f.retain(|p| a.shard.is_none_or(|s| s.owns(&tlearn::fsutil::real_path(p))));
        f
    });
    let o = tlearn::score::ScoreOptions {
        batch: a.batch,
        max_pixels: a.max_pixels,
        threshold: a.threshold,
        top_k: a.top_k,
        format: a.format.unwrap_or_else(|| tlearn::score::Format::of(&out)),
        shard: a.shard,
        checkpoint_every: a.checkpoint_every,
    };
    let t = std::time::Instant::now();
    let s =
        tlearn::score::score(&model, files, unreadable, &out, &o, &a.ort.session(), &tlearn::cli::Terminal::default())
            .with_context(|| format!("scoring into {}", out.display()))?;
    report(&s, t.elapsed().as_secs_f64(), &out, not_images.len());
    if s.scored == 0 && !s.unreadable.is_empty() {
        return Err(listed.nothing_read(&s.unreadable)).context(format!("nothing scored into {}", out.display()));
    }
    if let (Some(dir), Some(files)) = (&a.explain, to_explain) {
        explain(&a, &model, &files, dir)?;
    }
    Ok(())
}

/// What was scored, per class, and what was not.
fn report(s: &tlearn::score::ScoreSummary, secs: f64, out: &Path, not_images: usize) {
    tlearn::outln!(
        "scored {} images in {secs:.1} s ({:.1} img/s) → {}",
        s.scored,
        s.scored as f64 / secs.max(1e-9),
        out.display()
    );
    for (c, n) in &s.per_class {
        tlearn::outln!("  {c:<14} {n}");
    }
    if not_images > 0 {
        tlearn::outln!("skipped {not_images} file(s) not named as images (the log lists them)");
    }
    if !s.unreadable.is_empty() {
        tlearn::outln!("unreadable: {}", s.unreadable.len());
        for (_, why) in &s.unreadable {
            tlearn::outln!("  {why}");
        }
    }
}

/// The run's folder and the deployable model to score with: `--model`'s (its folder is its run's,
/// if any), else the run's own, built when missing or stale.
fn run_model(a: &Args) -> Result<(PathBuf, PathBuf)> {
    let run_dir = match (&a.run, &a.model) {
        (Some(run), _) => a.runs.join(run),
        (None, m) => tlearn::fsutil::parent_dir(m.as_deref().expect("required by clap")).to_path_buf(),
    };
    let model = match &a.model {
        Some(m) => m.clone(),
        None => tlearn::runs::Run::open(&run_dir)
            .and_then(|r| r.deployable(&a.onnx_dir, &tlearn::cli::Terminal::default()))
            .with_context(|| format!("exporting run {}", run_dir.display()))?,
    };
    Ok((run_dir, model))
}

/// `--explain DIR`: the Grad-CAM overlays of the scored files.
fn explain(a: &Args, model: &Path, files: &[PathBuf], dir: &Path) -> Result<()> {
    let how = (a.max_pixels, a.shard);
    let e = tlearn::explain::explain_files(model, files, dir, how, &a.ort.session(), &tlearn::cli::Terminal::default())
        .with_context(|| format!("Grad-CAM overlays into {}", dir.display()))?;
    tlearn::outln!("Grad-CAM: {} overlays → {}", e.written, dir.join(tlearn::explain::index_name(a.shard)).display());
    for (p, why) in &e.skipped {
        tlearn::outln!("  not explained: {}: {why}", p.display());
    }
    Ok(())
}
