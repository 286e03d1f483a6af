//! The one fit driver every training loop runs on (burn's `Learner`): restore from a checkpoint
//! and replay its history, checkpoints (paced: [`super::pacing`]), the last and best models as
//! files, the history as it grows (`history.csv`, `history.png`), early stopping, progress —
//! around [`Trainer::fit_with`], which owns the epochs themselves (shuffles, schedules, steps,
//! validation).

use super::checkpoint::{self, BestSoFar, Resume};
use super::config::FitConfig;
use super::data::BatchSource;
use super::pacing::{self, Pacing};
use super::state::FitState;
use super::stopping::{BestModel, EarlyStopping};
use super::trainer::Trainer;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::history::{self, Epoch};
use crate::onnx::{self, proto::ModelProto};
use crate::params::Checked;
use crate::progress::Sink;
use std::path::{Path, PathBuf};

/// The model after the last epoch, and the best one (lowest validation loss; the latest without
/// validation), written to a run folder after improving epochs and with checkpoints.
pub const LAST: &str = "last.onnx";
pub const BEST: &str = "best.onnx";

/// Where a fit's checkpoint lives and what it must match to be continued.
#[derive(Clone, Debug)]
pub struct Checkpointing {
    pub path: PathBuf,
    /// The run's settings and data fingerprint (see [`checkpoint::comparable`]).
    pub config: serde_json::Value,
    pub resume: Resume,
    /// At most this share of the fit's time goes to writing checkpoints ([`pacing::SHARE`]).
    pub share: f64,
}

/// See [`FitOptions::wrap`].
pub type Wrap = Box<dyn Fn(&ModelProto) -> ModelProto>;

/// How a fit runs beyond its hyper-parameters.
pub struct FitOptions {
    pub fit: Checked<FitConfig>,
    /// Checkpoint (as often as [`pacing`] allows; continue from an earlier one) when set.
    pub checkpoint: Option<Checkpointing>,
    /// Write [`LAST`] and [`BEST`] into this folder (improving epochs, checkpoints), and keep the
    /// best model.
    pub models: Option<PathBuf>,
    /// Stop after this many epochs without a better validation loss.
    pub patience: Option<usize>,
    /// What [`LAST`] and [`BEST`] hold, made from the trained model (a trunk's rest merged back
    /// into its whole net); None: the trained model itself. The checkpoint always holds the
    /// trained model's parameters.
    pub wrap: Option<Wrap>,
    /// Rewrite the history files here after every epoch, so a long fit can be watched.
    pub live: Option<Live>,
}

/// Where a fit's history goes while it runs: `history.csv` (rewritten atomically every epoch)
/// and `history.png` titled `title` (redrawn as often as keeps drawing within
/// [`pacing::SHARE`] of the fit's time, and after the last epoch).
#[derive(Clone, Debug)]
pub struct Live {
    pub dir: PathBuf,
    pub title: String,
}

/// What a fit produced.
pub struct Fitted {
    pub history: Vec<Epoch>,
    /// The best epoch, and its model when [`FitOptions::models`] is set.
    pub best: Option<(Epoch, Option<ModelProto>)>,
    /// Seconds the epochs restored from a checkpoint took when they ran (before this call), so a
    /// resumed run's time counts them.
    pub restored_seconds: f64,
    /// Every epoch this call ran was followed by its checkpoint and its plot (those the fit
    /// writes): none was put off by their pacing, so the time from one epoch's end to the next
    /// holds a whole epoch's writes.
    pub writes_each_epoch: bool,
}

/// The best epoch so far, as the loop tracks it.
#[derive(Default)]
struct Best {
    epoch: Option<Epoch>,
    model: Option<ModelProto>,
    since: usize,
    sha256: Option<String>,
    /// [`BEST`] on disk is newer than the checkpoint the run continues from (a stop after an
    /// improving epoch that was not checkpointed): no checkpoint may record the older best
    /// until the run reaches that epoch again and rewrites it.
    ahead: bool,
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

/// What the loop writes between epochs and how often: the checkpoint's pacing, the plot's.
struct Writes {
    frozen: String,
    checkpoint: Pacing,
    plot: Pacing,
    /// The size of the last checkpoint written.
    bytes: u64,
}

/// Fit `tr` on `data`, validating on `val`, as `o` says; every finished (or replayed) epoch goes
/// to `sink`, as do an early stop's reason and what the checkpoints cost.
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
    let frozen = o.checkpoint.as_ref().map(|_| checkpoint::frozen_sha256(tr)).unwrap_or_default();
    let (resumed, mut best) = restore(tr, o, &frozen)?;
    for e in resumed.iter().flat_map(|r| &r.history) {
        sink.epoch(e, epochs);
    }
    let done = resumed.as_ref().map(|r| r.epoch).unwrap_or(0);
    let restored_seconds = resumed.iter().flat_map(|r| &r.history).map(|e| e.seconds).sum();
    // A run that stopped early stays stopped: its rerun ends where it did.
    if let Some(state) = resumed.as_ref().filter(|_| stopping.stops(best.since)) {
        note_stop(&stopping, &best, sink);
        let (history, best) = (state.history.clone(), best.epoch.map(|e| (e, best.model)));
        return Ok(Fitted { history, best, restored_seconds, writes_each_epoch: true });
    }
    let steps = data.labels().len().div_ceil(o.fit.batch) as u64;
    let meter =
        sink.meter(steps * epochs.saturating_sub(done) as u64, "steps", &format!("epoch {}/{epochs}", done + 1));
    let counted = Counted { data, meter: meter.as_ref() };
    let share = o.checkpoint.as_ref().map_or(pacing::SHARE, |c| c.share);
    let mut w = Writes { frozen, checkpoint: Pacing::new(share), plot: Pacing::new(pacing::SHARE), bytes: 0 };
    let history = tr.fit_with(&counted, val, &o.fit, resumed, |e, tr, fs| {
        sink.epoch(e, epochs);
        meter.set_message(format!("epoch {}/{epochs}", e.epoch + 1));
        warn_if_stuck(&fs.history);
        let improved = choice.improves(e, best.epoch.as_ref());
        best.since = if improved { 0 } else { best.since + 1 };
        if improved {
            best.epoch = Some(e.clone());
            best.ahead = false;
        }
        let last = e.epoch == epochs || stopping.stops(best.since);
        live(o, fs, last, &mut w.plot)?;
        end_epoch(tr, fs, o, (improved, last), &mut best, &mut w, sink)?;
        Ok(!stopping.stops(best.since))
    })?;
    drop(meter);
    if let (Some(dir), Some(_), None) = (&o.models, &best.epoch, &best.model) {
        return Err(Error::Other(format!(
            "{}: written after epoch {done}, where the run this one continues has its checkpoint, and not \
             reached again; give at least as many --epochs as that run had, or --restart",
            dir.join(BEST).display()
        )));
    }
    if stopping.stops(best.since) {
        note_stop(&stopping, &best, sink);
    }
    if w.checkpoint.writes > 1 {
        sink.note(&format!(
            "checkpoints: written after {} of {} epochs ({:.1} MB each), {:.1} s in all",
            w.checkpoint.writes,
            history.len() - done,
            w.bytes as f64 / 1e6,
            w.checkpoint.spent.as_secs_f64()
        ));
    }
    let ran = history.len() - done;
    let each = |p: &Pacing, writes: bool| !writes || p.writes >= ran;
    let writes_each_epoch = each(&w.checkpoint, o.checkpoint.is_some()) && each(&w.plot, o.live.is_some());
    Ok(Fitted { history, best: best.epoch.map(|e| (e, best.model)), restored_seconds, writes_each_epoch })
}

/// Why the fit stopped early, through the sink.
fn note_stop(stopping: &EarlyStopping, best: &Best, sink: &dyn Sink) {
    if let Some(e) = &best.epoch {
        sink.note(&stopping.why(e, best.since));
    }
}

/// The history files after an epoch, when the fit keeps them live.
fn live(o: &FitOptions, fs: &FitState, last: bool, plot: &mut Pacing) -> Result<()> {
    let Some(l) = &o.live else { return Ok(()) };
    history::write_csv(&l.dir.join(history::HISTORY_CSV), &fs.history)?;
    let t = std::time::Instant::now();
    if plot.due(last, t) {
        if let Err(e) = crate::plot::history(&l.dir.join(history::HISTORY_PNG), &l.title, &fs.history) {
            tracing::warn!("history plot not written: {e}");
        }
        plot.wrote(t.elapsed(), std::time::Instant::now());
    }
    Ok(())
}

/// The checkpoint's state, restored into `tr`, and the best epoch it recorded (with its model
/// read back from [`BEST`] and checked when the fit keeps models).
fn restore(tr: &mut Trainer, o: &FitOptions, frozen: &str) -> Result<(Option<FitState>, Best)> {
    let Some(c) = &o.checkpoint else { return Ok((None, Best::default())) };
    let Some(r) = checkpoint::restore(&c.path, &c.config, frozen, &o.fit.optimizer, tr, c.resume)? else {
        return Ok((None, Best::default()));
    };
    let mut best = Best { since: r.since_best, epoch: r.best_epoch.clone(), ..Best::default() };
    let Some(dir) = &o.models else { return Ok((Some(r.state), best)) };
    let mut newer_best = false;
    if r.best_epoch.is_some() {
        let path = dir.join(BEST);
        let bytes = std::fs::read(&path).at(&path)?;
        check_best(dir, &bytes, r.best_sha256.as_deref())?;
        let sha = fsutil::sha256_bytes(&bytes);
        // A best model newer than the checkpoint (then the same bytes as last.onnx) is not the
        // best epoch the checkpoint knows; the resumed run reaches its epoch again and rewrites it.
        newer_best = r.best_sha256.as_ref().is_some_and(|s| *s != sha);
        best.ahead = newer_best;
        if newer_best {
            best.sha256 = r.best_sha256.clone();
        } else {
            best.model = Some(onnx::decode_model(&bytes, &path)?);
            best.sha256 = Some(sha);
        }
    }
    // The checkpoint may be newer than last.onnx (a stop between the two): last.onnx becomes the
    // model of the epoch the run continues from — unless it is the newer best model's twin,
    // which the resumed run rewrites itself.
    let bytes = onnx::encode_model(&kept_model(tr, o));
    if !newer_best && std::fs::read(dir.join(LAST)).ok().as_deref() != Some(&bytes[..]) {
        fsutil::write_bytes_atomic(&dir.join(LAST), &bytes)?;
    }
    Ok((Some(r.state), best))
}

/// After an epoch (`improved`: the best so far; `last`: the fit's last): the model files and the
/// checkpoint, in an order that keeps what a kill leaves resumable to the same bytes. An improving
/// epoch writes [`LAST`] and [`BEST`] (the same bytes) whenever models are kept, so the best model
/// on disk is either the one the checkpoint records or the same file as [`LAST`] (a resumed run
/// recomputes that epoch and rewrites both alike). The checkpoint is written when the pacing says
/// so (a resumed run recomputes the epochs since); on an epoch that did not improve it goes before
/// [`LAST`], and a resumed run rewrites [`LAST`] from the checkpoint it continues.
fn end_epoch(
    tr: &Trainer,
    fs: &FitState,
    o: &FitOptions,
    (improved, last): (bool, bool),
    best: &mut Best,
    w: &mut Writes,
    sink: &dyn Sink,
) -> Result<()> {
    let t = std::time::Instant::now();
    let due = o.checkpoint.is_some() && !best.ahead && w.checkpoint.due(last, t);
    let models = o.models.as_ref().filter(|_| improved || due);
    let model = models.map(|_| kept_model(tr, o));
    let bytes = model.as_ref().map(onnx::encode_model);
    if let (Some(dir), Some(bytes), true) = (models, &bytes, improved) {
        fsutil::write_bytes_atomic(&dir.join(LAST), bytes)?;
        fsutil::write_bytes_atomic(&dir.join(BEST), bytes)?;
        best.sha256 = Some(fsutil::sha256_bytes(bytes));
    }
    if let (Some(c), true) = (&o.checkpoint, due) {
        let kept = BestSoFar { epoch: best.epoch.clone(), since: best.since, sha256: best.sha256.clone() };
        w.bytes = checkpoint::save(&c.path, tr, fs, &c.config, kept, &w.frozen)?;
    }
    if let (Some(dir), Some(bytes), false) = (models, &bytes, improved) {
        fsutil::write_bytes_atomic(&dir.join(LAST), bytes)?;
    }
    if improved && model.is_some() {
        best.model = model;
    }
    if due {
        let cost = t.elapsed();
        if w.checkpoint.writes == 0 {
            let trained: usize = tr.params.iter().map(|p| p.len()).sum();
            sink.note(&format!(
                "checkpoint: {:.1} MB ({trained} trained parameters and their optimizer slots), written in {:.2} s; \
                 again once {:.0}× that has passed (and after the last epoch)",
                w.bytes as f64 / 1e6,
                cost.as_secs_f64(),
                (1.0 - w.checkpoint.share()) / w.checkpoint.share()
            ));
        }
        w.checkpoint.wrote(cost, std::time::Instant::now());
    }
    Ok(())
}

/// What [`LAST`] and [`BEST`] hold for the trainer's current parameters.
fn kept_model(tr: &Trainer, o: &FitOptions) -> ModelProto {
    let m = tr.export();
    match &o.wrap {
        Some(f) => f(&m),
        None => m,
    }
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
