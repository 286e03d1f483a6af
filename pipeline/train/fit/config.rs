//! A fit's settings ([`FitConfig`]: epochs, batch, seed, optimizer, schedule, warm-up, weight
//! decay, label smoothing, class weights, sampling), checked once ([`ParamGuard`]), and the learning rate
//! they give each step.

use super::sampling::Sampling;
use super::schedule::Schedule;
use crate::error::{Error, Result};
use crate::params::ParamGuard;
use crate::train::compile::update::Optimizer;
use serde::{Deserialize, Serialize};

/// Loop settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FitConfig {
    pub epochs: usize,
    pub batch: usize,
    pub seed: u64,
    pub optimizer: Optimizer,
    #[serde(default)]
    pub schedule: Schedule,
    /// Linear warm-up from ~0 to the rate over this many epochs (by step); the schedule then runs
    /// over the remaining steps.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warmup_epochs: usize,
    /// Keras 3's decoupled `weight_decay` (Adam with it is AdamW): `w −= w·wd·lr` each step, on
    /// weights of rank ≥ 2 only — biases and BatchNorm's γ/β are not decayed (timm's rule).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub weight_decay: f64,
    /// Keras' `label_smoothing`: training targets `y(1−ε) + ε/K` (K = 2 for one sigmoid output).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
    /// Keras' `class_weight`: each training sample's loss times its class's weight (validation
    /// loss unweighted, as in Keras).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_weight: Option<ClassWeight>,
    /// Which samples each epoch draws: each once (shuffled), or class-balanced draws.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sampling: Sampling,
}

/// Settings added after records were first written are left out at their default, so older
/// checkpoints still compare equal.
fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Per-class loss weights.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeight {
    /// n / (K · n_c), from the training labels, K the classes present (scikit-learn's "balanced").
    Balanced,
    /// One weight per class, in class order.
    Given(Vec<f64>),
}

impl ClassWeight {
    /// The weight of each of `k` classes for training labels `labels`.
    pub fn weights(&self, labels: &[usize], k: usize) -> Result<Vec<f64>> {
        match self {
            ClassWeight::Given(w) if w.len() != k => Err(Error::Param {
                name: "class_weight",
                value: format!("{w:?}"),
                reason: format!("needs one weight per class ({k})"),
            }),
            ClassWeight::Given(w) => Ok(w.clone()),
            ClassWeight::Balanced => {
                let mut count = vec![0usize; k];
                for &l in labels {
                    count[l] += 1;
                }
                // Over the classes present (scikit-learn's rule); an absent class's weight is never used.
                let present = count.iter().filter(|&&c| c > 0).count().max(1);
                Ok(count.iter().map(|&c| labels.len() as f64 / (present * c.max(1)) as f64).collect())
            }
        }
    }
}

impl ParamGuard for FitConfig {
    fn check_ref(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::Param { name: "epochs", value: "0".into(), reason: "must be ≥ 1".into() });
        }
        if self.batch == 0 {
            return Err(Error::Param { name: "batch", value: "0".into(), reason: "must be ≥ 1".into() });
        }
        self.optimizer.validate()?;
        let bad = |name, v: f64, reason: &str| Err(Error::Param { name, value: v.to_string(), reason: reason.into() });
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("weight_decay", self.weight_decay, "must be ≥ 0");
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad("label_smoothing", self.label_smoothing, "must be in [0, 1)");
        }
        if let Some(ClassWeight::Given(w)) = &self.class_weight {
            if let Some(&v) = w.iter().find(|v| !(**v > 0.0 && v.is_finite())) {
                return bad("class_weight", v, "every weight must be positive");
            }
        }
        if self.warmup_epochs >= self.epochs {
            let v = self.warmup_epochs as f64;
            return bad("warmup_epochs", v, &format!("must be fewer than the epochs ({})", self.epochs));
        }
        self.schedule.validate()
    }
}

impl FitConfig {
    /// A loop of `epochs` × batches of `batch`, seeded: constant rate, no warm-up, no
    /// regularisation or class weights.
    pub fn new(epochs: usize, batch: usize, seed: u64, optimizer: Optimizer) -> Self {
        FitConfig {
            epochs,
            batch,
            seed,
            optimizer,
            schedule: Schedule::Constant,
            warmup_epochs: 0,
            weight_decay: 0.0,
            label_smoothing: 0.0,
            class_weight: None,
            sampling: Sampling::Shuffle,
        }
    }

    /// The learning rate of step `step` (0-based, over the whole run) in epoch `epoch` (0-based)
    /// of a run of `steps_per_epoch` steps per epoch: the warm-up's linear ramp, then the schedule
    /// over the steps left.
    pub fn lr_at(&self, epoch: usize, step: usize, steps_per_epoch: usize) -> f64 {
        let base = self.optimizer.lr();
        let warm = self.warmup_epochs * steps_per_epoch;
        if step < warm {
            return base * (step + 1) as f64 / warm as f64;
        }
        let total = steps_per_epoch * self.epochs;
        self.schedule.lr(base, epoch - self.warmup_epochs.min(epoch), step - warm, total - warm)
    }
}
