//! tlearn-finetune: train or fine-tune a whole ONNX classifier on class folders, with
//! Keras-style augmentation, checkpoints of the best epoch and early stopping.

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use tlearn::augment::{Augment, FillMode};
use tlearn::cli::Terminal;
use tlearn::evaluate;
use tlearn::finetune::{self, FinetuneConfig};
use tlearn::imageio::Interpolation;
use tlearn::train::checkpoint::Resume;

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
    #[arg(long, default_value_t = finetune::DEFAULT_LR)]
    lr: f64,
    /// Learning rate of the pretrained conv base (everything up to the last spatial features),
    /// when it should move slower than the head (--lr); e.g. --lr 1e-3 --lr-base 1e-4.
    #[arg(long)]
    lr_base: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    momentum: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    lr_schedule: tlearn::cli::ScheduleArgs,
    #[command(flatten)]
    reg: tlearn::cli::RegArgs,
    /// Train only parameters matching these name patterns (`*` wildcards; else substring), e.g.
    /// `--trainable 'block5_*' --trainable dense`. Default: all.
    #[arg(long)]
    trainable: Vec<String>,
    /// Stop after this many epochs without a better validation loss.
    #[arg(long)]
    patience: Option<usize>,
    /// Train on train/ and validation/ together, with no validation pass (the last epoch is the
    /// model): the final fit, once runs with validation chose the recipe and --epochs.
    #[arg(long, conflicts_with = "patience")]
    include_validation: bool,
    /// Run the frozen layers before the first trained one once per image and flipped view, and
    /// train the rest on their cached output (with --trainable; augmentation: flips only).
    #[arg(long)]
    cache_trunk: bool,
    /// Pixel scale (Keras' rescale). Default: 1/255, or 1 for a model that scales its input
    /// itself (a leading Mul/Div by a constant, e.g. a Keras Rescaling layer) or is a deployable
    /// tlearn model.
    #[arg(long)]
    rescale: Option<f32>,
    #[arg(long, value_enum, default_value = "nearest")]
    interpolation: Interpolation,
    /// The classic augmentation preset: rotation 40, shifts 0.2, shear 0.2, zoom 0.2, horizontal flip.
    #[arg(long)]
    augment: bool,
    #[arg(long)]
    rotation_range: Option<f32>,
    #[arg(long)]
    width_shift_range: Option<f32>,
    #[arg(long)]
    height_shift_range: Option<f32>,
    #[arg(long)]
    shear_range: Option<f32>,
    #[arg(long)]
    zoom_range: Option<f32>,
    #[arg(long)]
    horizontal_flip: bool,
    #[arg(long)]
    vertical_flip: bool,
    /// A random quarter turn after the flips (square inputs): with both flips, all eight
    /// symmetries of the square — for images whose label does not depend on orientation.
    #[arg(long)]
    rot90: bool,
    /// Brightness factor range LO,HI (Keras' brightness_range), e.g. 0.8,1.2.
    #[arg(long, value_parser = range_pair)]
    brightness_range: Option<(f32, f32)>,
    /// Contrast factor U(1 − C, 1 + C) about each image's mean (0 ≤ C < 1).
    #[arg(long, value_parser = contrast)]
    contrast_range: Option<f32>,
    #[arg(long, value_enum, default_value = "nearest")]
    fill_mode: FillMode,
    #[arg(long, default_value_t = 0.0)]
    cval: f32,
    /// Test-time augmentation: the test evaluation and the deployable model average the
    /// probabilities of the plain image and these views (e.g. `--tta hflip,vflip,rot180`). A rerun
    /// with other views reuses the finished checkpoint.
    #[arg(long, value_enum, value_delimiter = ',')]
    tta: Vec<tlearn::imageio::View>,
    /// Train a deployable model on data whose class names differ from those it records (the
    /// model's output k becomes the data's k-th class, sorted by name); without it such data is
    /// refused, both lists named.
    #[arg(long)]
    relabel: bool,
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
    /// Memory for the decoded training and validation images and a cached trunk's outputs
    /// (e.g. 2G, 512M; the test images get the same after training); what does not fit is read
    /// from a file in the run folder a batch at a time, with the same result. Default: a quarter
    /// of the memory the process may use (its cgroup's limit if lower), at most half the free.
    #[arg(long, value_parser = tlearn::cli::byte_size)]
    max_memory: Option<u64>,
    /// Grad-CAM overlays in the test report for the N most confident mistakes and N/2 most
    /// confident right answers (0: none).
    #[arg(long, default_value_t = 8)]
    explain: usize,
    #[command(flatten)]
    ort: tlearn::cli::OrtArgs,
}

fn augmentation(a: &Args) -> Option<Augment> {
    let mut g = if a.augment { Augment::classic() } else { Augment::default() };
    let set = |v: Option<f32>, f: &mut f32| {
        if let Some(v) = v {
            *f = v;
        }
    };
    set(a.rotation_range, &mut g.rotation_range);
    set(a.width_shift_range, &mut g.width_shift_range);
    set(a.height_shift_range, &mut g.height_shift_range);
    set(a.shear_range, &mut g.shear_range);
    set(a.zoom_range, &mut g.zoom_range);
    g.horizontal_flip |= a.horizontal_flip;
    g.vertical_flip |= a.vertical_flip;
    g.rot90 |= a.rot90;
    g.brightness_range = a.brightness_range.or(g.brightness_range);
    set(a.contrast_range, &mut g.contrast_range);
    g.fill_mode = a.fill_mode;
    g.cval = a.cval;
    (!g.is_identity()).then_some(g)
}

fn range_pair(s: &str) -> std::result::Result<(f32, f32), String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|x| x.trim().parse::<f32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| e.to_string())?;
    match v[..] {
        [lo, hi] if 0.0 < lo && lo <= hi && hi.is_finite() => Ok((lo, hi)),
        _ => Err(format!("`{s}`: give LO,HI with 0 < LO ≤ HI")),
    }
}

fn contrast(s: &str) -> std::result::Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}`: give C with 0 ≤ C < 1 (factors 1 − C … 1 + C)")),
    }
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
    tlearn::augment::preview(img, &aug, input, a.interpolation, a.seed, &a.preview_out)?;
    tlearn::outln!("→ {}", a.preview_out.display());
    Ok(())
}

fn run(a: Args) -> Result<()> {
    let augment = augmentation(&a);
    if let Some(img) = &a.preview {
        return preview(&a, img, augment);
    }
    let data = a.data.clone().context("give the dataset with --data")?;
    let optimizer = a.optimizer.build(a.lr, a.momentum);
    let run = match &a.run {
        Some(r) => r.clone(),
        None => finetune::default_run_name(&a.model, &a.runs)?,
    };
    let rescale = finetune::rescale_for(a.rescale, &a.model)?;
    let cfg = FinetuneConfig {
        model: a.model.clone(),
        data: data.clone(),
        run_dir: a.runs.join(&run),
        fit: tlearn::cli::fit_config((a.epochs, a.batch, a.seed), optimizer, &a.lr_schedule, &a.reg)?,
        trainable: a.trainable.clone(),
        lr_base: a.lr_base,
        relabel: a.relabel,
        patience: a.patience,
        include_validation: a.include_validation,
        cache_trunk: a.cache_trunk,
        rescale,
        interpolation: a.interpolation,
        augment,
        tta: a.tta.clone(),
        max_pixels: tlearn::imageio::DEFAULT_MAX_PIXELS,
        max_memory: a.max_memory,
        session: a.ort.session(),
        resume: Resume::from_flags(a.restart, a.resume, finetune::RESUME),
    };
    let term = Terminal::default();
    let done =
        finetune::run(&cfg, &term).with_context(|| format!("training {} on {}", a.model.display(), data.display()))?;
    let info = &done.info;
    let best = info.best_epoch.as_ref().map(|e| e.epoch).unwrap_or(0);
    // Without validation the model is the last epoch's.
    let which = if cfg.include_validation { "last" } else { "best" };
    tlearn::outln!(
        "trained {} of {} parameters, {} epochs in {:.1} s; {which} epoch {best} → {}",
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
            session: a.ort.session(),
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
