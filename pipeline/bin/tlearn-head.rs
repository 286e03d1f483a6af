//! tlearn-head: train a classifier head on cached features (dense, or a classical one from the zoo).

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use tlearn::heads::{self, ClassicalSpec, HeadKind};
use tlearn::imageio::View;
use tlearn::run::{self, RunInfo};
use tlearn::runtime::{Device, SessionOptions};
use tlearn::train::head::{HeadSpec, Pool};
use tlearn::train::FitConfig;

#[derive(Parser)]
#[command(
    version,
    about = "Train a head on cached features: dense (Dense → Dropout → sigmoid|softmax), logistic, svm, rbf, forest or knn"
)]
struct Args {
    /// Feature folder written by tlearn-extract (features/<dataset>/<backbone>-<size>).
    #[arg(long)]
    features: PathBuf,
    /// Run name: outputs go to <runs>/<run>/.
    #[arg(long, default_value = "demo")]
    run: String,
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Which classifier (all save as head.onnx, so evaluate and score treat them alike).
    #[arg(long, value_enum, default_value = "dense")]
    head: HeadKind,
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
    /// Default: on for logistic, svm, rbf and knn; off for dense and forest.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    standardize: Option<bool>,
    /// Classical heads: keep this many principal components (after standardisation).
    #[arg(long)]
    pca: Option<usize>,
    /// svm/rbf: C; logistic: L2 penalty 1/C.
    #[arg(long, default_value_t = 1.0)]
    c: f64,
    /// rbf: γ (default 1 / (features · variance), scikit-learn's "scale").
    #[arg(long)]
    gamma: Option<f64>,
    /// forest: number of trees.
    #[arg(long, default_value_t = 100)]
    trees: usize,
    /// forest: maximum tree depth (default: unlimited).
    #[arg(long)]
    max_depth: Option<u16>,
    /// knn: neighbours.
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// logistic: L-BFGS iterations.
    #[arg(long, default_value_t = 100)]
    max_iterations: u64,
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
    let standardize = a.standardize.unwrap_or(!matches!(a.head, HeadKind::Dense | HeadKind::Forest));
    let spec = HeadSpec { units: a.units, layers: a.layers, dropout: a.dropout, pool: a.pool, standardize };
    let classical = ClassicalSpec {
        pca: a.pca,
        c: a.c,
        gamma: a.gamma,
        trees: a.trees,
        max_depth: a.max_depth,
        k: a.k,
        max_iterations: a.max_iterations,
    };
    let optimizer = a.optimizer.build(a.lr, a.momentum);
    let fit =
        FitConfig { epochs: a.epochs, batch: a.batch, seed: a.seed, optimizer, schedule: a.lr_schedule.schedule() };
    spec.validate()?;
    fit.validate()?;
    classical.validate()?;
    let train_sets =
        tlearn::features::load_views(&a.features, "train", &a.train_views).context("loading training features")?;
    let (train_x, train_labels) = tlearn::features::concat_views(&train_sets)?;
    let train = &train_sets[0];
    let val = tlearn::features::load(&a.features, "validation").ok();
    if val.is_none() {
        tracing::warn!("{}: no validation features; validation columns will be empty", a.features.display());
    }
    let classes = train.info.classes.clone();
    let dir = a.runs.join(&a.run);
    let opts = SessionOptions { device: a.device, threads: a.threads };
    let data = heads::Data {
        x: &train_x,
        y: &train_labels,
        val: val.as_ref().map(|v| (&v.x, v.labels.as_slice())),
        classes: classes.len(),
    };
    let t = std::time::Instant::now();
    let trained = heads::head(a.head, &spec, &classical, &fit, &opts).fit(&data, a.seed)?;
    let secs = t.elapsed().as_secs_f64();
    if a.head != HeadKind::Dense {
        let e = &trained.history[0];
        println!(
            "{}: {} ({} stored numbers)  loss {:.4}  acc {:.4}  val_loss {:.4}  val_acc {:.4}  ({secs:.2} s)",
            a.head.name(),
            trained.describe,
            tlearn::onnx::summary::thousands(trained.params),
            e.loss,
            e.accuracy,
            e.val_loss,
            e.val_accuracy
        );
    }
    let bytes = tlearn::onnx::encode_model(&trained.model);
    tlearn::fsutil::write_bytes_atomic(&dir.join(run::HEAD), &bytes)?;
    let history = &trained.history;
    run::write_history_csv(&dir.join(run::HISTORY_CSV), history)?;
    if history.len() > 1 {
        let title = format!("{} on {} — {}", a.run, train.info.backbone, a.features.display());
        if let Err(e) = tlearn::plot::history(&dir.join(run::HISTORY_PNG), &title, history) {
            tracing::warn!("history plot not written: {e}");
        }
    }
    let info = RunInfo {
        name: a.run.clone(),
        features_dir: a.features.clone(),
        features: train.info.clone(),
        validation_npy_sha256: val.as_ref().map(|v| v.info.npy_sha256.clone()),
        kind: a.head,
        head: spec,
        classical: (a.head != HeadKind::Dense).then_some(classical),
        fit,
        loss: tlearn::train::graph::Loss::for_classes(classes.len()),
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
