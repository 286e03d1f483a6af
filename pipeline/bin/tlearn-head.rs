//! tlearn-head: train a classifier head on cached features with tlearn's training-graph compiler.

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use tlearn::imageio::View;
use tlearn::run::{self, RunInfo};
use tlearn::runtime::{Device, SessionOptions};
use tlearn::train::head::{HeadSpec, Pool};
use tlearn::train::{FitConfig, Trainer};

#[derive(Parser)]
#[command(version, about = "Train Dense(units, relu) → Dropout → Dense(sigmoid|softmax) on cached features")]
struct Args {
    /// Feature folder written by tlearn-extract (features/<dataset>/<backbone>-<size>).
    #[arg(long)]
    features: PathBuf,
    /// Run name: outputs go to <runs>/<run>/.
    #[arg(long, default_value = "demo")]
    run: String,
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    #[arg(long, default_value_t = 256)]
    units: usize,
    /// Hidden dense layers.
    #[arg(long, default_value_t = 1)]
    layers: usize,
    #[arg(long, default_value_t = 0.5)]
    dropout: f32,
    #[arg(long, value_enum, default_value = "flatten")]
    pool: Pool,
    /// Standardise features with the training set's mean and std (frozen, inside the head).
    #[arg(long)]
    standardize: bool,
    #[arg(long, value_enum, default_value = "rmsprop")]
    optimizer: tlearn::cli::OptimizerKind,
    #[arg(long, default_value_t = 2e-5)]
    lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.0)]
    momentum: f64,
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    #[arg(long, default_value_t = 20)]
    batch: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    lr_schedule: tlearn::cli::ScheduleArgs,
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
    /// Intra-op threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Add these cached flipped views of the training images to the training set
    /// (`tlearn-extract --views`); validation uses the plain images.
    #[arg(long, value_enum, value_delimiter = ',')]
    train_views: Vec<View>,
    /// Test-time augmentation: evaluate and score average the probabilities of the plain image and
    /// these views (also built into the deployable model).
    #[arg(long, value_enum, value_delimiter = ',')]
    tta: Vec<View>,
}

fn main() -> std::process::ExitCode {
    tlearn::cli::main(|| run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    let spec =
        HeadSpec { units: a.units, layers: a.layers, dropout: a.dropout, pool: a.pool, standardize: a.standardize };
    let optimizer = a.optimizer.build(a.lr, a.momentum);
    let fit =
        FitConfig { epochs: a.epochs, batch: a.batch, seed: a.seed, optimizer, schedule: a.lr_schedule.schedule() };
    spec.validate()?;
    fit.validate()?;
    let train_sets =
        tlearn::features::load_views(&a.features, "train", &a.train_views).context("loading training features")?;
    let (train_x, train_labels) = tlearn::features::concat_views(&train_sets)?;
    let train = &train_sets[0];
    let val = tlearn::features::load(&a.features, "validation").ok();
    if val.is_none() {
        tracing::warn!("{}: no validation features; validation columns will be empty", a.features.display());
    }
    let classes = train.info.classes.clone();
    let shape = &train.x.shape()[1..];
    let model = tlearn::train::head::build(shape, classes.len(), &spec, a.seed, Some(&train_x))?;
    let dir = a.runs.join(&a.run);
    let opts = SessionOptions { device: a.device, threads: a.threads };
    let mut trainer = Trainer::new(&model, &dir.join(run::HEAD), shape, classes.len(), &opts)?;
    let n_params: usize = trainer.params.iter().map(|p| p.len()).sum();
    let mut layers = vec![shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×")];
    layers.push(format!("{:?}", spec.pool));
    if spec.standardize {
        layers.push("Standardize".into());
    }
    for _ in 0..spec.layers {
        layers.push(format!("Dense({}, relu)", spec.units));
        if spec.dropout > 0.0 {
            layers.push(format!("Dropout({})", spec.dropout));
        }
    }
    layers.push(if classes.len() == 2 {
        "Dense(1, sigmoid)".into()
    } else {
        format!("Dense({}, softmax)", classes.len())
    });
    eprintln!(
        "head: {} ({} parameters); {} train / {} validation samples; {:?}",
        layers.join(" → "),
        tlearn::onnx::summary::thousands(n_params),
        train_labels.len(),
        val.as_ref().map(|v| v.labels.len()).unwrap_or(0),
        fit.optimizer,
    );
    let empty = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[0]));
    let (vx, vl) = val.as_ref().map(|v| (&v.x, v.labels.as_slice())).unwrap_or((&empty, &[]));
    let t = std::time::Instant::now();
    let pb = tlearn::cli::progress(fit.epochs as u64, "epochs");
    let history = trainer.fit(&train_x, &train_labels, vx, vl, &fit, |e| {
        pb.suspend(|| {
            println!(
                "epoch {:>3}/{}  loss {:.4}  acc {:.4}  val_loss {:.4}  val_acc {:.4}  ({:.2} s)",
                e.epoch, fit.epochs, e.loss, e.accuracy, e.val_loss, e.val_accuracy, e.seconds
            )
        });
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    let trained = trainer.export();
    let bytes = tlearn::onnx::encode_model(&trained);
    tlearn::fsutil::write_bytes_atomic(&dir.join(run::HEAD), &bytes)?;
    run::write_history_csv(&dir.join(run::HISTORY_CSV), &history)?;
    let title = format!("{} on {} — {}", a.run, train.info.backbone, a.features.display());
    if let Err(e) = tlearn::plot::history(&dir.join(run::HISTORY_PNG), &title, &history) {
        tracing::warn!("history plot not written: {e}");
    }
    let info = RunInfo {
        name: a.run.clone(),
        features_dir: a.features.clone(),
        features: train.info.clone(),
        validation_npy_sha256: val.as_ref().map(|v| v.info.npy_sha256.clone()),
        head: spec,
        fit,
        loss: trainer.train.loss,
        classes,
        head_sha256: tlearn::fsutil::sha256_bytes(&bytes),
        final_epoch: history.last().cloned(),
        train_seconds: secs,
        train_views: train_sets.iter().skip(1).map(|f| f.info.view).collect(),
        tta: a.tta.iter().copied().filter(|v| *v != View::Identity).collect(),
        tlearn_version: env!("CARGO_PKG_VERSION").into(),
    };
    tlearn::fsutil::write_json(&tlearn::fsutil::sidecar_path(&dir.join(run::HEAD)), &info)?;
    println!("trained in {secs:.1} s → {}", dir.join(run::HEAD).display());
    Ok(())
}
