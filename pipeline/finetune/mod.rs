//! Train or fine-tune a whole ONNX classifier on a class-folder dataset: images decoded once,
//! augmented on the fly, validation every epoch, the best epoch checkpointed (ONNX), early
//! stopping, and a deployable model (preprocessing in-graph) that `tlearn-score` runs.

use crate::augment::Augment;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::history::Epoch;
use crate::imageio::View;
use crate::imageset::ImageSet;
use crate::onnx::{self, cut, proto::ModelProto};
use crate::progress::Sink;
use crate::spill;
use crate::train::checkpoint;
use crate::train::learner::{self, Checkpointing, FitOptions, Live};
use crate::train::{BatchSource, Trainer};

mod lr;
mod model;
mod timing;

pub use crate::runs::finetune::{default_max_memory, FinetuneConfig, FinetuneRecord, TrunkInfo};
use crate::runs::finetune::{load_set, memory_budget};
use crate::runs::ModelInfo;
pub use crate::runs::MODEL;

/// What a rerun does with a finished or interrupted run's checkpoint unless told: continue it with
/// the same settings; other settings are an error naming them (`--restart` starts over).
pub const RESUME: checkpoint::Resume = checkpoint::Resume::Keep;

/// A fine-tune's learning rate when none is given (RMSprop; a pretrained net moves slowly).
pub const DEFAULT_LR: f64 = 1e-4;
/// Parameters, optimizer slots and loop state after the last finished epoch.
pub use crate::train::checkpoint::CHECKPOINT;
pub use crate::train::learner::{BEST, LAST};
pub use lr::{choose_lr, lr_find};
use model::{check_class_names, check_trainable, open_model, trainable_fn};
pub use model::{default_rescale, input_shape, matches, own_rescale};
pub use timing::{measure, Cost};

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

/// What a run produced.
pub struct Finetuned {
    pub info: FinetuneRecord,
    pub history: Vec<Epoch>,
    /// The best epoch's classifier (the net itself, not the deployable wrapper).
    pub best: ModelProto,
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

/// The model's output width must be the class list's (one sigmoid output for two classes), and a
/// deployable model's class names the data's.
fn check_outputs(model: &ModelProto, cfg: &FinetuneConfig, classes: &[String]) -> Result<()> {
    let k_model =
        onnx::graph(model).output.first().and_then(|o| onnx::vi_shape(o).1.last().copied().flatten()).unwrap_or(0)
            as usize;
    let k_data = crate::metrics::output_width(classes.len());
    if k_model != k_data {
        // A deployable model names its classes: both lists say what differs.
        let named = crate::runs::meta(model, &cfg.model)
            .map(|m| format!(" (the model's: {}; the data's: {})", m.classes.join(", "), classes.join(", ")))
            .unwrap_or_default();
        return Err(Error::Shape {
            what: format!("{} outputs vs classes of {}{named}", cfg.model.display(), cfg.data.join("train").display()),
            expected: vec![k_data],
            got: vec![k_model],
        });
    }
    check_class_names(model, cfg, classes)
}

/// `--lr-base`: the conv base's parameters (found on the whole `model`) at that rate.
fn scale_base(trainer: &mut Trainer, cfg: &FinetuneConfig, model: &ModelProto, input: [usize; 3]) -> Result<()> {
    let Some(lr_base) = cfg.lr_base else { return Ok(()) };
    let base = cut::base_initializers(model, &cfg.model, input[0] as u32)?;
    let factor = (lr_base / cfg.fit.optimizer.lr()) as f32;
    trainer.scale_lr(&|p| if base.contains(p) { factor } else { 1.0 });
    let n = trainer.train.params.iter().filter(|p| base.contains(*p)).count();
    tracing::info!("{n} of {} trainable tensors in the conv base, at learning rate {lr_base}", trainer.params.len());
    Ok(())
}

/// What a fine-tune trains, built one way for a run and for its learning-rate sweep: the model,
/// its input and classes, the training (and validation) images, a cached trunk, the trainer.
struct Prepared {
    model: ModelProto,
    input: [usize; 3],
    classes: Vec<String>,
    train: ImageSet,
    val: Option<ImageSet>,
    trunk: Option<crate::trunk::Trunk>,
    trainer: Trainer,
}

/// What [`prepare`] prepares for: the run (its folder checked apart from its inputs, validation
/// images loaded) or a learning-rate sweep (neither).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Run,
    Sweep,
}

/// Open and check the model, load the images, run a cached trunk, build the trainer with the
/// run's trainable set and `--lr-base`.
fn prepare(cfg: &FinetuneConfig, budget: &spill::Budget, purpose: Purpose, sink: &dyn Sink) -> Result<Prepared> {
    let model = open_model(&cfg.model, &cfg.data)?;
    check_trainable(cfg, &model)?;
    let input = input_shape(&model, &cfg.model)?;
    if purpose == Purpose::Run {
        fsutil::check_output_apart(&cfg.run_dir, &[&cfg.data, &cfg.model])?;
    }
    let classes = crate::dataset::training_classes(&cfg.data)?;
    check_outputs(&model, cfg, &classes)?;
    let (fit_on, validate_on): (&[&str], &[&str]) =
        if cfg.include_validation { (&["train", "validation"], &[]) } else { (&["train"], &["validation"]) };
    let mut train = load_set(cfg, fit_on, &classes, input, budget, sink)?.expect("train exists");
    let mut val = match purpose {
        Purpose::Run => load_set(cfg, validate_on, &classes, input, budget, sink)?,
        Purpose::Sweep => None,
    };
    let trainable = trainable_fn(cfg, &model);
    let trunk = cached_trunk(cfg, &model, input, &trainable, (&train, val.as_ref()), budget, sink)?;
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
    Ok(Prepared { model, input, classes, train, val, trunk, trainer })
}

/// The training batches: the trunk's cached outputs, or the images (augmented as the run says).
enum TrainBatches<'a> {
    Images(ImageBatches<'a>),
    Cached(crate::trunk::CachedViews<'a>),
}

impl<'a> TrainBatches<'a> {
    fn of(cfg: &'a FinetuneConfig, train: &'a ImageSet, trunk: Option<&'a crate::trunk::Trunk>) -> Self {
        match trunk {
            Some(trunk) => TrainBatches::Cached(crate::trunk::CachedViews { trunk, labels: &train.labels }),
            None => {
                TrainBatches::Images(ImageBatches { set: train, augment: cfg.augment.as_ref(), rescale: cfg.rescale })
            }
        }
    }
    fn source(&self) -> &dyn BatchSource {
        match self {
            TrainBatches::Images(i) => i,
            TrainBatches::Cached(c) => c,
        }
    }
}

/// Train `cfg.model` on `cfg.data`; every epoch (and any replayed from a checkpoint) goes to `sink`.
pub fn run(cfg: &FinetuneConfig, sink: &dyn Sink) -> Result<Finetuned> {
    check_fit_on(cfg)?;
    let budget = memory_budget(cfg);
    let Prepared { model, input, classes, train, val, mut trunk, mut trainer } =
        prepare(cfg, &budget, Purpose::Run, sink)?;
    let trainable_params: usize = trainer.params.iter().map(|p| p.len()).sum();
    let (n_train, n_val) = (train.labels.len(), val.as_ref().map(|v| v.labels.len()).unwrap_or(0));
    let images = if cfg.include_validation {
        format!("{n_train} train + validation images, no validation pass")
    } else {
        format!("{n_train} train / {n_val} validation images")
    };
    sink.note(&format!("{}: {trainable_params} trainable parameters; {images}", cfg.model.display()));
    let vx = trunk.as_mut().and_then(|t| t.val.take());
    std::fs::create_dir_all(&cfg.run_dir).map_err(|e| Error::Io { path: cfg.run_dir.clone(), err: e })?;
    let t = std::time::Instant::now();
    let _lock = crate::lock::dir(&cfg.run_dir)?;
    let title = format!("{}: {} on {}", crate::runs::name_of(&cfg.run_dir), cfg.model.display(), cfg.data.display());
    let o = FitOptions {
        fit: cfg.fit.clone(),
        checkpoint: Some(Checkpointing {
            path: cfg.run_dir.join(CHECKPOINT),
            config: comparable(cfg, &train, val.as_ref()),
            resume: cfg.resume,
            share: crate::train::pacing::SHARE,
        }),
        models: Some(cfg.run_dir.clone()),
        patience: cfg.patience,
        // best.onnx and last.onnx are whole nets either way.
        wrap: trunk.as_ref().map(|_| {
            let full = model.clone();
            Box::new(move |rest: &ModelProto| crate::trunk::merge(&full, rest))
                as Box<dyn Fn(&ModelProto) -> ModelProto>
        }),
        live: Some(Live { dir: cfg.run_dir.clone(), title: title.clone() }),
    };
    let batches = TrainBatches::of(cfg, &train, trunk.as_ref());
    let cached_val =
        vx.as_ref().zip(val.as_ref()).map(|(rows, v)| crate::trunk::CachedRows { rows, labels: &v.labels });
    let plain_val = val.as_ref().map(|set| ImageBatches { set, augment: None, rescale: cfg.rescale });
    let validation: Option<&dyn BatchSource> = match (&cached_val, &plain_val) {
        (Some(c), _) => Some(c),
        (None, Some(p)) => Some(p),
        (None, None) => None,
    };
    let fitted = learner::fit(&mut trainer, batches.source(), validation, &o, sink)?;
    let Some((best_epoch, Some(best))) = fitted.best else {
        return Err(Error::Other("no epoch finished".into()));
    };
    // A resumed run's time counts the epochs it continues from at the time they took.
    let seconds = t.elapsed().as_secs_f64() + fitted.restored_seconds;
    let done = Done { best_epoch, history: fitted.history, seconds, trainable_params };
    let trunk_info =
        trunk.as_ref().map(|t| TrunkInfo { tensor: t.tensor.clone(), views: t.views.clone(), seconds: t.seconds });
    record(cfg, &model, best, done, trunk_info, classes, input, (&train, val.as_ref()), &title)
}

/// The settings' ranges; then: `include_validation` needs a validation folder, and leaves no validation loss to stop on;
/// so does data without validation images.
fn check_fit_on(cfg: &FinetuneConfig) -> Result<()> {
    cfg.check()?;
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
    title: &str,
) -> Result<Finetuned> {
    let (size, channels) = (input[0] as u32, input[2]);
    let dep = crate::runs::deployable(&best, size, channels, cfg.rescale, cfg.interpolation, &classes, &cfg.tta)?;
    let bytes = onnx::encode_model(&dep);
    crate::runtime::check_loads(&bytes, &cfg.run_dir.join(MODEL))?;
    fsutil::write_bytes_atomic(&cfg.run_dir.join(MODEL), &bytes)?;
    let model_info = ModelInfo {
        head_sha256: None,
        backbone_sha256: None,
        tta: cfg.tta.iter().copied().filter(|v| *v != View::Identity).collect(),
        model_sha256: fsutil::sha256_bytes(&bytes),
    };
    fsutil::write_json(&fsutil::sidecar_path(&cfg.run_dir.join(MODEL)), &model_info)?;
    let info = FinetuneRecord {
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
        model_sha256: model_info.model_sha256,
        best_sha256: Some(fsutil::sha256_file(&cfg.run_dir.join(BEST))?),
        tlearn_version: env!("CARGO_PKG_VERSION").into(),
    };
    crate::history::write_csv(&cfg.run_dir.join(crate::history::HISTORY_CSV), &done.history)?;
    if let Err(e) = crate::plot::history(&cfg.run_dir.join(crate::history::HISTORY_PNG), title, &done.history) {
        tracing::warn!("history plot not written: {e}");
    }
    crate::runs::write_record(&cfg.run_dir, &crate::runs::Record::Finetune(info.clone()))?;
    Ok(Finetuned { info, history: done.history, best })
}

/// The run name when none is given: the model's file stem, checked like a name given by hand —
/// and only while `runs/<stem>` holds no finished run but a fine-tune of this same model (which a
/// rerun continues, or refuses as its checkpoint says): the default never lands on another run.
pub fn default_run_name(model: &std::path::Path, runs: &std::path::Path) -> Result<String> {
    let name = model.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    let bad = |reason: String| Error::Param { name: "run", value: name.clone(), reason };
    fsutil::check_name("run", &name).map_err(|e| match e {
        Error::Param { reason, .. } => bad(format!("{reason} (the model's file name); choose one with --run")),
        e => e,
    })?;
    let Ok(there) = crate::runs::Run::open(&runs.join(&name)) else { return Ok(name) };
    let same_model = |m: &std::path::Path| fsutil::real_path(m) == fsutil::real_path(model);
    match &there.record {
        crate::runs::Record::Finetune(f) if same_model(&f.config.model) => Ok(name),
        _ => Err(bad(format!(
            "the default run (the model's file name) is taken: {} holds another run ({}); name this one with --run NAME",
            there.dir.display(),
            there.describe()
        ))),
    }
}

/// The pixel scale: the one given, else what the model wants ([`default_rescale`]).
pub fn rescale_for(given: Option<f32>, model: &std::path::Path) -> Result<f32> {
    match given {
        Some(r) => Ok(r),
        None => {
            model::check_run_of(model)?;
            Ok(default_rescale(&onnx::load_model(model)?, model))
        }
    }
}
