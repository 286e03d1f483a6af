//! Weight initialisers, Keras' defaults, defined once for every layer tlearn builds.

use ndarray::{ArrayD, IxDyn};
use rand::Rng;

/// Keras' `glorot_uniform`: U(−l, l), l = √(6 / (fan_in + fan_out)), drawn in row-major order.
pub fn glorot_uniform(rng: &mut impl Rng, shape: &[usize], fan_in: usize, fan_out: usize) -> ArrayD<f32> {
    let l = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.gen_range(-l..l))
}
