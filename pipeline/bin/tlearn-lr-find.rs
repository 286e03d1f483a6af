//! tlearn-lr-find: the learning-rate range test (fastai's `lr_find`) for a fine-tune
//! (`MODEL --data DIR`) or a dense head (`--features DIR`): a short sweep of exponentially growing
//! rates from the model's current weights, the loss curve and fastai's suggestions written to a
//! report folder. Neither the model nor any run changes.

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::path::{Path, PathBuf};
use tlearn::cli::{OptimizerKind, Terminal};
use tlearn::heads::HeadKind;
use tlearn::params::ParamGuard;
use tlearn::train::lr_find::{self, LrCurve};

#[derive(Parser)]
#[command(
    version,
    about = "Learning-rate range test: sweep the rate on a fine-tune (MODEL --data DIR) or a dense head \
             (--features DIR); writes lr_find.csv, lr_find.json and lr_find.png and prints the suggestion"
)]
struct Args {
    /// The classifier to fine-tune (.onnx), as tlearn-finetune takes it.
    model: Option<PathBuf>,
    /// Split dataset folder (train/[validation/]<class>/) the fine-tune trains on.
    #[arg(long, requires = "model")]
    data: Option<PathBuf>,
    /// Feature folder (tlearn-extract) a dense head trains on, instead of MODEL --data.
    #[arg(long, conflicts_with_all = ["model", "data"])]
    features: Option<PathBuf>,
    /// Report folder (default: reports/lr-find-<model or feature folder name>).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value = tlearn::layout::REPORTS)]
    reports: PathBuf,
    /// Batch size (default: tlearn-finetune's 32, tlearn-head's 20).
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long, value_enum, default_value = "rmsprop")]
    optimizer: OptimizerKind,
    /// With --lr-base: the head's rate the base's is set against; the sweep keeps their ratio.
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    momentum: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    sweep: tlearn::cli::SweepArgs,
    #[command(flatten)]
    reg: tlearn::cli::RegArgs,
    #[command(flatten)]
    train: tlearn::cli::FinetuneArgs,
    #[command(flatten)]
    head: tlearn::cli::HeadShapeArgs,
    /// Dense head: add these cached flipped views of the training images to the training set.
    #[arg(long, value_enum, value_delimiter = ',')]
    train_views: Vec<tlearn::imageio::View>,
    #[command(flatten)]
    ort: tlearn::cli::OrtArgs,
}

fn main() -> std::process::ExitCode {
    tlearn::cli::main(|| run(Args::parse()))
}

/// The loop the sweep steps as: batch, optimizer (at `lr`, which the sweep replaces), seed,
/// regularisation.
fn fit(a: &Args, batch: usize, lr: f64) -> Result<tlearn::params::Checked<tlearn::train::FitConfig>> {
    let mut f = tlearn::train::FitConfig::new(1, batch, a.seed, a.optimizer.build(lr, a.momentum));
    f.weight_decay = a.reg.weight_decay;
    f.label_smoothing = a.reg.label_smoothing;
    f.class_weight = a.reg.class_weight.clone();
    Ok(f.check()?)
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap_or_default().to_string_lossy().into_owned()
}

fn run(a: Args) -> Result<()> {
    let sweep = a.sweep.sweep()?;
    let term = Terminal::default();
    let (curve, name, what) = if let Some(features) = &a.features {
        let fit = fit(&a, a.batch.unwrap_or(20), a.lr.unwrap_or(tlearn::heads::DEFAULT_LR))?;
        let job = tlearn::head::HeadJob {
            features: features.clone(),
            run_dir: PathBuf::new(),
            kind: HeadKind::Dense,
            spec: a.head.spec(HeadKind::Dense).check()?,
            classical: tlearn::heads::ClassicalSpec::default().check()?,
            fit,
            opts: a.ort.session(),
            train_views: a.train_views.clone(),
            tta: vec![],
            resume: tlearn::head::RESUME,
            lr_auto: None,
        };
        let curve = tlearn::head::lr_find(&job, &sweep, &term)
            .with_context(|| format!("sweeping the learning rate on {}", features.display()))?;
        (curve, stem(features), format!("dense head on {}", features.display()))
    } else {
        let (Some(model), Some(data)) = (&a.model, &a.data) else {
            bail!("give MODEL --data DIR (a fine-tune) or --features DIR (a dense head)");
        };
        let fit = fit(&a, a.batch.unwrap_or(32), a.lr.unwrap_or(tlearn::finetune::DEFAULT_LR))?;
        let cfg = a.train.config((model, data, PathBuf::new()), fit, a.ort.training())?;
        let curve = tlearn::finetune::lr_find(&cfg, &sweep, &term)
            .with_context(|| format!("sweeping the learning rate of {} on {}", model.display(), data.display()))?;
        (curve, stem(model), format!("{} on {}", model.display(), data.display()))
    };
    let out = a.out.clone().unwrap_or_else(|| a.reports.join(format!("lr-find-{name}")));
    let inputs: Vec<&Path> =
        [a.model.as_deref(), a.data.as_deref(), a.features.as_deref()].into_iter().flatten().collect();
    tlearn::fsutil::check_output_apart(&out, &inputs)?;
    lr_find::write(&out, &format!("learning-rate sweep: {what}"), &sweep, &curve)?;
    report(&curve, &out);
    Ok(())
}

/// What the sweep found, on standard output.
fn report(curve: &LrCurve, out: &Path) {
    let rate = |v: Option<f64>| v.map(|v| format!("{v:.3e}")).unwrap_or_else(|| "none".into());
    tlearn::outln!("sweep: {} steps; {}", curve.lrs.len(), curve.why());
    tlearn::outln!("valley {}  steep {}", rate(curve.valley), rate(curve.steep));
    match curve.valley {
        Some(lr) => tlearn::outln!("suggested learning rate: {lr:.3e} (valley)  → --lr {lr:.1e}"),
        None => tlearn::outln!("no suggestion: too few steps before the loss diverged; sweep from a lower --start-lr"),
    }
    tlearn::outln!("→ {}", out.join(lr_find::PNG).display());
}
