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
/// The thresholds' first gaps. A middle class's probability peaks, at its band's centre, at
/// 2σ(g/2) − 1, and beats its neighbours only for a gap g over 2·ln 2 ≈ 1.39: with thresholds
/// one apart no middle class is ever the most likely, and a fine-tune's rate (1e-4) moves them too
/// little to change that (ELPV's four classes: gaps 1.09 and 1.12 after eight epochs, the middle
/// classes never predicted). At 2 a middle class wins its band with 0.46 from the start.
const INITIAL_GAP: f32 = 2.0;
/// Probabilities are clipped to this before their log (a class far from the score).
const MIN_PROB: f32 = 1e-7;

/// The ordinal output on `x` (N, `width`) for `classes` ordered classes (≥ 3), ending in
/// [`OUTPUT`] (N, `classes`). Its parameters: `{prefix}kernel` (width, 1), the first threshold
/// `ordinal/first` and the other thresholds' gaps as `ordinal/gap_roots` (each gap is root² + a
/// small minimum, so the thresholds stay ordered whatever training does).
pub fn emit(b: &mut GraphBuilder, x: &str, width: usize, classes: usize, prefix: &str, rng: &mut impl Rng) {
    let w = b.init_f32(&format!("{prefix}kernel"), &glorot_uniform(rng, &[width, 1], width, 1));
    let f = b.op("MatMul", &[x, &w], vec![]);
    // Thresholds centred on 0, INITIAL_GAP apart.
    let cuts = classes - 1;
    let first = b.init_f32("ordinal/first", &ArrayD::from_elem(IxDyn(&[1]), -((cuts - 1) as f32) * INITIAL_GAP / 2.0));
    let root = (INITIAL_GAP - MIN_GAP).sqrt();
    let roots = b.init_f32("ordinal/gap_roots", &ArrayD::from_elem(IxDyn(&[cuts - 1]), root));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{self, Dim};
    use crate::runtime::{self, Device, SessionOptions};
    use rand::SeedableRng;
    use std::path::Path;

    /// From the start, each class is the most likely one where the score falls in its band
    /// (below the first threshold, between two, above the last) — the middle ones included.
    #[test]
    fn each_class_is_the_most_likely_in_its_band_from_the_start() {
        for classes in [3, 4, 5] {
            let mut b = GraphBuilder::new("o");
            b.input("x", &[Dim::named("N"), Dim::Fixed(1)]);
            emit(&mut b, "x", 1, classes, "d/", &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
            b.output(OUTPUT, &[Dim::named("N"), Dim::Fixed(classes as i64)]);
            let m = onnx::model(b.finish(), "ordinal");
            let w = onnx::graph(&m).initializer.iter().find(|t| t.name == "d/kernel").unwrap();
            let w = onnx::tensor_to_f32(w).unwrap().iter().copied().next().unwrap();
            // Scores at each band's centre, and one gap past the outer thresholds.
            let theta: Vec<f32> =
                (0..classes - 1).map(|k| (k as f32 - (classes - 2) as f32 / 2.0) * INITIAL_GAP).collect();
            let mut f = vec![theta[0] - INITIAL_GAP];
            f.extend(theta.windows(2).map(|t| (t[0] + t[1]) / 2.0));
            f.push(theta[classes - 2] + INITIAL_GAP);
            let x = ArrayD::from_shape_vec(IxDyn(&[classes, 1]), f.iter().map(|v| v / w).collect()).unwrap();
            let opts = SessionOptions { device: Device::Cpu, threads: 1, precision: None };
            let mut s = runtime::open(&onnx::encode_model(&m), Path::new("ordinal"), &opts).unwrap().session;
            let p = runtime::run_f32(&mut s, vec![("x", x.view())], &[OUTPUT]).unwrap().remove(0);
            for (k, row) in p.outer_iter().enumerate() {
                let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
                assert_eq!(best, k, "{classes} classes, score {}: {row}", f[k]);
            }
        }
    }
}
