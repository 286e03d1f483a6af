//! Learning-rate schedules over a run (Keras' step and cosine decays).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Learning-rate schedule over a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Schedule {
    /// The optimizer's rate throughout.
    #[default]
    Constant,
    /// Multiply by `factor` every `every` epochs (Keras `ExponentialDecay(staircase=True)` by epoch).
    Step { every: usize, factor: f64 },
    /// Keras `CosineDecay` per step from the base rate down to `alpha`·base at the last step.
    Cosine { alpha: f64 },
}

impl Schedule {
    /// Learning rate for optimisation step `step` (0-based) of `total` steps, in epoch `epoch`
    /// (0-based).
    pub fn lr(&self, base: f64, epoch: usize, step: usize, total: usize) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { every, factor } => base * factor.powi((epoch / every.max(1)) as i32),
            Schedule::Cosine { alpha } => {
                let t = step.min(total) as f64 / total.max(1) as f64;
                let c = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
                base * ((1.0 - alpha) * c + alpha)
            }
        }
    }

    pub fn validate(&self) -> Result<()> {
        match *self {
            Schedule::Step { every, factor } if every == 0 || factor.is_nan() || factor <= 0.0 => Err(Error::Param {
                name: "schedule",
                value: format!("step every {every} factor {factor}"),
                reason: "needs every ≥ 1 and factor > 0".into(),
            }),
            Schedule::Cosine { alpha } if !(0.0..=1.0).contains(&alpha) => Err(Error::Param {
                name: "schedule",
                value: format!("cosine alpha {alpha}"),
                reason: "alpha must be in [0, 1]".into(),
            }),
            _ => Ok(()),
        }
    }
}
