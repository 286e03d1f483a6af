//! Train or fine-tune a whole ONNX classifier on a class-folder dataset: images decoded once,
//! augmented on the fly, validation every epoch, the best epoch checkpointed (ONNX), early
//! stopping, and a deployable model (preprocessing in-graph) that `tlearn-score` runs.

use crate::error::{Error, Result};
use crate::fsutil;
use crate::history::Epoch;
use crate::imageio::View;
use crate::imageset::ImageSet;
use crate::onnx::{self, proto::ModelProto};
use crate::progress::Sink;
use crate::train::checkpoint;
use crate::train::learner::{self, Checkpointing, FitOptions, Live};
use crate::train::BatchSource;

mod earlier;
pub mod freeze;
mod lr;
mod model;
mod prepared;
pub mod presize;
mod timing;

use crate::runs::finetune::memory_budget;
pub use crate::runs::finetune::{default_max_memory, FinetuneConfig, FinetuneRecord, TrunkInfo};
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
pub use earlier::continuing;
pub use lr::{choose_lr, lr_find};
pub use model::{default_rescale, input_shape, matches, own_rescale};
use prepared::{comparable, prepare, ImageBatches, Prepared, Purpose, TrainBatches};
pub use timing::{measure, Cost};

/// What a run produced.
pub struct Finetuned {
    pub info: FinetuneRecord,
    pub history: Vec<Epoch>,
    /// The best epoch's classifier (the net itself, not the deployable wrapper).
    pub best: ModelProto,
}

/// Train `cfg.model` on `cfg.data`; every epoch (and any replayed from a checkpoint) goes to `sink`.
pub fn run(cfg: &FinetuneConfig, sink: &dyn Sink) -> Result<Finetuned> {
    check_fit_on(cfg)?;
    // With --progressive the run's folder is locked before the early epochs write into it.
    let (start, early_lock) = presize::run(cfg, sink)?.unzip();
    let budget = memory_budget(cfg);
    let Prepared { model, input, classes, train, val, mut trunk, mut trainer } =
        prepare(cfg, &budget, Purpose::Run, None, sink)?;
    let presize_seconds = start.as_ref().map(|s| s.seconds);
    if let Some(s) = start {
        s.apply(&mut trainer)?;
    }
    let trainable_params: usize = trainer.params.iter().map(|p| p.len()).sum();
    let (n_train, n_val) = (train.labels.len(), val.as_ref().map(|v| v.labels.len()).unwrap_or(0));
    let images = if cfg.include_validation {
        format!("{n_train} train + validation images, no validation pass")
    } else {
        format!("{n_train} train / {n_val} validation images")
    };
    sink.note(&format!("{}: {trainable_params} trainable parameters; {images}", cfg.model.display()));
    let vx = trunk.as_mut().and_then(|t| t.val.take());
    let t = std::time::Instant::now();
    let _lock = match early_lock {
        Some(l) => l,
        None => crate::lock::dir(&cfg.run_dir)?,
    };
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
    let seconds = t.elapsed().as_secs_f64() + fitted.restored_seconds + presize_seconds.unwrap_or(0.0);
    let done = Done { best_epoch, history: fitted.history, seconds, presize_seconds, trainable_params };
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

/// What the loop left for [`record`].
struct Done {
    best_epoch: Epoch,
    history: Vec<Epoch>,
    seconds: f64,
    presize_seconds: Option<f64>,
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
        presize_seconds: done.presize_seconds,
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
