//! What a fit carries from epoch to epoch and into a checkpoint: [`FitState`] (epochs done,
//! random stream position, sample order, history) and the optimizer's host-side [`State`].

use crate::history::Epoch;
use crate::train::compile::update::Optimizer;
use ndarray::ArrayD;

/// Everything a fit needs to continue exactly where it stopped: the epochs done, the optimizer
/// state and the position of the seeded random stream (parameters live in the `Trainer`).
#[derive(Clone, Debug)]
pub struct FitState {
    pub epoch: usize,
    pub optim: State,
    /// ChaCha8 word position after the last finished epoch.
    pub rng_word_pos: u128,
    /// The sample order of the last finished epoch (the next shuffle permutes it).
    pub order: Vec<usize>,
    pub history: Vec<Epoch>,
}

/// Per-parameter optimizer state, on the host (checkpoints, resume).
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub opt: Optimizer,
    /// Slot 0 and slot 1 per parameter (RMSprop: v, —; SGD: momentum, —; Adam: m, v); unused
    /// slots stay zero.
    pub slots: Vec<(ArrayD<f32>, ArrayD<f32>)>,
    /// Updates applied so far (Adam's bias correction).
    pub step: i32,
}

impl State {
    pub fn new(opt: Optimizer, params: &[ArrayD<f32>]) -> Self {
        let slots = params.iter().map(|p| (ArrayD::zeros(p.raw_dim()), ArrayD::zeros(p.raw_dim()))).collect();
        State { opt, slots, step: 0 }
    }
}
