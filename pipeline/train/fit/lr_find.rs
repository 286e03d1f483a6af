//! The learning-rate range test (fastai's `lr_find`, after Leslie Smith): from the model's current
//! weights, one step per training batch (shuffled, seeded) at a rate growing exponentially from
//! `start` to `end`, the loss smoothed as fastai's recorder smooths it (an exponential moving
//! average, β = 0.98, bias-corrected), stopping once the smoothed loss passes 4× its minimum.
//! The steps train the device copy only: the trainer's parameters are as they were afterwards.
//! The suggestions are fastai's: `valley` (its default since 2.5) and `steep`.

use super::data::BatchSource;
use super::state::State;
use super::trainer::Trainer;
use crate::error::{Error, Result};
use crate::params::ParamGuard;
use crate::progress::Sink;
use crate::train::compile::update::Optimizer;
use crate::train::fit::config::FitConfig;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// fastai's smoothing of the recorded loss (`AvgSmoothLoss(beta=0.98)`).
pub const BETA: f64 = 0.98;
/// The sweep stops once the smoothed loss exceeds this many times its minimum (fastai's
/// `stop_div`).
pub const DIVERGED: f64 = 4.0;
/// What the sweep writes: one row per step, the plot, the suggestions.
pub const CSV: &str = "lr_find.csv";
pub const PNG: &str = "lr_find.png";
pub const JSON: &str = "lr_find.json";

/// The rates a sweep tries: step i of `steps` at `start·(end/start)^(i/steps)` (fastai's
/// `SchedExp` at position i/steps), so the last step stays just below `end`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    pub start: f64,
    pub end: f64,
    pub steps: usize,
}

impl Default for Sweep {
    /// fastai's defaults: 100 steps from 1e-7 to 10.
    fn default() -> Self {
        Sweep { start: 1e-7, end: 10.0, steps: 100 }
    }
}

impl ParamGuard for Sweep {
    fn check_ref(&self) -> Result<()> {
        let bad = |name, value: String, reason: &str| Err(Error::Param { name, value, reason: reason.into() });
        if !(self.start > 0.0 && self.start.is_finite()) {
            return bad("start_lr", self.start.to_string(), "the sweep's first rate must be positive");
        }
        if !(self.end > self.start && self.end.is_finite()) {
            return bad("end_lr", self.end.to_string(), "the sweep's last rate must be above its first");
        }
        if self.steps < 6 {
            // fastai raises fewer to 6: its suggestions leave out the last five steps.
            return bad("steps", self.steps.to_string(), "a sweep needs at least 6 steps");
        }
        Ok(())
    }
}

impl Sweep {
    /// The rate of step `i` (0-based).
    pub fn rate(&self, i: usize) -> f64 {
        self.start * (self.end / self.start).powf(i as f64 / self.steps as f64)
    }
}

/// Why a sweep ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    /// All its steps ran.
    Completed,
    /// The smoothed loss passed [`DIVERGED`]× its minimum.
    Diverged,
    /// The loss stopped being a number.
    NotFinite,
}

/// What a sweep measured: per step the rate, the batch loss and the smoothed loss; and the
/// suggestions read from the smoothed curve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LrCurve {
    pub lrs: Vec<f64>,
    pub losses: Vec<f64>,
    pub smoothed: Vec<f64>,
    pub ended: Ended,
    /// fastai's `valley`: the rate two thirds down the longest valley of the smoothed curve (the
    /// suggestion).
    pub valley: Option<f64>,
    /// fastai's `steep`: the rate where the smoothed loss falls fastest against log(rate).
    pub steep: Option<f64>,
}

/// The rate `--lr auto` chose, and what it was chosen from (kept in the run's record).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrChoice {
    pub lr: f64,
    pub valley: Option<f64>,
    pub steep: Option<f64>,
    pub sweep: Sweep,
}

impl LrCurve {
    /// A curve from its steps; the suggestions computed as fastai's `lr_find` computes them.
    pub fn new(lrs: Vec<f64>, losses: Vec<f64>, ended: Ended, steps: usize) -> LrCurve {
        let smoothed = smooth(&losses, BETA);
        let (window_lrs, window) = window(&lrs, &smoothed, steps);
        let valley = valley(window).map(|i| window_lrs[i]);
        let steep = steep(window_lrs, window).map(|i| window_lrs[i]);
        LrCurve { lrs, losses, smoothed, ended, valley, steep }
    }

    /// The suggested rate ([`LrCurve::valley`]) as a choice; an error when the sweep gave too
    /// few steps to suggest one.
    pub fn choose(&self, sweep: &Sweep) -> Result<LrChoice> {
        let lr = self.valley.ok_or_else(|| {
            Error::Other(format!(
                "the learning-rate sweep suggests no rate: {} ({} steps); give --lr, or sweep from a lower start",
                self.why(),
                self.lrs.len()
            ))
        })?;
        Ok(LrChoice { lr, valley: self.valley, steep: self.steep, sweep: sweep.clone() })
    }

    /// How the sweep ended, in words.
    pub fn why(&self) -> String {
        let at = |i: usize| self.lrs.get(i).map(|lr| format!("{lr:.2e}")).unwrap_or_default();
        let last = self.lrs.len().saturating_sub(1);
        match self.ended {
            Ended::Completed => format!("ran all its steps, up to {}", at(last)),
            Ended::Diverged => {
                format!("stopped at {}: the smoothed loss passed {DIVERGED}× its minimum", at(last))
            }
            Ended::NotFinite => format!("stopped at {}: the loss is not a number", at(last)),
        }
    }
}

/// fastai's `AvgSmoothLoss`: `avg = β·avg + (1−β)·loss`, reported as `avg / (1 − βᵗ)` after t
/// losses (the bias correction of an average started at 0).
struct Smoother {
    beta: f64,
    avg: f64,
    t: i32,
}

impl Smoother {
    fn new(beta: f64) -> Smoother {
        Smoother { beta, avg: 0.0, t: 0 }
    }
    fn push(&mut self, loss: f64) -> f64 {
        self.avg = self.beta * self.avg + (1.0 - self.beta) * loss;
        self.t += 1;
        self.avg / (1.0 - self.beta.powi(self.t))
    }
}

/// `losses` smoothed as [`Smoother`] does, step by step.
pub fn smooth(losses: &[f64], beta: f64) -> Vec<f64> {
    let mut s = Smoother::new(beta);
    losses.iter().map(|&l| s.push(l)).collect()
}

/// The part of the curve fastai's `lr_find` suggests from: past the first `steps / 10` steps,
/// without the last five, cut at the first loss that is not a number.
fn window<'a>(lrs: &'a [f64], smoothed: &'a [f64], steps: usize) -> (&'a [f64], &'a [f64]) {
    let from = (steps / 10).min(smoothed.len());
    let to = smoothed.len().saturating_sub(5).max(from);
    let (lrs, losses) = (&lrs[from..to], &smoothed[from..to]);
    let cut = losses.iter().position(|l| l.is_nan()).unwrap_or(losses.len());
    (&lrs[..cut], &losses[..cut])
}

/// fastai's `valley`: the longest decreasing run (not necessarily contiguous) of `losses`, and
/// the index two thirds down it (`start + ⌊s⌋ + ⌊s/2⌋`, s a third of its length). Like fastai's,
/// the run's start may lie one before the first point, and a negative index counts from the end.
pub fn valley(losses: &[f64]) -> Option<usize> {
    let n = losses.len();
    if n == 0 {
        return None;
    }
    let mut lds = vec![1usize; n];
    let (mut max_start, mut max_end) = (0isize, 0usize);
    for i in 1..n {
        for j in 0..i {
            if losses[i] < losses[j] && lds[i] < lds[j] + 1 {
                lds[i] = lds[j] + 1;
            }
            if lds[max_end] < lds[i] {
                max_end = i;
                max_start = max_end as isize - lds[max_end] as isize;
            }
        }
    }
    let sections = (max_end as isize - max_start) as f64 / 3.0;
    let idx = max_start + sections as isize + (sections / 2.0) as isize;
    Some(idx.rem_euclid(n as isize) as usize)
}

/// fastai's `steep`: the index i where `(loss[i+1] − loss[i]) / (ln lr[i+1] − ln lr[i])` is
/// lowest (the first such).
pub fn steep(lrs: &[f64], losses: &[f64]) -> Option<usize> {
    let slopes = lrs.windows(2).zip(losses.windows(2)).map(|(r, l)| (l[1] - l[0]) / (r[1].ln() - r[0].ln()));
    let mut best: Option<(usize, f64)> = None;
    for (i, g) in slopes.enumerate() {
        if best.is_none_or(|(_, b)| g < b) {
            best = Some((i, g));
        }
    }
    best.map(|(i, _)| i)
}

/// `opt` at rate `lr`, its other settings kept.
pub fn with_lr(opt: &Optimizer, lr: f64) -> Optimizer {
    let mut o = opt.clone();
    match &mut o {
        Optimizer::Rmsprop { lr: r, .. } | Optimizer::Sgd { lr: r, .. } | Optimizer::Adam { lr: r, .. } => *r = lr,
    }
    o
}

impl Trainer {
    /// Sweep the learning rate on `data` from the current parameters, as `cfg` would train
    /// (optimizer — fresh slots —, batch, seed, weight decay, label smoothing, class weights;
    /// its schedule and epochs play no part). The parameters are unchanged afterwards.
    pub fn lr_sweep(
        &mut self,
        data: &dyn BatchSource,
        cfg: &FitConfig,
        sweep: &Sweep,
        sink: &dyn Sink,
    ) -> Result<LrCurve> {
        sweep.check_ref()?;
        if data.labels().is_empty() {
            return Err(Error::Other("the learning-rate sweep has no training samples".into()));
        }
        let swept = self.sweep_steps(data, cfg, sweep, sink);
        // The device copy moved; the host copy is the model again, as it was.
        self.resident = None;
        let (lrs, losses, ended) = swept?;
        Ok(LrCurve::new(lrs, losses, ended, sweep.steps))
    }

    fn sweep_steps(
        &mut self,
        data: &dyn BatchSource,
        cfg: &FitConfig,
        sweep: &Sweep,
        sink: &dyn Sink,
    ) -> Result<(Vec<f64>, Vec<f64>, Ended)> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut state = State::new(cfg.optimizer.clone(), &self.params);
        let class_weight = self.begin(cfg, data.labels(), &state)?;
        let meter = sink.meter(sweep.steps as u64, "steps", "learning-rate sweep");
        let mut order: Vec<usize> = (0..data.labels().len()).collect();
        let (mut lrs, mut losses) = (vec![], vec![]);
        let (mut smoother, mut best) = (Smoother::new(BETA), f64::INFINITY);
        // As many passes over the shuffled samples as the steps take.
        loop {
            order.shuffle(&mut rng);
            for chunk in order.chunks(cfg.batch) {
                let lr = sweep.rate(lrs.len());
                let (loss, _) =
                    self.train_batch(data, chunk, cfg, class_weight.as_deref(), lr, &mut state, &mut rng)?;
                meter.inc(1);
                lrs.push(lr);
                losses.push(loss as f64);
                let smoothed = smoother.push(loss as f64);
                if !smoothed.is_finite() {
                    return Ok((lrs, losses, Ended::NotFinite));
                }
                best = best.min(smoothed);
                if smoothed > DIVERGED * best {
                    return Ok((lrs, losses, Ended::Diverged));
                }
                if lrs.len() == sweep.steps {
                    return Ok((lrs, losses, Ended::Completed));
                }
            }
        }
    }
}

/// One row of `lr_find.csv`.
#[derive(Serialize)]
struct Row {
    step: usize,
    lr: f64,
    loss: f64,
    smoothed: f64,
}

/// What `lr_find.json` holds: the sweep, how it ended, the suggestions.
#[derive(Serialize)]
struct Summary<'a> {
    sweep: &'a Sweep,
    steps_run: usize,
    ended: Ended,
    valley: Option<f64>,
    steep: Option<f64>,
    suggestion: Option<f64>,
}

/// Write `curve` into `dir`: `lr_find.csv` (step, lr, loss, smoothed), `lr_find.json` (the
/// sweep, how it ended, the suggestions) and `lr_find.png` (smoothed loss against the rate, log
/// axis, the suggestions marked; titled `title`). A plot that cannot be drawn (no font) is
/// logged, not an error.
pub fn write(dir: &Path, title: &str, sweep: &Sweep, curve: &LrCurve) -> Result<()> {
    let rows = (0..curve.lrs.len()).map(|i| Row {
        step: i + 1,
        lr: curve.lrs[i],
        loss: curve.losses[i],
        smoothed: curve.smoothed[i],
    });
    let csv = dir.join(CSV);
    crate::fsutil::write_bytes_atomic(&csv, &crate::fsutil::csv_bytes(&csv, rows)?)?;
    let summary = Summary {
        sweep,
        steps_run: curve.lrs.len(),
        ended: curve.ended,
        valley: curve.valley,
        steep: curve.steep,
        suggestion: curve.valley,
    };
    crate::fsutil::write_json(&dir.join(JSON), &summary)?;
    let at = |lr: f64| curve.lrs.iter().position(|&x| x == lr).map(|i| curve.smoothed[i]).unwrap_or(f64::NAN);
    let marks: Vec<(&str, f64, f64)> = [("valley", curve.valley), ("steep", curve.steep)]
        .into_iter()
        .filter_map(|(name, lr)| lr.map(|lr| (name, lr, at(lr))))
        .collect();
    let curves =
        crate::plot::LrPlot { lrs: &curve.lrs, losses: &curve.losses, smoothed: &curve.smoothed, marks: &marks };
    if let Err(e) = crate::plot::lr_find(&dir.join(PNG), title, &curves) {
        tracing::warn!("learning-rate plot not written: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rates_grow_exponentially_below_the_end() {
        let s = Sweep::default();
        assert_eq!(s.rate(0), 1e-7);
        assert!((s.rate(50) / 10f64.powi(-3) - 1.0).abs() < 1e-9, "halfway in log space: {}", s.rate(50));
        assert!(s.rate(99) < 10.0 && s.rate(99) > 8.0);
        assert!(Sweep { steps: 5, ..s.clone() }.check().is_err());
        assert!(Sweep { end: 1e-8, ..s.clone() }.check().is_err());
        assert!(Sweep { start: 0.0, ..s }.check().is_err());
    }

    #[test]
    fn smoothing_is_bias_corrected() {
        // A constant loss smooths to itself from the first step on.
        assert!(smooth(&[2.0; 5], BETA).iter().all(|v| (v - 2.0).abs() < 1e-12));
        let s = smooth(&[1.0, 3.0], 0.5);
        assert_eq!(s, vec![1.0, (0.25 + 1.5) / 0.75]);
    }

    #[test]
    fn valley_and_steep_follow_fastai() {
        // Values worked by hand through fastai's Python (`valley`, `steep`).
        let losses = [5.0, 4.0, 4.5, 3.0, 2.0, 1.0, 1.5, 0.8, 2.0, 9.0];
        // Longest decreasing run ends at index 7 (length 6: 5, 4, 3, 2, 1, 0.8), start 7 − 6 = 1;
        // sections 2 → 1 + 2 + 1 = 4.
        assert_eq!(valley(&losses), Some(4));
        let lrs: Vec<f64> = (0..10).map(|i| 10f64.powi(i - 5)).collect();
        // Loss differences (equal steps of log rate): −1, 0.5, −1.5, −1, −1, 0.5, −0.7, 1.2, 7 → i = 2.
        assert_eq!(steep(&lrs, &losses), Some(2));
        // A strictly falling curve: the run starts one before the first point, as in fastai.
        assert_eq!(valley(&[3.0, 2.0, 1.0]), Some(0));
        assert_eq!(valley(&[2.0, 1.0]), Some(1), "fastai's index −1: the last point");
        assert_eq!(valley(&[]), None);
        assert_eq!(steep(&[1.0], &[1.0]), None);
    }

    #[test]
    fn suggestions_come_from_the_window_fastai_uses() {
        // 20 steps: the first 2 and the last 5 are left out, and everything from a NaN on.
        let lrs: Vec<f64> = (0..20).map(|i| 1e-4 * 2f64.powi(i)).collect();
        let mut losses: Vec<f64> = (0..20).map(|i| if i < 12 { 10.0 - i as f64 * 0.5 } else { 100.0 }).collect();
        let c = LrCurve::new(lrs.clone(), losses.clone(), Ended::Completed, 20);
        let (w_lrs, w) = window(&c.lrs, &c.smoothed, 20);
        assert_eq!((w_lrs.len(), w_lrs[0]), (13, lrs[2]));
        assert_eq!(c.valley, valley(w).map(|i| w_lrs[i]));
        assert!(c.valley.is_some() && c.steep.is_some());
        losses[6] = f64::NAN;
        let c = LrCurve::new(lrs.clone(), losses, Ended::NotFinite, 20);
        assert_eq!(window(&c.lrs, &c.smoothed, 20).0.len(), 4, "steps 2..6");
        let short = LrCurve::new(lrs[..4].to_vec(), vec![1.0; 4], Ended::Diverged, 20);
        assert_eq!((short.valley, short.steep), (None, None));
        let err = short.choose(&Sweep::default()).unwrap_err().to_string();
        assert!(err.contains("suggests no rate") && err.contains("--lr"), "{err}");
    }

    #[test]
    fn with_lr_keeps_the_rest() {
        let a = with_lr(&Optimizer::adam(1e-3), 0.5);
        assert_eq!(a, Optimizer::Adam { lr: 0.5, beta1: 0.9, beta2: 0.999, epsilon: 1e-7 });
        assert_eq!(with_lr(&Optimizer::sgd(1.0, 0.9), 2.0), Optimizer::sgd(2.0, 0.9));
    }
}
