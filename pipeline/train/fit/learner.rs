//! The one fit driver every training loop runs on (burn's `Learner`): restore from a checkpoint
//! and replay its history, per-epoch checkpoints, the last and best models as files, early
//! stopping, progress — around [`Trainer::fit_with`], which owns the epochs themselves (shuffles,
//! schedules, steps, validation).

use super::checkpoint::{self, BestSoFar, Resume};
use super::config::FitConfig;
use super::data::BatchSource;
use super::state::FitState;
use super::stopping::{BestModel, EarlyStopping};
use super::trainer::Trainer;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::history::Epoch;
use crate::onnx::{self, proto::ModelProto};
use crate::params::Checked;
use crate::progress::Sink;
use std::path::{Path, PathBuf};

/// The model after the last epoch, and the best one (lowest validation loss; the latest without
/// validation), written to a run folder each epoch.
pub const LAST: &str = "last.onnx";
pub const BEST: &str = "best.onnx";

/// Where a fit's checkpoint lives and what it must match to be continued.
#[derive(Clone, Debug)]
pub struct Checkpointing {
    pub path: PathBuf,
    /// The run's settings and data fingerprint (see [`checkpoint::comparable`]).
    pub config: serde_json::Value,
    pub resume: Resume,
}

/// See [`FitOptions::wrap`].
pub type Wrap = Box<dyn Fn(&ModelProto) -> ModelProto>;

/// How a fit runs beyond its hyper-parameters.
pub struct FitOptions {
    pub fit: Checked<FitConfig>,
    /// Checkpoint every epoch (and continue from an earlier one) when set.
    pub checkpoint: Option<Checkpointing>,
    /// Write [`LAST`] and [`BEST`] into this folder every epoch, and keep the best model.
    pub models: Option<PathBuf>,
    /// Stop after this many epochs without a better validation loss.
    pub patience: Option<usize>,
    /// What [`LAST`] and [`BEST`] hold, made from the trained model (a trunk's rest merged back
    /// into its whole net); None: the trained model itself. The checkpoint always holds the
    /// trained model.
    pub wrap: Option<Wrap>,
}

/// What a fit produced.
pub struct Fitted {
    pub history: Vec<Epoch>,
    /// The best epoch, and its model when [`FitOptions::models`] is set.
    pub best: Option<(Epoch, Option<ModelProto>)>,
}

/// The best epoch so far, as the loop tracks it.
#[derive(Default)]
struct Best {
    epoch: Option<Epoch>,
    model: Option<ModelProto>,
    since: usize,
    sha256: Option<String>,
}

/// Counts steps on the sink's meter as batches are drawn.
struct Counted<'a> {
    data: &'a dyn BatchSource,
    meter: &'a dyn crate::progress::Meter,
}

impl BatchSource for Counted<'_> {
    fn labels(&self) -> &[usize] {
        self.data.labels()
    }
    fn batch(&self, idx: &[usize], rng: &mut rand_chacha::ChaCha8Rng) -> Result<ndarray::ArrayD<f32>> {
        self.meter.inc(1);
        self.data.batch(idx, rng)
    }
}

/// Fit `tr` on `data`, validating on `val`, as `o` says; every finished (or replayed) epoch goes
/// to `sink`.
pub fn fit(
    tr: &mut Trainer,
    data: &dyn BatchSource,
    val: Option<&dyn BatchSource>,
    o: &FitOptions,
    sink: &dyn Sink,
) -> Result<Fitted> {
    let epochs = o.fit.epochs;
    let choice = BestModel::for_fit(val.is_some_and(|v| !v.labels().is_empty()));
    let stopping = EarlyStopping { patience: o.patience };
    let (resumed, mut best) = restore(tr, o)?;
    for e in resumed.iter().flat_map(|r| &r.history) {
        sink.epoch(e, epochs);
    }
    let done = resumed.as_ref().map(|r| r.epoch).unwrap_or(0);
    // A run that stopped early stays stopped: its rerun ends where it did.
    if let Some(state) = resumed.as_ref().filter(|_| stopping.stops(best.since)) {
        return Ok(Fitted { history: state.history.clone(), best: best.epoch.map(|e| (e, best.model)) });
    }
    let steps = data.labels().len().div_ceil(o.fit.batch) as u64;
    let meter =
        sink.meter(steps * epochs.saturating_sub(done) as u64, "steps", &format!("epoch {}/{epochs}", done + 1));
    let counted = Counted { data, meter: meter.as_ref() };
    let history = tr.fit_with(&counted, val, &o.fit, resumed, |e, tr, fs| {
        sink.epoch(e, epochs);
        meter.set_message(format!("epoch {}/{epochs}", e.epoch + 1));
        warn_if_stuck(&fs.history);
        end_epoch(e, tr, fs, o, choice, &mut best)?;
        Ok(!stopping.stops(best.since))
    })?;
    Ok(Fitted { history, best: best.epoch.map(|e| (e, best.model)) })
}

/// The checkpoint's state, restored into `tr`, and the best epoch it recorded (with its model
/// read back from [`BEST`] and checked when the fit keeps models).
fn restore(tr: &mut Trainer, o: &FitOptions) -> Result<(Option<FitState>, Best)> {
    let Some(c) = &o.checkpoint else { return Ok((None, Best::default())) };
    let Some(r) = checkpoint::restore(&c.path, &c.config, &o.fit.optimizer, tr, c.resume)? else {
        return Ok((None, Best::default()));
    };
    let mut best = Best { since: r.since_best, ..Best::default() };
    if let (Some(_), Some(dir)) = (&r.best_epoch, &o.models) {
        let path = dir.join(BEST);
        let bytes = std::fs::read(&path).at(&path)?;
        check_best(dir, &bytes, r.best_sha256.as_deref())?;
        best.model = Some(onnx::decode_model(&bytes, &path)?);
        best.sha256 = Some(fsutil::sha256_bytes(&bytes));
    }
    best.epoch = r.best_epoch;
    Ok((Some(r.state), best))
}

/// After an epoch: the model files, the best epoch, then the checkpoint.
fn end_epoch(e: &Epoch, tr: &Trainer, fs: &FitState, o: &FitOptions, choice: BestModel, best: &mut Best) -> Result<()> {
    let improved = choice.improves(e, best.epoch.as_ref());
    best.since = if improved { 0 } else { best.since + 1 };
    if improved {
        best.epoch = Some(e.clone());
    }
    if o.models.is_none() && o.checkpoint.is_none() {
        return Ok(());
    }
    let m = tr.export();
    let kept = match &o.wrap {
        Some(f) if o.models.is_some() => Some(f(&m)),
        _ => None,
    };
    if let Some(dir) = &o.models {
        let bytes = onnx::encode_model(kept.as_ref().unwrap_or(&m));
        fsutil::write_bytes_atomic(&dir.join(LAST), &bytes)?;
        if improved {
            fsutil::write_bytes_atomic(&dir.join(BEST), &bytes)?;
            best.sha256 = Some(fsutil::sha256_bytes(&bytes));
        }
    }
    // The checkpoint goes last: a run killed before it resumes from the previous epoch and
    // recomputes this one identically (rewriting last/best the same way).
    if let Some(c) = &o.checkpoint {
        let kept = BestSoFar { epoch: best.epoch.clone(), since: best.since, sha256: best.sha256.clone() };
        checkpoint::save(&c.path, &m, tr, fs, &c.config, kept)?;
    }
    if improved && o.models.is_some() {
        best.model = Some(kept.unwrap_or(m));
    }
    Ok(())
}

/// A training loss that has not moved between the first two epochs usually means inputs on the
/// wrong scale (a model that rescales its input itself, fed pre-scaled pixels) or a learning rate
/// far too small or large: say so, since the fit itself cannot tell.
fn warn_if_stuck(history: &[Epoch]) {
    if let [a, b] = history {
        if (a.loss - b.loss).abs() <= 1e-3 * a.loss.abs().max(1e-3) {
            tracing::warn!(
                "the training loss has not moved ({:.4} → {:.4}): check the input scaling (--rescale) and the learning rate",
                a.loss,
                b.loss
            );
        }
    }
}

/// A resumed run's `best.onnx` must be the model its checkpoint recorded — or, when the run was
/// killed after an improving epoch wrote `last.onnx` and `best.onnx` (the same bytes) but before
/// its checkpoint, that epoch's model, which the resumed run recomputes and rewrites identically.
/// Anything else was put there since and is refused, not taken as the best epoch.
pub fn check_best(run_dir: &Path, best: &[u8], recorded: Option<&str>) -> Result<()> {
    let Some(expected) = recorded else { return Ok(()) };
    let got = fsutil::sha256_bytes(best);
    if got == expected || std::fs::read(run_dir.join(LAST)).is_ok_and(|last| last == best) {
        return Ok(());
    }
    Err(Error::Checksum { path: run_dir.join(BEST), expected: expected.into(), got })
}
