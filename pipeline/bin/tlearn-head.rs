//! tlearn-head: train a classifier head on cached features (dense, or a classical one from the zoo).

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use tlearn::cli::{Lr, Terminal};
use tlearn::head::{self, HeadJob};
use tlearn::heads::HeadKind;
use tlearn::imageio::View;
use tlearn::params::ParamGuard;
use tlearn::train::checkpoint::Resume;
use tlearn::train::lr_find::Sweep;

#[derive(Parser)]
#[command(
    version,
    about = "Train a head on cached features: dense (Dense → Dropout → sigmoid|softmax), logistic, svm, rbf, forest or knn"
)]
struct Args {
    /// Feature folder written by tlearn-extract (features/<dataset>/<backbone>-<size>).
    #[arg(long)]
    features: PathBuf,
    /// Run name (required): outputs go to <runs>/<run>/.
    #[arg(long, value_parser = tlearn::cli::run_name)]
    run: String,
    #[arg(long, default_value = tlearn::layout::RUNS)]
    runs: PathBuf,
    /// Which classifier (all save as head.onnx, so evaluate and score treat them alike).
    #[arg(long, value_enum, default_value = "dense")]
    head: HeadKind,
    #[command(flatten)]
    params: tlearn::cli::HeadArgs,
    #[command(flatten)]
    ort: tlearn::cli::OrtArgs,
    /// Add these cached flipped views of the training images to the training set
    /// (`tlearn-extract --views`); validation uses the plain images.
    #[arg(long, value_enum, value_delimiter = ',')]
    train_views: Vec<View>,
    /// Test-time augmentation: evaluate and score average the probabilities of the plain image and
    /// these views (also built into the deployable model).
    #[arg(long, value_enum, value_delimiter = ',')]
    tta: Vec<View>,
    /// Dense head: ignore the run's checkpoint and start over. (By default a rerun with the same
    /// settings and features continues from the last finished epoch and ends as an uninterrupted
    /// run would; only --epochs may differ.)
    #[arg(long)]
    restart: bool,
}

fn main() -> std::process::ExitCode {
    tlearn::cli::main(|| run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    let term = Terminal::default();
    let job = HeadJob {
        features: a.features.clone(),
        run_dir: a.runs.join(&a.run),
        kind: a.head,
        spec: a.params.spec(a.head).check()?,
        classical: a.params.classical()?,
        fit: a.params.fit_to_sweep()?,
        opts: a.ort.session(),
        train_views: a.train_views,
        tta: a.tta,
        resume: Resume::from_flags(a.restart, false, tlearn::head::RESUME),
        lr_auto: None,
    };
    let job = match a.params.lr {
        Lr::Auto => head::choose_lr(job, &Sweep::default().check()?, &term)
            .with_context(|| format!("choosing the learning rate on {}", a.features.display()))?,
        Lr::Given(_) => job,
    };
    if let Some(c) = &job.lr_auto {
        tlearn::outln!("learning rate {:.3e}, chosen by the range test (--lr auto)", c.lr);
    }
    let (info, trained) =
        head::train_head(&job, &term).with_context(|| format!("training on {}", a.features.display()))?;
    if a.head != HeadKind::Dense {
        let e = &trained.history[0];
        tlearn::outln!(
            "{}: {} ({} stored numbers)  {}  ({:.2} s)",
            a.head.name(),
            trained.describe,
            tlearn::onnx::summary::thousands(trained.params),
            e.scores(),
            info.train_seconds
        );
    }
    tlearn::outln!("trained in {:.1} s → {}", info.train_seconds, job.run_dir.join(tlearn::runs::HEAD).display());
    Ok(())
}
