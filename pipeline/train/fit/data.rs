//! What a fit draws its batches from ([`BatchSource`]; [`InMemory`] rows), and a training batch
//! as the update graph takes it ([`Batch`], targets by [`label_tensor`]).

use crate::error::Result;
use crate::train::compile::Loss;
use ndarray::{ArrayD, Axis};

/// The samples a fit draws its batches from.
pub trait BatchSource {
    /// The label of every sample, in sample order.
    fn labels(&self) -> &[usize];
    /// The inputs of the samples `idx` (decoded, augmented…), drawing any randomness from `rng`.
    fn batch(&self, idx: &[usize], rng: &mut rand_chacha::ChaCha8Rng) -> Result<ArrayD<f32>>;
}

/// Samples held in memory: rows of `x`.
pub struct InMemory<'a> {
    pub x: &'a ArrayD<f32>,
    pub labels: &'a [usize],
}

impl BatchSource for InMemory<'_> {
    fn labels(&self) -> &[usize] {
        self.labels
    }
    fn batch(&self, idx: &[usize], _: &mut rand_chacha::ChaCha8Rng) -> Result<ArrayD<f32>> {
        Ok(self.x.select(Axis(0), idx))
    }
}

/// Labels as the loss expects them: (N,1) 0/1 for BCE, one-hot (N,K) for CE.
pub fn label_tensor(labels: &[usize], loss: Loss, k: usize) -> ArrayD<f32> {
    smoothed_labels(labels, loss, k, 0.0)
}

/// [`label_tensor`] with Keras' label smoothing ε: `y(1−ε) + ε/K`, K = 2 for BCE.
pub fn smoothed_labels(labels: &[usize], loss: Loss, k: usize, eps: f64) -> ArrayD<f32> {
    let soft = |hot: bool, k: usize| (if hot { 1.0 - eps } else { 0.0 } + eps / k as f64) as f32;
    match loss {
        Loss::BinaryCrossEntropy => {
            ArrayD::from_shape_fn(ndarray::IxDyn(&[labels.len(), 1]), |i| soft(labels[i[0]] == 1, 2))
        }
        Loss::CategoricalCrossEntropy => {
            ArrayD::from_shape_fn(ndarray::IxDyn(&[labels.len(), k]), |i| soft(labels[i[0]] == i[1], k))
        }
    }
}

/// One training batch as the update graph takes it.
pub struct Batch {
    pub x: ArrayD<f32>,
    /// Targets ([`label_tensor`]).
    pub y: ArrayD<f32>,
    /// Per-sample loss weights (N,1); None: ones.
    pub weights: Option<ArrayD<f32>>,
    pub masks: Vec<ArrayD<f32>>,
}
