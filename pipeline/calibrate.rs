//! Activation ranges from calibration images, three ways (as ORT's own calibrators): the plain
//! min and max; a percentile of a histogram (outliers cut); the threshold whose 128-level
//! quantization loses the least information (KL divergence, the TensorRT method).

use serde::{Deserialize, Serialize};

/// How a calibrated tensor's range is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The smallest and largest value seen.
    Minmax,
    /// The 0.0005 % and 99.9995 % points of the values seen (outliers cut).
    Percentile,
    /// The threshold minimising the KL divergence between the values and their quantization.
    Entropy,
}

impl crate::params::Choice for Method {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (Method::Minmax, "minmax", "The smallest and largest value seen"),
        (Method::Percentile, "percentile", "The 0.0005 % and 99.9995 % points of the values seen (outliers cut)"),
        (
            Method::Entropy,
            "entropy",
            "The threshold minimising the KL divergence between the values and their quantization",
        ),
    ];
}

impl Method {
    /// Does the method need a histogram (a second pass over the images, once min/max are known)?
    pub fn needs_histogram(self) -> bool {
        self != Method::Minmax
    }
}

pub const BINS: usize = 2048;
const PERCENTILE: f64 = 99.999;
const QUANTIZED_BINS: usize = 128;

/// What calibration gathers of one tensor.
#[derive(Clone, Debug)]
pub struct Stats {
    pub min: f32,
    pub max: f32,
    /// Counts of values over [min, max] in [`BINS`] bins (the histogram pass).
    hist: Vec<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats { min: f32::INFINITY, max: f32::NEG_INFINITY, hist: vec![] }
    }
}

impl Stats {
    pub fn observe_range(&mut self, values: &[f32]) {
        for &v in values.iter().filter(|v| v.is_finite()) {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
    }

    fn bin_width(&self) -> f32 {
        ((self.max - self.min) / BINS as f32).max(f32::MIN_POSITIVE)
    }

    /// Count values into the histogram over the range [`Stats::observe_range`] found.
    pub fn observe_histogram(&mut self, values: &[f32]) {
        if self.hist.is_empty() {
            self.hist = vec![0; BINS];
        }
        let (lo, w) = (self.min, self.bin_width());
        // Exact zeros (a ReLU's many) sit on the zero point whatever the range: left out, they
        // would outweigh the rest of the distribution in the entropy search.
        for &v in values.iter().filter(|v| v.is_finite() && **v != 0.0) {
            let b = (((v - lo) / w) as usize).min(BINS - 1);
            self.hist[b] += 1;
        }
    }

    /// The calibrated range (min, max).
    pub fn range(&self, method: Method) -> (f32, f32) {
        if !self.min.is_finite() || self.hist.is_empty() || method == Method::Minmax {
            return (self.min.min(0.0), self.max.max(0.0));
        }
        match method {
            Method::Minmax => unreachable!("handled above"),
            Method::Percentile => self.percentile_range(),
            Method::Entropy => self.entropy_range(),
        }
    }

    fn value_at_bin(&self, b: usize) -> f32 {
        self.min + b as f32 * self.bin_width()
    }

    fn percentile_range(&self) -> (f32, f32) {
        let total: u64 = self.hist.iter().sum();
        let cut = ((1.0 - PERCENTILE / 100.0) / 2.0 * total as f64) as u64;
        let (mut below, mut lo) = (0u64, 0usize);
        while lo < BINS - 1 && below + self.hist[lo] <= cut {
            below += self.hist[lo];
            lo += 1;
        }
        let (mut above, mut hi) = (0u64, BINS - 1);
        while hi > lo && above + self.hist[hi] <= cut {
            above += self.hist[hi];
            hi -= 1;
        }
        (self.value_at_bin(lo).min(0.0), self.value_at_bin(hi + 1).max(0.0))
    }

    /// The KL-optimal threshold on the side of zero that holds most of the range, searched over
    /// the bins from zero (or, for values all of one sign, from the end nearest zero) outwards;
    /// values past it are clipped into its last bin.
    fn entropy_range(&self) -> (f32, f32) {
        let w = self.bin_width();
        let zero = -self.min / w;
        if zero <= 0.0 {
            // All positive: bin 0 starts at min, the threshold is a value, not a reach.
            let t = best_threshold(&self.hist);
            return (0.0, self.value_at_bin(t).min(self.max));
        }
        if zero >= BINS as f32 {
            let rev: Vec<u64> = self.hist.iter().rev().copied().collect();
            let t = best_threshold(&rev);
            return ((self.max - t as f32 * w).max(self.min), 0.0);
        }
        let zero = (zero.round() as usize).min(BINS - 1);
        let positive = self.max >= -self.min;
        let side: Vec<u64> =
            if positive { self.hist[zero..].to_vec() } else { self.hist[..=zero].iter().rev().copied().collect() };
        let reach = best_threshold(&side) as f32 * w;
        if positive {
            (self.min.max(-reach).min(0.0), reach.min(self.max).max(0.0))
        } else {
            ((-reach).max(self.min).min(0.0), self.max.min(reach).max(0.0))
        }
    }
}

/// The number of bins (from the start of `hist`) whose clipped distribution is closest, in KL
/// divergence, to itself quantized to [`QUANTIZED_BINS`] levels.
fn best_threshold(hist: &[u64]) -> usize {
    let n = hist.len();
    if n <= QUANTIZED_BINS {
        return n;
    }
    let (mut best, mut best_kl) = (n, f64::INFINITY);
    for i in QUANTIZED_BINS..=n {
        let mut p: Vec<f64> = hist[..i].iter().map(|&c| c as f64).collect();
        p[i - 1] += hist[i..].iter().map(|&c| c as f64).sum::<f64>();
        let q = quantized(&hist[..i]);
        let kl = kl_divergence(&p, &q);
        if kl < best_kl {
            (best, best_kl) = (i, kl);
        }
    }
    best
}

/// `hist` merged into [`QUANTIZED_BINS`] levels and spread back over its non-empty bins.
fn quantized(hist: &[u64]) -> Vec<f64> {
    let i = hist.len();
    let mut q = vec![0f64; i];
    for level in 0..QUANTIZED_BINS {
        let (a, b) =
            (level * i / QUANTIZED_BINS, ((level + 1) * i / QUANTIZED_BINS).max(level * i / QUANTIZED_BINS + 1));
        let total: f64 = hist[a..b].iter().map(|&c| c as f64).sum();
        let nonzero = hist[a..b].iter().filter(|&&c| c > 0).count();
        if nonzero > 0 {
            for k in a..b {
                if hist[k] > 0 {
                    q[k] = total / nonzero as f64;
                }
            }
        }
    }
    q
}

fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if sp == 0.0 || sq == 0.0 {
        return f64::INFINITY;
    }
    p.iter()
        .zip(q)
        .filter(|(&a, _)| a > 0.0)
        .map(|(&a, &b)| {
            let (a, b) = (a / sp, (b / sq).max(1e-12));
            a * (a / b).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibrated_ranges_cover_values_of_one_sign() {
        let up: Vec<f32> = (0..10_000).map(|i| 2.0 + 8.0 * i as f32 / 9_999.0).collect();
        let down: Vec<f32> = up.iter().map(|v| -v).collect();
        for m in [Method::Minmax, Method::Percentile, Method::Entropy] {
            let range = |v: &[f32]| {
                let mut s = Stats::default();
                s.observe_range(v);
                s.observe_histogram(v);
                s.range(m)
            };
            let (lo, hi) = range(&up);
            assert!(lo == 0.0 && (9.5..=10.0).contains(&hi), "{m:?} on [2, 10]: ({lo}, {hi})");
            let (lo, hi) = range(&down);
            assert!(hi == 0.0 && (-10.0..=-9.5).contains(&lo), "{m:?} on [-10, -2]: ({lo}, {hi})");
        }
    }
}
