//! How long a fit takes on the machine it runs on, as the planner of `tlearn fit --budget` needs
//! it: the learner rehearsed for a few epochs of a few batches with everything an epoch does
//! (steps, validation, the device copy synced, models, checkpoints and history written). The
//! epochs' own times give a step's; the rest of the wall time is what an epoch costs besides its
//! steps and validation. The trainer's parameters are as they were afterwards.

use super::config::FitConfig;
use super::data::{BatchSource, InMemory};
use super::learner::{self, Checkpointing, FitOptions, Live};
use super::trainer::Trainer;
use crate::error::{Error, Result};
use crate::params::ParamGuard;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;
use std::time::Instant;

/// The rehearsal: epochs, and training batches an epoch.
const EPOCHS: usize = 4;
const BATCHES: usize = 3;

/// What a fit costs here, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepTimes {
    /// One training step of `cfg.batch` samples: forward, backward, update, the batch drawn.
    pub step: f64,
    /// One sample predicted (no dropout, no update).
    pub predict: f64,
    /// An epoch's cost besides its steps and its validation: the device copy synced, the models,
    /// checkpoint and history written.
    pub between: f64,
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
        let timed = self.rehearsals(data, val, cfg, scratch);
        self.params = saved;
        self.resident = None;
        timed
    }

    fn rehearsals(
        &mut self,
        data: &dyn BatchSource,
        val: Option<&dyn BatchSource>,
        cfg: &FitConfig,
        scratch: &Path,
    ) -> Result<StepTimes> {
        let val = match val.filter(|v| !v.labels().is_empty()) {
            Some(v) => Some(drawn(v, cfg.batch, cfg.seed)?),
            None => None,
        };
        let val = val.as_ref().map(|(x, l)| InMemory { x, labels: l });
        let (wall, history) = self.rehearse(data, val.as_ref().map(|v| v as &dyn BatchSource), cfg, scratch)?;
        let predict = match &val {
            Some(v) => self.time_predict(v, cfg.batch)?,
            None => 0.0,
        };
        let validated = val.as_ref().map_or(0, |v| v.labels.len()) as f64 * predict;
        // The first epoch pays for allocations: the steps are timed on the others.
        let steps: Vec<f64> =
            history.iter().skip(1).map(|e| ((e.seconds - validated) / BATCHES as f64).max(0.0)).collect();
        let between = (wall - history.iter().map(|e| e.seconds).sum::<f64>()) / history.len() as f64;
        Ok(StepTimes { step: median(steps), predict, between: between.max(0.0) })
    }

    /// The wall time and history of `EPOCHS` epochs of `BATCHES` batches of `data` as the learner
    /// runs them, writing into `dir`.
    fn rehearse(
        &mut self,
        data: &dyn BatchSource,
        val: Option<&dyn BatchSource>,
        cfg: &FitConfig,
        dir: &Path,
    ) -> Result<(f64, Vec<crate::history::Epoch>)> {
        let (x, labels) = drawn(data, BATCHES * cfg.batch, cfg.seed)?;
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
        let t = Instant::now();
        let fitted = learner::fit(self, &InMemory { x: &x, labels: &labels }, val, &o, &crate::progress::Silent)?;
        Ok((t.elapsed().as_secs_f64(), fitted.history))
    }

    /// Seconds per sample of `v` predicted (the median of three runs after an untimed one).
    fn time_predict(&mut self, v: &dyn BatchSource, batch: usize) -> Result<f64> {
        let mut seconds = vec![];
        for i in 0..4 {
            let t = Instant::now();
            self.evaluate(v, batch)?;
            if i > 0 {
                seconds.push(t.elapsed().as_secs_f64() / v.labels().len() as f64);
            }
        }
        Ok(median(seconds))
    }
}

/// `n` samples of `data` (shuffled with `seed`, repeated when it has fewer), drawn once.
fn drawn(data: &dyn BatchSource, n: usize, seed: u64) -> Result<(ndarray::ArrayD<f32>, Vec<usize>)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..data.labels().len()).collect();
    order.shuffle(&mut rng);
    let idx: Vec<usize> = order.iter().copied().cycle().take(n).collect();
    let labels = idx.iter().map(|&i| data.labels()[i]).collect();
    Ok((data.batch(&idx, &mut rng)?, labels))
}

/// The middle value of `v` (not empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_median_is_the_middle_value() {
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(vec![5.0]), 5.0);
    }
}
