//! How long a fit takes on the machine it runs on, as the planner of `tlearn fit --budget` needs
//! it: the learner rehearsed for a few epochs of a few batches of the run's own data, with
//! everything an epoch does (batches drawn and augmented, steps, validation, the device copy
//! synced, models, checkpoints and history written). The time between epochs' ends gives an
//! epoch's cost; what comes before the first is set-up. The trainer's parameters are as they
//! were afterwards.

use super::config::FitConfig;
use super::data::BatchSource;
use super::learner::{self, Checkpointing, FitOptions, Live};
use super::state::State;
use super::trainer::Trainer;
use crate::error::{Error, Result};
use crate::history::Epoch;
use crate::params::ParamGuard;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// The rehearsal: epochs, and training batches an epoch.
const EPOCHS: usize = 4;
const BATCHES: usize = 3;

/// What a fit costs here, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepTimes {
    /// One training step of `cfg.batch` samples: the batch drawn and augmented, forward,
    /// backward, update.
    pub step: f64,
    /// One sample predicted (no dropout, no update).
    pub predict: f64,
    /// An epoch's cost besides its steps and its validation: the device copy synced, the models
    /// and history written (checkpoints are paced apart: at most [`super::pacing::SHARE`]).
    pub between: f64,
    /// The rehearsal wrote its checkpoint and plot after every epoch, so `between` holds a whole
    /// epoch's writes (a fit writes them at most once an epoch); else they were paced apart and
    /// only their share bounds them.
    pub writes_each_epoch: bool,
    /// What a fit pays once before its first epoch ends, beyond that epoch's steps and
    /// validation: the training session opened, the first steps' allocations.
    pub warm_up: f64,
}

impl Trainer {
    /// Rehearse the fit `cfg` describes on batches of `data` (validating on one batch of `val`)
    /// in `scratch`, a folder the caller removes.
    pub fn time_epochs(
        &mut self,
        data: &dyn BatchSource,
        val: Option<&dyn BatchSource>,
        cfg: &FitConfig,
        scratch: &Path,
    ) -> Result<StepTimes> {
        if data.labels().is_empty() {
            return Err(Error::Other("timing a fit needs training samples".into()));
        }
        let saved = self.params.clone();
        let timed = self.rehearsal(data, val, cfg, scratch);
        self.params = saved;
        self.resident = None;
        timed
    }

    fn rehearsal(
        &mut self,
        data: &dyn BatchSource,
        val: Option<&dyn BatchSource>,
        cfg: &FitConfig,
        scratch: &Path,
    ) -> Result<StepTimes> {
        let val = val.filter(|v| !v.labels().is_empty()).map(|v| Subset::of(v, cfg.batch, cfg.seed));
        let ends = Ends::default();
        let t = Instant::now();
        let fitted = self.rehearse(data, val.as_ref().map(|v| v as &dyn BatchSource), cfg, scratch, &ends)?;
        let ends: Vec<f64> = ends.0.into_inner().unwrap_or_default().iter().map(|e| (*e - t).as_secs_f64()).collect();
        // The device copy as the loop's validation reads it.
        self.start(&State::new(cfg.optimizer.clone(), &self.params))?;
        let predict = match &val {
            Some(v) => self.time_predict(v)?,
            None => 0.0,
        };
        let validated = val.as_ref().map_or(0, |v| v.labels.len()) as f64 * predict;
        Ok(costs(&fitted.history, &ends, (validated, predict), fitted.writes_each_epoch))
    }

    /// `EPOCHS` epochs of `BATCHES` batches of `data` as the learner runs them, writing into
    /// `dir`; each epoch's end goes to `ends`.
    fn rehearse(
        &mut self,
        data: &dyn BatchSource,
        val: Option<&dyn BatchSource>,
        cfg: &FitConfig,
        dir: &Path,
        ends: &Ends,
    ) -> Result<learner::Fitted> {
        let subset = Subset::of(data, BATCHES * cfg.batch, cfg.seed);
        let fit = FitConfig { epochs: EPOCHS, class_weight: None, ..cfg.clone() }.check()?;
        let o = FitOptions {
            fit,
            checkpoint: Some(Checkpointing {
                path: dir.join(super::checkpoint::CHECKPOINT),
                config: serde_json::json!({ "rehearsal": BATCHES }),
                resume: super::checkpoint::Resume::Restart,
                share: super::pacing::SHARE,
            }),
            models: Some(dir.to_path_buf()),
            patience: None,
            wrap: None,
            live: Some(Live { dir: dir.to_path_buf(), title: "rehearsal".into() }),
        };
        learner::fit(self, &subset, val, &o, ends)
    }

    /// Seconds per sample of `v` predicted (the median of three runs after an untimed one).
    fn time_predict(&mut self, v: &dyn BatchSource) -> Result<f64> {
        let mut seconds = vec![];
        for i in 0..4 {
            let t = Instant::now();
            self.evaluate(v, 256)?;
            if i > 0 {
                seconds.push(t.elapsed().as_secs_f64() / v.labels().len() as f64);
            }
        }
        Ok(median(seconds))
    }
}

/// The costs from a rehearsal's `history`, its epochs' ends (seconds from its start), and what
/// its validation took (`validated`, at `predict` per sample), and whether it wrote after every
/// epoch.
fn costs(history: &[Epoch], ends: &[f64], (validated, predict): (f64, f64), writes_each_epoch: bool) -> StepTimes {
    // The epochs after the first: their steps (what the epoch took less its validation, at
    // least half of it: a prediction timed apart may read slow), and from one end to the next
    // (steps, validation, the writes between).
    let steady = &history[1.min(history.len())..];
    let steps: Vec<f64> =
        steady.iter().map(|e| (e.seconds - validated).max(e.seconds / 2.0) / BATCHES as f64).collect();
    let step = if steps.is_empty() { 0.0 } else { median(steps) };
    let gaps: Vec<f64> = ends.windows(2).map(|w| w[1] - w[0]).collect();
    let epoch = if gaps.is_empty() { history.iter().map(|e| e.seconds).sum() } else { median(gaps) };
    let inside = BATCHES as f64 * step + validated;
    let warm_up = ends.first().map_or(0.0, |first| (first - inside).max(0.0));
    StepTimes { step, predict, between: (epoch - inside).max(0.0), writes_each_epoch, warm_up }
}

/// Samples `idx` of `data`, drawn (and augmented) as the run draws them, every step.
struct Subset<'a> {
    data: &'a dyn BatchSource,
    idx: Vec<usize>,
    labels: Vec<usize>,
}

impl<'a> Subset<'a> {
    /// `n` samples of `data`, shuffled with `seed` (repeated when it has fewer).
    fn of(data: &'a dyn BatchSource, n: usize, seed: u64) -> Subset<'a> {
        let mut order: Vec<usize> = (0..data.labels().len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        let idx: Vec<usize> = order.iter().copied().cycle().take(n).collect();
        let labels = idx.iter().map(|&i| data.labels()[i]).collect();
        Subset { data, idx, labels }
    }
}

impl BatchSource for Subset<'_> {
    fn labels(&self) -> &[usize] {
        &self.labels
    }
    fn batch(&self, idx: &[usize], rng: &mut rand_chacha::ChaCha8Rng) -> Result<ndarray::ArrayD<f32>> {
        let mapped: Vec<usize> = idx.iter().map(|&i| self.idx[i]).collect();
        self.data.batch(&mapped, rng)
    }
}

/// A sink that notes when each epoch ends and shows nothing.
#[derive(Default)]
struct Ends(Mutex<Vec<Instant>>);

impl crate::progress::Sink for Ends {
    fn meter(&self, len: u64, unit: &str, message: &str) -> Box<dyn crate::progress::Meter + '_> {
        crate::progress::Silent.meter(len, unit, message)
    }
    fn epoch(&self, _: &Epoch, _: usize) {
        if let Ok(mut v) = self.0.lock() {
            v.push(Instant::now());
        }
    }
    fn note(&self, _: &str) {}
}

/// The middle value of `v` (not empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_value() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![5.0]), 5.0);
    }

    #[test]
    fn an_epochs_cost_is_the_time_from_one_end_to_the_next() {
        let e =
            |seconds| Epoch { epoch: 1, loss: 0.0, accuracy: 0.0, val_loss: 0.0, val_accuracy: 0.0, lr: 0.0, seconds };
        // Epochs of 3 steps of 1 s and 0.5 s of validation; 0.25 s of writes after each; the
        // first ends 2 s late (the session opened), the second after a 3 s checkpoint.
        let history = [e(3.5), e(3.5), e(3.5), e(3.5)];
        let ends = [5.5, 12.25, 16.0, 19.75];
        let c = costs(&history, &ends, (0.5, 0.1), true);
        assert_eq!((c.step, c.predict, c.between, c.warm_up), (1.0, 0.1, 0.25, 2.0));
        assert!(c.writes_each_epoch);
    }
}
