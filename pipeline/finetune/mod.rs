//! Train or fine-tune a whole ONNX classifier on a class-folder dataset: images decoded once,
//! augmented on the fly, validation every epoch, the best epoch checkpointed (ONNX), early
//! stopping, and a deployable model (preprocessing in-graph) that `tlearn-score` runs.

use crate::augment::Augment;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::history::Epoch;
use crate::imageio::{Interpolation, View};
use crate::imageset::{self, ImageSet, LoadSpec};
use crate::onnx::{self, cut, proto::ModelProto};
use crate::params::Checked;
use crate::progress::Sink;
use crate::runtime::SessionOptions;
use crate::spill;
use crate::train::checkpoint::{self, Resume};
use crate::train::learner::{self, Checkpointing, FitOptions};
use crate::train::{BatchSource, FitConfig, Trainer};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

mod model;

pub use crate::train::learner::{BEST, LAST};
use model::{check_trainable, open_model, trainable_fn};
pub use model::{default_rescale, input_shape, matches, own_rescale};
pub const MODEL: &str = "model.onnx";
/// Images converted to float and run at a time when a split is predicted.
const PREDICT_CHUNK: usize = 256;
/// Parameters, optimizer slots and loop state after the last finished epoch.
pub use crate::train::checkpoint::CHECKPOINT;

/// Settings of one fine-tuning run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinetuneConfig {
    pub model: PathBuf,
    pub data: PathBuf,
    pub run_dir: PathBuf,
    pub fit: Checked<FitConfig>,
    /// Train only parameters whose names match one of these patterns (`*` = any run of
    /// characters; a pattern without `*` matches as a substring). Empty: all.
    pub trainable: Vec<String>,
    /// The conv base's learning rate when lower than the head's (`fit`'s rate): the base is what
    /// computes the last spatial features ([`cut::base_initializers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_base: Option<f64>,
    /// Stop after this many epochs without a better validation loss.
    pub patience: Option<usize>,
    /// Train on the training and validation images together, with no validation pass (the last
    /// epoch is the model): the final fit, once runs with validation chose the recipe and length.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_validation: bool,
    /// Run the frozen layers before the first trained one once per image and view, and train the
    /// rest on their cached output (`crate::trunk`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_trunk: bool,
    /// Multiply 0..255 pixels by this (Keras' `rescale`, 1/255 for the built-in nets).
    pub rescale: f32,
    pub interpolation: Interpolation,
    pub augment: Option<Augment>,
    /// Test-time augmentation: evaluation and the deployable model average the probabilities of
    /// the plain image and these views. Not a training setting (a rerun with other views reuses
    /// the checkpoint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tta: Vec<View>,
    pub max_pixels: u64,
    /// Bytes the decoded training and validation images and a cached trunk's outputs may hold in
    /// memory together (the test images, loaded after training, get the same again); past it
    /// they are read from a file in the run folder a batch at a time (same batches, same
    /// result). None: [`default_max_memory`].
    #[serde(skip)]
    pub max_memory: Option<u64>,
    #[serde(skip)]
    pub session: SessionOptions,
    /// What to do with an existing `run_dir/checkpoint.onnx`.
    #[serde(skip)]
    pub resume: Resume,
}

/// The settings a checkpoint must share to be continued: the config minus `epochs`, plus a
/// fingerprint of the training and validation images (paths and labels).
fn comparable(cfg: &FinetuneConfig, train: &ImageSet, val: Option<&ImageSet>) -> serde_json::Value {
    let mut v = checkpoint::comparable(serde_json::to_value(cfg).expect("config serialises"));
    if let Some(o) = v.as_object_mut() {
        o.remove("tta");
    }
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for set in std::iter::once(train).chain(val) {
        for (f, l) in set.files.iter().zip(&set.labels) {
            h.update(format!("{}\t{l}\n", f.display()).as_bytes());
        }
        h.update(b"--\n");
    }
    v["data_sha256"] = serde_json::Value::String(hex::encode(h.finalize()));
    v
}

/// The run record `runs/<run>/model.onnx.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinetuneInfo {
    pub config: FinetuneConfig,
    pub classes: Vec<String>,
    pub input: [usize; 3],
    pub trainable_params: usize,
    pub total_params: usize,
    pub best_epoch: Option<Epoch>,
    pub epochs_run: usize,
    pub train_seconds: f64,
    pub train_images: usize,
    /// Files left out of training (path as `fsutil::path_text`, reason).
    pub skipped: Vec<(String, String)>,
    /// The cached trunk, when the run used one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk: Option<TrunkInfo>,
    pub model_sha256: String,
    pub tlearn_version: String,
}

/// Where a cached trunk ended and what computing it took.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrunkInfo {
    pub tensor: String,
    pub views: Vec<View>,
    pub seconds: f64,
}

/// What a run produced.
pub struct Finetuned {
    pub info: FinetuneInfo,
    pub history: Vec<Epoch>,
    /// The best epoch's classifier (the net itself, not the deployable wrapper).
    pub best: ModelProto,
}

/// A quarter of the memory the process may use (its cgroup's limit where that is lower than the
/// machine's), at most half of what is available now; 1 GB where the platform does not say.
pub fn default_max_memory() -> u64 {
    let quarter = crate::memory::limit_bytes().map(|b| b / 4);
    let half_free = crate::memory::available_bytes().map(|b| b / 2);
    match (quarter, half_free) {
        (Some(q), Some(h)) => q.min(h),
        (q, h) => q.or(h).unwrap_or(1 << 30),
    }
}

/// The memory budget of a run's images and cached trunk: `--max-memory`, spilling into the run
/// folder.
fn memory_budget(cfg: &FinetuneConfig) -> spill::Budget {
    spill::Budget::new(cfg.max_memory.unwrap_or_else(default_max_memory), &cfg.run_dir)
}

/// The images of `splits` (those that exist and, but for `train`, hold images) as one set; None
/// when there are none.
fn load_set(
    cfg: &FinetuneConfig,
    splits: &[&str],
    classes: &[String],
    input: [usize; 3],
    budget: &spill::Budget,
    sink: &dyn Sink,
) -> Result<Option<ImageSet>> {
    let present: Vec<&str> = splits
        .iter()
        .copied()
        .filter(|&split| {
            let dir = cfg.data.join(split);
            if !dir.is_dir() {
                return false;
            }
            let empty = split != "train" && crate::dataset::holds_no_image(&dir);
            if empty {
                tracing::warn!("{}: no images; training without it", dir.display());
            }
            !empty
        })
        .collect();
    if present.is_empty() {
        return Ok(None);
    }
    let spec = LoadSpec {
        size: (input[0] as u32, input[1] as u32),
        channels: input[2],
        interpolation: cfg.interpolation,
        max_pixels: cfg.max_pixels,
    };
    imageset::load_splits(&cfg.data, &present, classes, &spec, budget, sink).map(Some)
}

/// A split's images as batches: scaled, augmented on the fly when the run augments.
struct ImageBatches<'a> {
    set: &'a ImageSet,
    augment: Option<&'a Augment>,
    rescale: f32,
}

impl BatchSource for ImageBatches<'_> {
    fn labels(&self) -> &[usize] {
        &self.set.labels
    }
    fn batch(&self, idx: &[usize], rng: &mut rand_chacha::ChaCha8Rng) -> Result<ndarray::ArrayD<f32>> {
        match self.augment {
            Some(a) => self.set.with_rows(idx, |x, idx| a.batch(x, idx, self.rescale, rng)),
            None => self.set.batch_f32(idx, self.rescale),
        }
    }
}

/// The model's output width must be the class list's (one sigmoid output for two classes).
fn check_outputs(model: &ModelProto, cfg: &FinetuneConfig, classes: &[String]) -> Result<()> {
    let k_model =
        onnx::graph(model).output.first().and_then(|o| onnx::vi_shape(o).1.last().copied().flatten()).unwrap_or(0)
            as usize;
    let k_data = crate::metrics::output_width(classes.len());
    if k_model != k_data {
        return Err(Error::Shape {
            what: format!("{} outputs vs classes of {}", cfg.model.display(), cfg.data.join("train").display()),
            expected: vec![k_data],
            got: vec![k_model],
        });
    }
    Ok(())
}

/// `--lr-base`: the conv base's parameters (found on the whole `model`) at that rate.
fn scale_base(trainer: &mut Trainer, cfg: &FinetuneConfig, model: &ModelProto, input: [usize; 3]) -> Result<()> {
    let Some(lr_base) = cfg.lr_base else { return Ok(()) };
    if !(lr_base > 0.0 && lr_base.is_finite()) {
        return Err(Error::Param { name: "lr_base", value: lr_base.to_string(), reason: "must be positive".into() });
    }
    let base = cut::base_initializers(model, &cfg.model, input[0] as u32)?;
    let factor = (lr_base / cfg.fit.optimizer.lr()) as f32;
    trainer.scale_lr(&|p| if base.contains(p) { factor } else { 1.0 });
    let n = trainer.train.params.iter().filter(|p| base.contains(*p)).count();
    tracing::info!("{n} of {} trainable tensors in the conv base, at learning rate {lr_base}", trainer.params.len());
    Ok(())
}

/// Train `cfg.model` on `cfg.data`; every epoch (and any replayed from a checkpoint) goes to `sink`.
pub fn run(cfg: &FinetuneConfig, sink: &dyn Sink) -> Result<Finetuned> {
    check_fit_on(cfg)?;
    let model = open_model(&cfg.model)?;
    check_trainable(cfg, &model)?;
    let input = input_shape(&model, &cfg.model)?;
    fsutil::check_output_apart(&cfg.run_dir, &[&cfg.data, &cfg.model])?;
    let classes = crate::dataset::training_classes(&cfg.data)?;
    check_outputs(&model, cfg, &classes)?;
    let budget = memory_budget(cfg);
    let (fit_on, validate_on): (&[&str], &[&str]) =
        if cfg.include_validation { (&["train", "validation"], &[]) } else { (&["train"], &["validation"]) };
    let mut train = load_set(cfg, fit_on, &classes, input, &budget, sink)?.expect("train exists");
    let mut val = load_set(cfg, validate_on, &classes, input, &budget, sink)?;
    let trainable = trainable_fn(cfg, &model);
    let mut trunk = cached_trunk(cfg, &model, input, &trainable, (&train, val.as_ref()), &budget, sink)?;
    if trunk.is_some() {
        // Training reads the trunk's outputs from here on, never the images.
        train.release_pixels();
        val.iter_mut().for_each(ImageSet::release_pixels);
    }
    let (net, shape) = match &trunk {
        Some(t) => (&t.rest, t.shape.clone()),
        None => (&model, input.to_vec()),
    };
    let mut trainer = Trainer::with_trainable(net, &cfg.model, &shape, classes.len(), &cfg.session, &trainable)?;
    scale_base(&mut trainer, cfg, &model, input)?;
    if let Some(t) = &trunk {
        check_trunk(t, &trainer, cfg)?;
    }
    let trainable_params: usize = trainer.params.iter().map(|p| p.len()).sum();
    let (n_train, n_val) = (train.labels.len(), val.as_ref().map(|v| v.labels.len()).unwrap_or(0));
    let images = if cfg.include_validation {
        format!("{n_train} train + validation images, no validation pass")
    } else {
        format!("{n_train} train / {n_val} validation images")
    };
    tracing::info!("{}: {trainable_params} trainable parameters; {images}", cfg.model.display());
    let vx = trunk.as_mut().and_then(|t| t.val.take());
    std::fs::create_dir_all(&cfg.run_dir).map_err(|e| Error::Io { path: cfg.run_dir.clone(), err: e })?;
    let t = std::time::Instant::now();
    let _lock = crate::lock::dir(&cfg.run_dir)?;
    let o = FitOptions {
        fit: cfg.fit.clone(),
        checkpoint: Some(Checkpointing {
            path: cfg.run_dir.join(CHECKPOINT),
            config: comparable(cfg, &train, val.as_ref()),
            resume: cfg.resume,
        }),
        models: Some(cfg.run_dir.clone()),
        patience: cfg.patience,
        // best.onnx and last.onnx are whole nets either way.
        wrap: trunk.as_ref().map(|_| {
            let full = model.clone();
            Box::new(move |rest: &ModelProto| crate::trunk::merge(&full, rest))
                as Box<dyn Fn(&ModelProto) -> ModelProto>
        }),
    };
    let images = ImageBatches { set: &train, augment: cfg.augment.as_ref(), rescale: cfg.rescale };
    let cached = trunk.as_ref().map(|t| crate::trunk::CachedViews { trunk: t, labels: &train.labels });
    let data: &dyn BatchSource = match &cached {
        Some(c) => c,
        None => &images,
    };
    let cached_val =
        vx.as_ref().zip(val.as_ref()).map(|(rows, v)| crate::trunk::CachedRows { rows, labels: &v.labels });
    let plain_val = val.as_ref().map(|set| ImageBatches { set, augment: None, rescale: cfg.rescale });
    let validation: Option<&dyn BatchSource> = match (&cached_val, &plain_val) {
        (Some(c), _) => Some(c),
        (None, Some(p)) => Some(p),
        (None, None) => None,
    };
    let fitted = learner::fit(&mut trainer, data, validation, &o, sink)?;
    let Some((best_epoch, Some(best))) = fitted.best else {
        return Err(Error::Other("no epoch finished".into()));
    };
    let done = Done { best_epoch, history: fitted.history, seconds: t.elapsed().as_secs_f64(), trainable_params };
    let trunk_info =
        trunk.as_ref().map(|t| TrunkInfo { tensor: t.tensor.clone(), views: t.views.clone(), seconds: t.seconds });
    record(cfg, &model, best, done, trunk_info, classes, input, (&train, val.as_ref()))
}

/// `include_validation` needs a validation folder, and leaves no validation loss to stop on;
/// so does data without validation images.
fn check_fit_on(cfg: &FinetuneConfig) -> Result<()> {
    let val = cfg.data.join("validation");
    let no_val = !val.is_dir() || crate::dataset::holds_no_image(&val);
    if let (Some(p), false, true) = (cfg.patience, cfg.include_validation, no_val) {
        return Err(Error::Param {
            name: "patience",
            value: p.to_string(),
            reason: format!(
                "{} holds no validation images, so there is no validation loss to wait on; \
                 drop --patience or split the data with a validation part",
                val.display()
            ),
        });
    }
    if !cfg.include_validation {
        return Ok(());
    }
    if let Some(p) = cfg.patience {
        return Err(Error::Param {
            name: "patience",
            value: p.to_string(),
            reason: "training on the validation images leaves no validation loss to wait on".into(),
        });
    }
    if no_val {
        return Err(Error::BadData { path: val, reason: "no validation images to train on".into() });
    }
    Ok(())
}

/// `--cache-trunk`: the frozen trunk run over the images (None without the option).
fn cached_trunk(
    cfg: &FinetuneConfig,
    model: &ModelProto,
    input: [usize; 3],
    trainable: &dyn Fn(&str) -> bool,
    (train, val): (&ImageSet, Option<&ImageSet>),
    budget: &spill::Budget,
    sink: &dyn Sink,
) -> Result<Option<crate::trunk::Trunk>> {
    if !cfg.cache_trunk {
        return Ok(None);
    }
    let spec = crate::trunk::TrunkSpec {
        model,
        path: &cfg.model,
        input,
        rescale: cfg.rescale,
        augment: cfg.augment.as_ref(),
        session: &cfg.session,
    };
    crate::trunk::build(&spec, trainable, (train, val), budget, sink).map(Some)
}

/// The rest after a trunk trains every parameter the run selected: the compiler never trains the
/// constants right after its input (they look like input normalisation).
fn check_trunk(t: &crate::trunk::Trunk, trainer: &Trainer, cfg: &FinetuneConfig) -> Result<()> {
    if t.trained == trainer.params.len() {
        return Ok(());
    }
    Err(Error::BadModel {
        path: cfg.model.clone(),
        reason: format!(
            "--cache-trunk: only {} of the {} parameter tensors after `{}` would train; run without it",
            trainer.params.len(),
            t.trained,
            t.tensor
        ),
    })
}

/// What the loop left for [`record`].
struct Done {
    best_epoch: Epoch,
    history: Vec<Epoch>,
    seconds: f64,
    trainable_params: usize,
}

/// Write the deployable model of `best` and the run record; the run's result.
#[allow(clippy::too_many_arguments)]
fn record(
    cfg: &FinetuneConfig,
    model: &ModelProto,
    best: ModelProto,
    done: Done,
    trunk: Option<TrunkInfo>,
    classes: Vec<String>,
    input: [usize; 3],
    (train, val): (&ImageSet, Option<&ImageSet>),
) -> Result<Finetuned> {
    let (size, channels) = (input[0] as u32, input[2]);
    let dep = crate::score::deployable(&best, size, channels, cfg.rescale, cfg.interpolation, &classes, &cfg.tta)?;
    let bytes = onnx::encode_model(&dep);
    crate::runtime::check_loads(&bytes, &cfg.run_dir.join(MODEL))?;
    fsutil::write_bytes_atomic(&cfg.run_dir.join(MODEL), &bytes)?;
    let info = FinetuneInfo {
        config: cfg.clone(),
        classes,
        input,
        trainable_params: done.trainable_params,
        total_params: onnx::cut::param_count(model),
        best_epoch: Some(done.best_epoch),
        epochs_run: done.history.len(),
        train_seconds: done.seconds,
        train_images: train.labels.len(),
        skipped: train
            .skipped
            .iter()
            .chain(val.iter().flat_map(|v| v.skipped.iter()))
            .map(|(p, why)| (fsutil::path_text(p), why.clone()))
            .collect(),
        trunk,
        model_sha256: fsutil::sha256_bytes(&bytes),
        tlearn_version: env!("CARGO_PKG_VERSION").into(),
    };
    fsutil::write_json(&fsutil::sidecar_path(&cfg.run_dir.join(MODEL)), &info)?;
    crate::history::write_csv(&cfg.run_dir.join(crate::history::HISTORY_CSV), &done.history)?;
    Ok(Finetuned { info, history: done.history, best })
}

/// Probabilities of `model` (a net, not the deployable wrapper) on a split of `cfg.data`, loaded
/// as for training (size, channels, interpolation, rescale); with `cfg.tta`, the mean over the
/// plain images and those views.
pub fn predict_split(
    model: &ModelProto,
    cfg: &FinetuneConfig,
    split: &str,
    classes: &[String],
    sink: &dyn Sink,
) -> Result<(ndarray::ArrayD<f32>, ImageSet)> {
    let input = input_shape(model, &cfg.model)?;
    let set = load_set(cfg, &[split], classes, input, &memory_budget(cfg), sink)?
        .ok_or_else(|| Error::BadData { path: cfg.data.join(split), reason: "no such split folder".into() })?;
    let mut net = crate::train::Predictor::open(&onnx::encode_model(model), &cfg.model, &cfg.session)?;
    let views: Vec<View> = cfg.tta.iter().copied().filter(|v| *v != View::Identity).collect();
    // A chunk of images at a time in float: never a float copy of the whole split.
    let idx: Vec<usize> = (0..set.len()).collect();
    let mut parts = vec![];
    for chunk in idx.chunks(PREDICT_CHUNK) {
        let x = set.batch_f32(chunk, cfg.rescale)?;
        let mut probs = net.run(x.view(), PREDICT_CHUNK)?;
        for v in &views {
            probs += &net.run(v.of_batch(x.view()).view(), PREDICT_CHUNK)?;
        }
        probs /= (views.len() + 1) as f32;
        parts.push(probs);
    }
    let parts: Vec<_> = parts.iter().map(|p| p.view()).collect();
    let probs = ndarray::concatenate(ndarray::Axis(0), &parts).map_err(|e| Error::Other(format!("{split}: {e}")))?;
    Ok((probs, set))
}
