//! Optimizers with Keras 3 semantics, applied in Rust to the parameters between graph runs.

use crate::error::{Error, Result};
use ndarray::{ArrayD, Zip};
use serde::{Deserialize, Serialize};

/// Optimizer and its hyper-parameters (Keras defaults unless set).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Optimizer {
    /// `v = ρv + (1−ρ)g²; w −= lr·g / (√v + ε)` (Keras: ρ = 0.9, ε = 1e-7).
    Rmsprop { lr: f64, rho: f64, epsilon: f64 },
    /// `m = μm − lr·g; w += m` (plain SGD when μ = 0).
    Sgd { lr: f64, momentum: f64 },
    /// Adam with bias correction (Keras: β1 0.9, β2 0.999, ε 1e-7).
    Adam { lr: f64, beta1: f64, beta2: f64, epsilon: f64 },
}

impl Optimizer {
    pub fn rmsprop(lr: f64) -> Self {
        Optimizer::Rmsprop { lr, rho: 0.9, epsilon: 1e-7 }
    }
    pub fn adam(lr: f64) -> Self {
        Optimizer::Adam { lr, beta1: 0.9, beta2: 0.999, epsilon: 1e-7 }
    }
    pub fn sgd(lr: f64, momentum: f64) -> Self {
        Optimizer::Sgd { lr, momentum }
    }

    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match *self {
            Optimizer::Rmsprop { lr, .. } | Optimizer::Sgd { lr, .. } | Optimizer::Adam { lr, .. } => lr,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let lr = match *self {
            Optimizer::Rmsprop { lr, .. } | Optimizer::Sgd { lr, .. } | Optimizer::Adam { lr, .. } => lr,
        };
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(Error::Param { name: "lr", value: lr.to_string(), reason: "must be positive".into() });
        }
        Ok(())
    }
}

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

/// Per-parameter optimizer state.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub opt: Optimizer,
    /// First and second moment (or momentum) slots per parameter.
    pub slots: Vec<(ArrayD<f32>, ArrayD<f32>)>,
    /// Updates applied so far (Adam's bias correction).
    pub step: i32,
}

impl State {
    pub fn new(opt: Optimizer, params: &[ArrayD<f32>]) -> Self {
        let slots = params.iter().map(|p| (ArrayD::zeros(p.raw_dim()), ArrayD::zeros(p.raw_dim()))).collect();
        State { opt, slots, step: 0 }
    }

    /// Apply one update with learning rate `lr` (the schedule's value for this step).
    pub fn update(&mut self, params: &mut [ArrayD<f32>], grads: &[ArrayD<f32>], lr: f64) {
        let lr = lr as f32;
        self.step += 1;
        let t = self.step;
        for ((p, g), (s1, s2)) in params.iter_mut().zip(grads).zip(self.slots.iter_mut()) {
            match self.opt {
                Optimizer::Rmsprop { rho, epsilon, .. } => {
                    let (rho, epsilon) = (rho as f32, epsilon as f32);
                    Zip::from(p).and(g).and(s1).for_each(|w, &g, v| {
                        *v = rho * *v + (1.0 - rho) * g * g;
                        *w -= lr * g / (v.sqrt() + epsilon);
                    });
                }
                Optimizer::Sgd { momentum, .. } => {
                    let momentum = momentum as f32;
                    if momentum == 0.0 {
                        Zip::from(p).and(g).for_each(|w, &g| *w -= lr * g);
                    } else {
                        Zip::from(p).and(g).and(s1).for_each(|w, &g, m| {
                            *m = momentum * *m - lr * g;
                            *w += *m;
                        });
                    }
                }
                Optimizer::Adam { beta1, beta2, epsilon, .. } => {
                    let a = (lr as f64 * (1.0 - beta2.powi(t)).sqrt() / (1.0 - beta1.powi(t))) as f32;
                    let (beta1, beta2, epsilon) = (beta1 as f32, beta2 as f32, epsilon as f32);
                    Zip::from(p).and(g).and(s1).and(s2).for_each(|w, &g, m, v| {
                        *m += (g - *m) * (1.0 - beta1);
                        *v += (g * g - *v) * (1.0 - beta2);
                        *w -= a * *m / (v.sqrt() + epsilon);
                    });
                }
            }
        }
    }
}
