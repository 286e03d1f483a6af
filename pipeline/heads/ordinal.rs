//! The ordinal output (`--target ordinal`): for classes in an order (defect grades, severity
//! levels) one score f = h·w and K−1 ordered thresholds θ₀ < θ₁ < … give the cumulative-link
//! (proportional-odds) model P(y ≤ k) = σ(θₖ − f), and the class probabilities are the steps
//! between them. The graph ends as every classifier does, in a Softmax over log-probabilities
//! (whose result is the probabilities themselves), so training minimises this model's negative
//! log-likelihood with the ordinary cross-entropy, and evaluation, scoring and the deployable
//! model read K probabilities as from any head.

use super::spec::OUTPUT;
use crate::init::glorot_uniform;
use crate::onnx::builder::A;
use crate::onnx::GraphBuilder;
use ndarray::{Array2, ArrayD, IxDyn};
use rand::Rng;

/// The smallest gap between two thresholds (keeps every class's probability above zero).
const MIN_GAP: f32 = 1e-3;
/// Probabilities are clipped to this before their log (a class far from the score).
const MIN_PROB: f32 = 1e-7;

/// The ordinal output on `x` (N, `width`) for `classes` ordered classes (≥ 3), ending in
/// [`OUTPUT`] (N, `classes`). Its parameters: `{prefix}kernel` (width, 1), the first threshold
/// `ordinal/first` and the other thresholds' gaps as `ordinal/gap_roots` (each gap is root² + a
/// small minimum, so the thresholds stay ordered whatever training does).
pub fn emit(b: &mut GraphBuilder, x: &str, width: usize, classes: usize, prefix: &str, rng: &mut impl Rng) {
    let w = b.init_f32(&format!("{prefix}kernel"), &glorot_uniform(rng, &[width, 1], width, 1));
    let f = b.op("MatMul", &[x, &w], vec![]);
    // Thresholds at −(K−2)/2, …, (K−2)/2 one apart: the middle classes start as likely as the ends.
    let cuts = classes - 1;
    let first = b.init_f32("ordinal/first", &ArrayD::from_elem(IxDyn(&[1]), -((cuts - 1) as f32) / 2.0));
    let roots = b.init_f32("ordinal/gap_roots", &ArrayD::from_elem(IxDyn(&[cuts - 1]), (1.0 - MIN_GAP).sqrt()));
    let sq = b.op("Mul", &[&roots, &roots], vec![]);
    let min_gap = b.const_f32("min_gap", MIN_GAP);
    let gaps = b.op("Add", &[&sq, &min_gap], vec![]);
    let steps = b.op("Concat", &[&first, &gaps], vec![("axis", A::I(0))]);
    let row = b.reshape(&steps, "steps_row", &[1, cuts as i64]);
    // θ = steps · U (U upper-triangular ones): each threshold the sum of the steps up to it.
    let upper = Array2::from_shape_fn((cuts, cuts), |(i, j)| (i <= j) as u8 as f32).into_dyn();
    let u = b.const_arr_f32(&format!("{}cumulative", crate::train::FROZEN), &upper);
    let theta = b.op("MatMul", &[&row, &u], vec![]);
    let z = b.op("Sub", &[&theta, &f], vec![]);
    let at_most = b.op("Sigmoid", &[&z], vec![]);
    // P(y = k) = P(y ≤ k) − P(y ≤ k−1), with P(y ≤ K−1) = 1 and P(y ≤ −1) = 0.
    let (pad_end, pad_start) = (b.const_i64("pad_end", &[0, 0, 0, 1]), b.const_i64("pad_start", &[0, 1, 0, 0]));
    let (one, zero) = (b.const_f32("one", 1.0), b.const_f32("zero", 0.0));
    let hi = b.op("Pad", &[&at_most, &pad_end, &one], vec![("mode", A::S("constant"))]);
    let lo = b.op("Pad", &[&at_most, &pad_start, &zero], vec![("mode", A::S("constant"))]);
    let p = b.op("Sub", &[&hi, &lo], vec![]);
    let floor = b.const_f32("min_prob", MIN_PROB);
    let clipped = b.op("Clip", &[&p, &floor], vec![]);
    let log_p = b.op("Log", &[&clipped], vec![]);
    b.node("Softmax", &[&log_p], &[OUTPUT], vec![("axis", A::I(-1))]);
}
