//! tlearn-finetune: train or fine-tune a whole ONNX classifier on class folders, with
//! Keras-style augmentation, checkpoints of the best epoch and early stopping.

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use tlearn::augment::Augment;
use tlearn::cli::{Lr, Terminal};
use tlearn::evaluate;
use tlearn::finetune::{self, FinetuneConfig};
use tlearn::params::ParamGuard;
use tlearn::train::checkpoint::Resume;
use tlearn::train::lr_find::Sweep;

#[derive(Parser)]
#[command(version, about = "Train / fine-tune an ONNX classifier on train/validation/test class folders")]
struct Args {
    /// The classifier (.onnx): a net from tlearn-convnet, a Keras tf2onnx export, a fused model's net.
    model: PathBuf,
    /// Split dataset folder (train/[validation/][test/]<class>/).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run name: outputs go to <runs>/<run>/. Default: the model's file stem, while no other run
    /// holds that folder (a head run, a fine-tune of another model); then give one.
    #[arg(long, value_parser = tlearn::cli::run_name)]
    run: Option<String>,
    #[arg(long, default_value = tlearn::layout::RUNS)]
    runs: PathBuf,
    #[arg(long, default_value = tlearn::layout::REPORTS)]
    reports: PathBuf,
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, value_enum, default_value = "rmsprop")]
    optimizer: tlearn::cli::OptimizerKind,
    /// The learning rate, or `auto`: the learning-rate range test (tlearn-lr-find's) runs first
    /// and the run trains at its suggestion (recorded in run.json; a resumed run keeps it).
    #[arg(long, default_value_t = Lr::Given(finetune::DEFAULT_LR))]
    lr: Lr,
    #[arg(long, default_value_t = 0.0)]
    momentum: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    lr_schedule: tlearn::cli::ScheduleArgs,
    #[command(flatten)]
    reg: tlearn::cli::RegArgs,
    /// Stop after this many epochs without a better validation loss.
    #[arg(long, conflicts_with = "include_validation")]
    patience: Option<usize>,
    #[command(flatten)]
    train: tlearn::cli::FinetuneArgs,
    /// Test-time augmentation: the test evaluation and the deployable model average the
    /// probabilities of the plain image and these views (e.g. `--tta hflip,vflip,rot180`). A rerun
    /// with other views reuses the finished checkpoint.
    #[arg(long, value_enum, value_delimiter = ',')]
    tta: Vec<tlearn::imageio::View>,
    /// Write a grid of augmented versions of this image (to --preview-out) and exit.
    #[arg(long)]
    preview: Option<PathBuf>,
    #[arg(long, default_value = "augmented.png")]
    preview_out: PathBuf,
    /// Require continuing from the run's checkpoint (runs/<run>/checkpoint.onnx). Without it a
    /// rerun continues from a checkpoint made with the same settings and data (only --epochs may
    /// differ), equal to an uninterrupted run; one made with other settings is refused, naming
    /// them (--restart starts over).
    #[arg(long, conflicts_with = "restart")]
    resume: bool,
    /// Ignore the run's checkpoint and start over.
    #[arg(long)]
    restart: bool,
    /// Grad-CAM overlays in the test report for the N most confident mistakes and N/2 most
    /// confident right answers (0: none).
    #[arg(long, default_value_t = 8)]
    explain: usize,
    #[command(flatten)]
    ort: tlearn::cli::OrtArgs,
}

fn main() -> std::process::ExitCode {
    tlearn::cli::main(|| run(Args::parse()))
}

/// `--preview IMG`: a grid of augmented versions of one image.
fn preview(a: &Args, img: &std::path::Path, augment: Option<Augment>) -> Result<()> {
    let m = tlearn::onnx::load_model(&a.model)?;
    let input = finetune::input_shape(&m, &a.model)?;
    let aug = augment.context("--preview needs augmentation options (e.g. --augment)")?;
    tlearn::fsutil::check_output_apart(&a.preview_out, &[img])?;
    tlearn::augment::preview(img, &aug, input, a.train.interpolation, a.seed, &a.preview_out)?;
    tlearn::outln!("→ {}", a.preview_out.display());
    Ok(())
}

fn run(a: Args) -> Result<()> {
    if let Some(img) = &a.preview {
        return preview(&a, img, a.train.augment.augmentation());
    }
    let data = a.data.clone().context("give the dataset with --data")?;
    let optimizer = a.optimizer.build(a.lr.or(finetune::DEFAULT_LR), a.momentum);
    let run = match &a.run {
        Some(r) => r.clone(),
        None => finetune::default_run_name(&a.model, &a.runs)?,
    };
    let fit = tlearn::cli::fit_config((a.epochs, a.batch, a.seed), optimizer, &a.lr_schedule, &a.reg)?;
    let cfg = finetune::continuing(FinetuneConfig {
        patience: a.patience,
        tta: a.tta.clone(),
        resume: Resume::from_flags(a.restart, a.resume, finetune::RESUME),
        ..a.train.config((&a.model, &data, a.runs.join(&run)), fit, a.ort.training())?
    })?;
    let term = Terminal::default();
    let cfg = match a.lr {
        Lr::Auto => finetune::choose_lr(&cfg, &Sweep::default().check()?, &term)
            .with_context(|| format!("choosing the learning rate for {} on {}", a.model.display(), data.display()))?,
        Lr::Given(_) => cfg,
    };
    let done =
        finetune::run(&cfg, &term).with_context(|| format!("training {} on {}", a.model.display(), data.display()))?;
    let info = &done.info;
    if let Some(c) = &info.config.lr_auto {
        tlearn::outln!("learning rate {:.3e}, chosen by the range test (--lr auto)", c.lr);
    }
    let best = info.best_epoch.as_ref().map(|e| e.epoch).unwrap_or(0);
    // Without validation the model is the last epoch's.
    let which = if cfg.include_validation { "last" } else { "best" };
    let early = cfg.progressive.map(|p| format!(" after {} at {} px", p.epochs, p.size)).unwrap_or_default();
    tlearn::outln!(
        "trained {} of {} parameters, {} epochs{early} in {:.1} s; {which} epoch {best} → {}",
        info.trainable_params,
        info.total_params,
        info.epochs_run,
        info.train_seconds,
        cfg.run_dir.join(finetune::MODEL).display()
    );
    if !info.skipped.is_empty() {
        let record = cfg.run_dir.join(tlearn::runs::RECORD);
        tlearn::outln!("left out {} file(s) (listed with the reason in {})", info.skipped.len(), record.display());
    }
    if data.join("test").is_dir() {
        let out = a.reports.join(&run);
        let explain = (a.explain > 0).then(|| evaluate::Explain {
            model: cfg.run_dir.join(finetune::MODEL),
            mistakes: a.explain,
            session: a.ort.training(),
        });
        let finished = tlearn::runs::Run::open(&cfg.run_dir)?;
        let opts = tlearn::runs::PredictOptions { session: cfg.session.clone(), max_memory: cfg.max_memory };
        let e = evaluate::run(&finished, ("test", None), &out, &opts, explain.as_ref(), &term)?;
        let (m, skipped) = (e.metrics, e.skipped);
        if skipped > 0 {
            tlearn::outln!("test: skipped {skipped} unreadable image(s) (listed in the report's metrics.json)");
        }
        tlearn::outln!("{run} on test ({which} epoch {best}):");
        tlearn::out!("{}", evaluate::render(&m));
        tlearn::outln!("→ {}", out.join("metrics.json").display());
    }
    Ok(())
}
