//! `tlearn fit --budget 20m`: the fine-tune's length planned from a measured training step so the
//! whole fit ends within the time given. The plan is made once, after the warm start, and kept in
//! the fit's folder (`plan.json`): a killed fit continues with the same plan, so to the same bytes.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The plan's file in the fit's folder.
pub const PLAN: &str = "plan.json";

/// The share of the budget the plan fills: the rest absorbs what the measurement misses (a
/// slower epoch, the records, the report).
const FILL: f64 = 0.9;

/// What the plan is made from.
#[derive(Clone, Debug, PartialEq)]
pub struct Costs {
    /// Seconds of one training step of `batch` images at the fit's size, measured.
    pub step: f64,
    /// Seconds to predict one image (one view), measured.
    pub predict: f64,
    pub batch: usize,
    pub train: usize,
    pub validation: usize,
    pub test: usize,
    /// Views averaged at test time (1 without flips).
    pub views: usize,
    pub final_fit: bool,
}

/// The planned length and what it should take.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The validated fine-tune's most epochs (the final fit runs at most as many).
    pub epochs: usize,
    pub budget_seconds: f64,
    /// Seconds spent before the plan (split, features, warm start, the measurement).
    pub spent_seconds: f64,
    /// The planned end, counted from the fit's start, at the most epochs.
    pub eta_seconds: f64,
    pub step_seconds: f64,
    pub predict_seconds: f64,
}

impl Costs {
    fn tune_epoch(&self) -> f64 {
        self.train.div_ceil(self.batch) as f64 * self.step + self.validation as f64 * self.predict
    }

    fn final_epoch(&self) -> f64 {
        if self.final_fit {
            (self.train + self.validation).div_ceil(self.batch) as f64 * self.step
        } else {
            0.0
        }
    }

    fn evaluation(&self) -> f64 {
        (self.test * self.views) as f64 * self.predict
    }
}

/// The most epochs (≤ `cap`) whose validated fine-tune, final fit (as long at most) and test
/// evaluation end within `budget` seconds, `spent` of them gone; an error when not even one
/// epoch fits, saying what would.
pub fn plan(costs: &Costs, budget: f64, spent: f64, cap: usize) -> Result<Plan> {
    let per_epoch = costs.tune_epoch() + costs.final_epoch();
    let left = budget * FILL - spent - costs.evaluation();
    let fits = if per_epoch > 0.0 { (left / per_epoch).floor().max(0.0) as usize } else { cap };
    let epochs = fits.min(cap);
    if epochs == 0 {
        let need = (spent + costs.evaluation() + per_epoch) / FILL;
        return Err(Error::Param {
            name: "budget",
            value: format!("{:.0} s", budget),
            reason: format!(
                "leaves no time for one epoch: {spent:.0} s went to the split, features and warm start, one \
                 epoch takes ≈ {per_epoch:.0} s here ({:.2} s per step of {}); give --budget {} or more, or a \
                 smaller --size",
                costs.step,
                costs.batch,
                minutes(need)
            ),
        });
    }
    let eta = spent + costs.evaluation() + epochs as f64 * per_epoch;
    Ok(Plan {
        epochs,
        budget_seconds: budget,
        spent_seconds: spent,
        eta_seconds: eta,
        step_seconds: costs.step,
        predict_seconds: costs.predict,
    })
}

/// `12m`, rounded up to whole minutes.
pub fn minutes(seconds: f64) -> String {
    format!("{}m", (seconds / 60.0).ceil().max(1.0) as u64)
}

impl Plan {
    /// One line for the log and the record.
    pub fn describe(&self) -> String {
        format!(
            "budget {}: up to {} epochs ({:.2} s per training step, {:.3} s per image predicted); \
             the fit should end within {} of its start ({:.0} s spent before the plan)",
            minutes(self.budget_seconds),
            self.epochs,
            self.step_seconds,
            self.predict_seconds,
            minutes(self.eta_seconds),
            self.spent_seconds
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs() -> Costs {
        Costs { step: 1.0, predict: 0.1, batch: 10, train: 100, validation: 20, test: 30, views: 1, final_fit: true }
    }

    #[test]
    fn the_plan_fills_the_budget_with_whole_epochs() {
        // An epoch: 10 steps + 20 predictions = 12 s validated, 12 steps final: 24 s; the test 3 s.
        let p = plan(&costs(), 300.0, 20.0, 50).unwrap();
        assert_eq!(p.epochs, ((300.0 * FILL - 20.0 - 3.0) / 24.0f64).floor() as usize);
        assert!(p.eta_seconds <= 300.0 * FILL && p.eta_seconds + 24.0 > 300.0 * FILL);
        assert_eq!(plan(&costs(), 300.0, 20.0, 4).unwrap().epochs, 4, "the cap holds");
        let no_final = Costs { final_fit: false, ..costs() };
        assert!(plan(&no_final, 300.0, 20.0, 50).unwrap().epochs > p.epochs);
    }

    #[test]
    fn a_budget_too_small_for_one_epoch_says_what_would_do() {
        let e = plan(&costs(), 40.0, 20.0, 50).unwrap_err().to_string();
        assert!(e.contains("--budget 1m") && e.contains("smaller --size"), "{e}");
    }
}
