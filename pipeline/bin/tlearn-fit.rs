//! tlearn-fit (`tlearn fit`): a folder of images to the best deployable model in one command.

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use tlearn::cli::Terminal;
use tlearn::params::ParamGuard;
use tlearn::runs::{Balance, FitSettings};

#[derive(Parser)]
#[command(
    version,
    about = "Fit a classifier to a folder of images in one command: split, backbone, features, a warm-start head, \
             the whole net fine-tuned with validation choosing its length, a final fit on train + validation, \
             evaluation on test, and runs/RUN/model.onnx"
)]
struct Args {
    /// The images: one folder per class, a Kaggle flat folder (`cat.1.jpg`), or a split dataset
    /// (train/[validation/][test/]<class>/).
    data: PathBuf,
    /// Run name: the fit goes to <runs>/<run>/, its report to <reports>/<run>/.
    #[arg(long, value_parser = tlearn::cli::run_name)]
    run: String,
    #[arg(long, default_value = tlearn::layout::RUNS)]
    runs: PathBuf,
    #[arg(long, default_value = tlearn::layout::REPORTS)]
    reports: PathBuf,
    /// A backbone of the catalog (`tlearn backbone list`), fetched when missing, or one you added.
    #[arg(long, default_value = tlearn::runs::fit::defaults::BACKBONE)]
    backbone: String,
    #[arg(long, default_value = tlearn::layout::ONNX)]
    onnx_dir: PathBuf,
    /// Square input size (default: the backbone's own).
    #[arg(long)]
    size: Option<u32>,
    /// The most epochs of the validated fine-tune: validation loss chooses its length.
    #[arg(long, default_value_t = tlearn::runs::fit::defaults::EPOCHS)]
    epochs: usize,
    /// Stop the validated fine-tune after this many epochs without a better validation loss.
    #[arg(long, default_value_t = tlearn::runs::fit::defaults::PATIENCE)]
    patience: usize,
    #[arg(long, default_value_t = tlearn::runs::fit::defaults::BATCH)]
    batch: usize,
    /// Adam's learning rate for the whole net (cosine decay over the epochs), or `auto`: the
    /// learning-rate range test on the warm start chooses it (the final fit keeps it).
    #[arg(long, default_value_t = tlearn::cli::Lr::Given(tlearn::runs::fit::defaults::LR))]
    lr: tlearn::cli::Lr,
    /// The images have no orientation (cells, tissue, satellite tiles): train with random flips
    /// and average the flipped views at test time and in the deployable model.
    #[arg(long)]
    flips: bool,
    /// Class imbalance: loss weights (auto: when the largest class has over 3× the smallest's
    /// images), or class-balanced sampling of every epoch (`sample`).
    #[arg(long, value_enum, default_value = "auto")]
    balance: Balance,
    /// `ordinal`: the classes are ordered (sorted by folder name: grades, levels); the warm-start
    /// head, and so the fine-tuned net, ends in one score and K−1 ordered thresholds.
    #[arg(long, value_enum, default_value = "classes")]
    target: tlearn::heads::Target,
    /// Progressive resizing: each fine-tune's first EPOCHS epochs at SIZE×SIZE (below --size;
    /// a step costs about the image's area), then at --size from where they left the weights,
    /// e.g. `--progressive 224:3` with `--size 300`. --epochs counts the epochs at --size.
    #[arg(long, value_name = "SIZE:EPOCHS")]
    progressive: Option<tlearn::runs::finetune::Progressive>,
    /// Keep the backbone's layers before it reaches stride S frozen (those whose maps are larger
    /// than 1/S of the image's side, e.g. 16): they keep their pretrained weights and have no
    /// backward pass, so each fine-tuning step costs much less (EfficientNet-Lite0 at 300: the
    /// 150, 75 and 38 px layers, about half the step).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(2..))]
    freeze_stride: Option<u32>,
    /// Keep the validated model instead of retraining on train + validation for its length.
    #[arg(long)]
    no_final_fit: bool,
    /// No validated fine-tune: the final fit on train + validation runs N epochs, a length chosen
    /// before (an earlier fit's best epoch, or a k-fold run's): one fine-tune instead of two.
    #[arg(long, value_name = "N", conflicts_with_all = ["no_final_fit", "epochs", "patience"])]
    final_epochs: Option<usize>,
    /// K-fold cross-validation: K fits, each tested on its own fold; the table of their test
    /// numbers in <reports>/<run>/folds.md.
    #[arg(long)]
    folds: Option<usize>,
    /// Fraction of each class held out for test when DATA is not split.
    #[arg(long, default_value_t = tlearn::runs::fit::defaults::TEST)]
    test: f64,
    /// Fraction of the rest held out for validation when DATA is not split (and of each fold's).
    #[arg(long, default_value_t = tlearn::runs::fit::defaults::VALIDATION)]
    validation: f64,
    #[arg(long, default_value_t = tlearn::runs::fit::defaults::SEED)]
    seed: u64,
    /// Epochs of the warm-start head on pooled features.
    #[arg(long, default_value_t = tlearn::runs::fit::defaults::HEAD_EPOCHS)]
    head_epochs: usize,
    /// The time the whole fit may take (e.g. 20m, 1h30m): the fine-tune's most epochs are
    /// planned from a measured training step to end within it (with --folds, each fold gets its
    /// share); the plan and its ETA are printed before the fine-tune.
    #[arg(long, value_parser = tlearn::cli::duration)]
    budget: Option<f64>,
    /// Delete what an earlier fit of this name wrote and start over (by default the same command
    /// continues where it stopped, and other settings are refused).
    #[arg(long)]
    restart: bool,
    /// Memory for decoded images (e.g. 2G); past it they are read from a file a batch at a time.
    #[arg(long, value_parser = tlearn::cli::byte_size)]
    max_memory: Option<u64>,
    /// Grad-CAM overlays in the test report for the N most confident mistakes (0: none).
    #[arg(long, default_value_t = 8)]
    explain: usize,
    #[command(flatten)]
    ort: tlearn::cli::OrtArgs,
}

fn main() -> std::process::ExitCode {
    tlearn::cli::main(|| run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    let bb = tlearn::backbone::resolve_size(&a.onnx_dir, &a.backbone, a.size)?;
    let settings = FitSettings {
        data: a.data.clone(),
        backbone: a.backbone.clone(),
        size: bb,
        epochs: a.epochs,
        patience: a.patience,
        batch: a.batch,
        lr: a.lr.or(tlearn::runs::fit::defaults::LR),
        lr_auto: matches!(a.lr, tlearn::cli::Lr::Auto),
        flips: a.flips,
        balance: a.balance,
        target: a.target,
        progressive: a.progressive,
        freeze_stride: a.freeze_stride,
        final_fit: !a.no_final_fit,
        final_epochs: a.final_epochs,
        folds: a.folds,
        test: a.test,
        validation: a.validation,
        seed: a.seed,
        head_epochs: a.head_epochs,
        budget: a.budget,
        precision: tlearn::fit::precision(&a.runs.join(&a.run), a.restart, &a.ort.training())
            .with_context(|| format!("fitting {}", a.data.display()))?,
    }
    .check()?;
    let job = tlearn::fit::FitJob {
        settings,
        run_dir: a.runs.join(&a.run),
        reports: a.reports.join(&a.run),
        onnx_dir: a.onnx_dir.clone(),
        session: a.ort.training(),
        max_memory: a.max_memory,
        explain: a.explain,
        restart: a.restart,
    };
    let term = Terminal::default();
    let done = tlearn::fit::run(&job, &term).with_context(|| format!("fitting {}", a.data.display()))?;
    if let Some(m) = &done.metrics {
        tlearn::outln!("{} on test:", a.run);
        tlearn::out!("{}", tlearn::evaluate::render(m));
        tlearn::outln!("→ {}", job.reports.join("index.html").display());
    }
    if let Some(model) = &done.model {
        tlearn::outln!("deployable model → {}", model.display());
        tlearn::outln!("next:");
        for c in tlearn::fit::next_commands(&a.run, &a.runs, &job.settings) {
            tlearn::outln!("  {c}");
        }
    } else {
        tlearn::outln!("→ {}", job.reports.join(tlearn::fit::FOLDS_TABLE).display());
    }
    Ok(())
}
