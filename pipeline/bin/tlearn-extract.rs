//! tlearn-extract: run a backbone over every split and cache the features as .npy.

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use tlearn::imageio::Interpolation;

#[derive(Parser)]
#[command(
    version,
    about = "Cache backbone features of every split (numpy-readable .npy)",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Split dataset folder (train/validation/test/<class>/).
    #[arg(long, required = true)]
    data: Option<PathBuf>,
    /// Backbone name (fetched into --onnx-dir) or path of a cut backbone .onnx.
    #[arg(long, default_value = "vgg16")]
    backbone: String,
    /// Square input size (default: the backbone's).
    #[arg(long)]
    size: Option<u32>,
    #[arg(long, value_enum, default_value = "nearest")]
    interpolation: Interpolation,
    #[arg(long, default_value_t = 20)]
    batch: usize,
    #[command(flatten)]
    ort: tlearn::cli::OrtArgs,
    /// Output folder (default: features/<dataset>/<backbone>-<size>).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, value_delimiter = ',', default_value = "train,validation,test")]
    splits: Vec<String>,
    #[arg(long, default_value = tlearn::layout::ONNX)]
    onnx_dir: PathBuf,
    /// Also cache these flipped views of every image (`<split>.<view>.npy`), for feature
    /// augmentation (`tlearn-head --train-views`) and test-time augmentation (`--tta`).
    #[arg(long, value_enum, value_delimiter = ',')]
    views: Vec<tlearn::imageio::View>,
    /// Refuse images with more pixels than this (decompression bombs).
    #[arg(long, default_value_t = tlearn::imageio::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Extract only part I of N of every split (0-based, by path hash) into
    /// <out>/shard-I-of-N/, e.g. as a Slurm array task or a Kubernetes Indexed Job pod; combine
    /// the parts with `tlearn-extract merge`.
    #[arg(long)]
    shard: Option<tlearn::shard::Shard>,
    /// Journal computed features every this many images (a killed run resumes from there).
    #[arg(long, default_value_t = 500)]
    checkpoint_every: usize,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Combine the caches of all `--shard I/N` runs into what one run writes.
    Merge {
        /// The feature folder to write (the parts default to its shard-*-of-*/ subfolders).
        #[arg(long)]
        out: PathBuf,
        /// Part folders (default: <out>/shard-*-of-*).
        parts: Vec<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    tlearn::cli::main(|| run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    if let Some(Cmd::Merge { out, parts }) = &a.cmd {
        let parts = if parts.is_empty() { tlearn::features::shard_parts(out)? } else { parts.clone() };
        let done = tlearn::features::merge(&parts, out).with_context(|| format!("merging into {}", out.display()))?;
        for (stem, n) in &done {
            tlearn::outln!("{stem:<17} {n:>6} images");
        }
        tlearn::outln!("merged {} parts → {}", parts.len(), out.display());
        return Ok(());
    }
    let data = a.data.clone().expect("required by clap");
    let bb = tlearn::backbone::Backbone::open(&a.onnx_dir, &a.backbone)?;
    let size = a.size.unwrap_or(bb.info.size);
    let dataset_name = data.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into());
    let mut out = a.out.unwrap_or_else(|| tlearn::layout::features_dir(&dataset_name, &bb.name, size));
    if let Some(s) = &a.shard {
        out = out.join(s.dir_name());
    }
    let cfg = tlearn::extract::ExtractConfig {
        dataset: data.clone(),
        out: out.clone(),
        size,
        interpolation: a.interpolation,
        batch: a.batch,
        session: a.ort.session(),
        max_pixels: a.max_pixels,
        splits: a.splits,
        views: a.views,
        shard: a.shard,
        checkpoint_every: a.checkpoint_every,
    };
    let t = std::time::Instant::now();
    let reports = tlearn::extract::extract(&cfg, &bb, &tlearn::cli::Terminal::default())
        .with_context(|| format!("extracting {} features of {}", bb.name, data.display()))?;
    let secs = t.elapsed().as_secs_f64();
    let computed: usize = reports.iter().map(|r| r.computed).sum();
    for r in &reports {
        let name = tlearn::features::stem(&r.split, r.view);
        tlearn::outln!(
            "{:<17} {:>6} images  {:>6} computed  {:>6} reused  {:>4} skipped{}",
            name,
            r.n,
            r.computed,
            r.reused,
            r.skipped,
            if r.up_to_date { "  (up to date)" } else { "" }
        );
    }
    tlearn::outln!(
        "{} → {} in {secs:.1} s ({:.1} img/s computed)",
        bb.name,
        out.display(),
        computed as f64 / secs.max(1e-9)
    );
    Ok(())
}
