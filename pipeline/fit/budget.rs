//! `tlearn fit --budget 20m`: the fine-tune's length planned from a measured training step so the
//! whole fit ends within the time given. The plan is made once, after the warm start, and kept in
//! the fit's folder (`plan.json`): a killed fit continues with the same plan, so to the same bytes.

use super::job::FitJob;
use crate::error::{Error, IoContext, Result};
use crate::finetune::FinetuneConfig;
use crate::fsutil;
use crate::params::ParamGuard;
use crate::progress::Sink;
pub use crate::runs::fit::Plan;
use crate::runs::fit::{minutes, seconds, PLAN};
use std::path::Path;

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
    /// Seconds an epoch costs besides its steps and validation: the device copy synced, the
    /// models, checkpoint and history written.
    pub between: f64,
    /// The rehearsal wrote the checkpoint and the plot after each of its epochs, so `between`
    /// holds them; else they are bounded by their pacing's share of the time.
    pub writes_measured: bool,
    /// Seconds each fine-tune and the evaluation pay before their first step: decoding the
    /// images, building the sessions (measured as the measurement paid them).
    pub setup: f64,
    pub batch: usize,
    pub train: usize,
    pub validation: usize,
    pub test: usize,
    /// Views averaged at test time (1 without flips).
    pub views: usize,
    /// Grad-CAM overlays in the report (each a forward and backward pass of one image).
    pub explain: usize,
    /// A validated fine-tune runs (not with `--final-epochs`).
    pub validated: bool,
    pub final_fit: bool,
    /// `--progressive`: the early epochs' image area over the full size's (what their steps
    /// cost of a full step's), and how many each fine-tune runs.
    pub presize: Option<(f64, usize)>,
}

impl Costs {
    /// Checkpoints and the history plot each take at most this share of a fit's time on top of
    /// its epochs (both are paced: a rehearsal that put some off cannot show what they cost later).
    const CHECKPOINTS: f64 = 1.0 + 2.0 * crate::train::pacing::SHARE;

    /// What an epoch's time is multiplied by for the writes `between` may not hold: nothing when
    /// the rehearsal wrote after every epoch (a fit writes at most as often), else their bound.
    fn writes(&self) -> f64 {
        if self.writes_measured {
            1.0
        } else {
            Self::CHECKPOINTS
        }
    }

    fn tune_epoch(&self) -> f64 {
        self.tune_epoch_at(1.0)
    }

    fn final_epoch(&self) -> f64 {
        self.final_epoch_at(1.0)
    }

    /// A validated epoch on images of `area` times the fit's (steps and predictions scale with
    /// it, the writes between epochs do not).
    fn tune_epoch_at(&self, area: f64) -> f64 {
        if !self.validated {
            return 0.0;
        }
        let steps = self.train.div_ceil(self.batch) as f64 * self.step;
        ((steps + self.validation as f64 * self.predict) * area + self.between) * self.writes()
    }

    fn final_epoch_at(&self, area: f64) -> f64 {
        if self.final_fit {
            let steps = (self.train + self.validation).div_ceil(self.batch) as f64 * self.step;
            (steps * area + self.between) * self.writes()
        } else {
            0.0
        }
    }

    /// What does not grow with the epochs: each phase's set-up, the test report and the early
    /// epochs at the smaller size (each fine-tune's, a phase of their own).
    fn fixed(&self) -> f64 {
        let tunes = self.validated as u8 as f64 + self.final_fit as u8 as f64;
        let per_image = self.step / self.batch as f64;
        let (presize, phases) = match self.presize {
            Some((area, epochs)) => {
                (epochs as f64 * (self.tune_epoch_at(area) + self.final_epoch_at(area)), 1.0 + 2.0 * tunes)
            }
            None => (0.0, 1.0 + tunes),
        };
        phases * self.setup + (self.test * self.views) as f64 * self.predict + self.explain as f64 * per_image + presize
    }

    /// What follows the validated fine-tune besides the final fit's full-size epochs: the final
    /// fit's set-up (and its early epochs at the smaller size), the test report's.
    fn after_tune(&self) -> f64 {
        let per_image = self.step / self.batch as f64;
        let report = self.setup + (self.test * self.views) as f64 * self.predict + self.explain as f64 * per_image;
        if !self.final_fit {
            return report;
        }
        let early = self.presize.map_or(0.0, |(area, epochs)| epochs as f64 * self.final_epoch_at(area) + self.setup);
        report + self.setup + early
    }
}

/// The most epochs (≤ `cap`) whose validated fine-tune, final fit (as long at most; either may
/// be left out) and test evaluation end within `budget` seconds, `spent` of them gone; an error
/// when not even one epoch fits, saying what would.
pub fn plan(costs: &Costs, budget: f64, spent: f64, cap: usize) -> Result<Plan> {
    let per_epoch = costs.tune_epoch() + costs.final_epoch();
    let left = budget * FILL - spent - costs.fixed();
    let fits = if per_epoch > 0.0 { (left / per_epoch).floor().max(0.0) as usize } else { cap };
    let epochs = fits.min(cap);
    if epochs == 0 {
        let need = (spent + costs.fixed() + per_epoch) / FILL;
        return Err(Error::Param {
            name: "budget",
            value: minutes(budget),
            reason: format!(
                "leaves no time for one epoch: {} went to the split, features, warm start and the rehearsal, \
                 one epoch takes ≈ {} here ({} per step of {} images) and the phases' set-up and the test \
                 report ≈ {}{}; rerun with --budget {} or more (what is done is kept), or a smaller --size with \
                 --restart (a step's time grows with the image's area)",
                seconds(spent),
                seconds(per_epoch),
                seconds(costs.step),
                costs.batch,
                seconds(costs.fixed()),
                if costs.presize.is_some() { ", with the --progressive epochs (fewer of them save time)" } else { "" },
                minutes(if need < 60.0 { need } else { (need / 60.0).ceil() * 60.0 })
            ),
        });
    }
    Ok(Plan {
        epochs,
        budget_seconds: budget,
        spent_seconds: spent,
        eta_seconds: spent + costs.fixed() + epochs as f64 * per_epoch,
        epoch_seconds: if costs.validated { costs.tune_epoch() } else { costs.final_epoch() },
        step_seconds: costs.step,
        predict_seconds: costs.predict,
        final_epoch_seconds: costs.final_epoch(),
        after_seconds: costs.after_tune(),
        final_epochs: None,
    })
}

/// The final fit's length under `plan` once the validated fine-tune ended `elapsed` seconds into
/// the fit, its full-size epochs having taken `tune_epoch` seconds each: the best epoch's length
/// `best`, or fewer when those epochs ran slower than rehearsed (another process on the cores, a
/// slower disk) and the rest would overrun. The rest is taken to run as much slower. 0 when not
/// one final epoch fits.
pub fn final_length(plan: &Plan, tune_epoch: f64, elapsed: f64, best: usize) -> usize {
    if plan.final_epoch_seconds <= 0.0 || plan.epoch_seconds <= 0.0 {
        return best;
    }
    let slower = (tune_epoch / plan.epoch_seconds).max(1.0);
    let left = plan.budget_seconds * FILL - elapsed - plan.after_seconds * slower;
    let fits = (left / (plan.final_epoch_seconds * slower)).floor().max(0.0) as usize;
    fits.min(best)
}

/// `--budget` with a final fit: its length decided once, when the validated fine-tune `tuned`
/// (best epoch `best`) ended, and kept in `dir/plan.json` (a killed final fit continues with the
/// same length). Without a plan, `best`.
pub(super) fn final_fit(
    plan: Option<Plan>,
    tuned: &crate::runs::FinetuneRecord,
    best: usize,
    (dir, started): (&Path, std::time::Instant),
    sink: &dyn Sink,
) -> Result<(usize, Option<Plan>)> {
    let Some(mut plan) = plan else { return Ok((best, None)) };
    if let Some(n) = plan.final_epochs {
        return Ok((n, Some(plan)));
    }
    let full = tuned.train_seconds - tuned.presize_seconds.unwrap_or(0.0);
    let tune_epoch = full / tuned.epochs_run.max(1) as f64;
    let n = final_length(&plan, tune_epoch, started.elapsed().as_secs_f64(), best);
    if n < best {
        sink.note(&format!(
            "budget {}: the fine-tune's epochs took ≈ {} each, {:.2}× the rehearsal's; the final fit runs {n} of \
             its {best} epochs to end within the budget{}",
            minutes(plan.budget_seconds),
            seconds(tune_epoch),
            tune_epoch / plan.epoch_seconds,
            if n == 0 { " (none: the validated fine-tune's model is the fit's)" } else { "" }
        ));
    }
    plan.final_epochs = Some(n);
    fsutil::write_json(&dir.join(PLAN), &plan)?;
    Ok((n, Some(plan)))
}

/// `--budget`: `cfg` (the first fine-tune: the validated one, or the final fit alone with
/// `--final-epochs`) with its most epochs planned so the fit ends within the budget (a fold within
/// its share), counted from `started`; the plan made once and kept in `dir/plan.json`. `cfg` is
/// returned unchanged without a budget.
pub(super) fn planned(
    job: &FitJob,
    cfg: FinetuneConfig,
    (split, dir): (&Path, &Path),
    started: std::time::Instant,
    sink: &dyn Sink,
) -> Result<(FinetuneConfig, Option<Plan>)> {
    let s = &job.settings;
    let Some(total) = s.budget else { return Ok((cfg, None)) };
    let budget = total / s.folds.unwrap_or(1) as f64;
    let path = dir.join(PLAN);
    let kept = match path.is_file() {
        true => Some(fsutil::read_json::<Plan>(&path)?),
        false => None,
    };
    let plan = match kept {
        Some(p) if p.budget_seconds == budget => p,
        Some(p) => {
            return Err(Error::BadData {
                path,
                reason: format!(
                    "planned for a budget of {}, not {}: the fine-tune follows its plan; rerun with the budget it \
                     was planned for, or add --restart to start over",
                    minutes(p.budget_seconds),
                    minutes(budget)
                ),
            })
        }
        None => {
            sink.note(&format!(
                "budget {}: timing the fine-tune's epochs at {} px on a few batches",
                minutes(budget),
                s.size
            ));
            // The rehearsal's files go to a folder of its own that removes itself (one a killed
            // fit left behind is removed first).
            remove_rehearsals(dir)?;
            let scratch = tempfile::Builder::new().prefix(REHEARSAL).tempdir_in(dir).at(dir)?;
            let cost = crate::finetune::measure(&cfg, scratch.path(), sink)?;
            drop(scratch);
            let spent = started.elapsed().as_secs_f64();
            let costs = Costs {
                step: cost.times.step,
                predict: cost.times.predict,
                between: cost.times.between,
                writes_measured: cost.times.writes_each_epoch,
                setup: cost.setup,
                batch: s.batch,
                train: count(split, "train")?,
                validation: count(split, "validation")?,
                test: count(split, "test")?,
                views: if s.flips { 4 } else { 1 },
                explain: job.explain,
                validated: s.final_epochs.is_none(),
                final_fit: s.final_fit,
                presize: s.progressive.map(|p| ((p.size as f64 / s.size as f64).powi(2), p.epochs)),
            };
            let p = plan(&costs, budget, spent, cfg.fit.epochs)?;
            fsutil::write_json(&path, &p)?;
            p
        }
    };
    sink.note(&plan.describe());
    let mut fit = (*cfg.fit).clone();
    fit.epochs = plan.epochs;
    Ok((FinetuneConfig { fit: fit.check()?, ..cfg }, Some(plan)))
}

/// The prefix of the rehearsal's scratch folder in the fit's folder.
pub(super) const REHEARSAL: &str = ".rehearsal.";

/// Remove the rehearsal folders a killed fit left in `dir` (a fit's folder).
pub(super) fn remove_rehearsals(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with(REHEARSAL) && e.file_type().at(&p)?.is_dir() {
            std::fs::remove_dir_all(&p).at(&p)?;
        }
    }
    Ok(())
}

/// Images in the split's `part` (0 when it has none).
fn count(split: &Path, part: &str) -> Result<usize> {
    if !split.join(part).is_dir() {
        return Ok(0);
    }
    Ok(crate::dataset::list_split(split, part)?.1.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs() -> Costs {
        Costs {
            step: 1.0,
            predict: 0.1,
            between: 0.0,
            writes_measured: false,
            setup: 0.0,
            batch: 10,
            train: 100,
            validation: 20,
            test: 30,
            views: 1,
            explain: 0,
            validated: true,
            final_fit: true,
            presize: None,
        }
    }

    #[test]
    fn the_plan_fills_the_budget_with_whole_epochs() {
        // An epoch: 10 steps + 20 predictions = 12 s validated, 12 steps final: 24 s, and a tenth
        // more each for checkpoints and the plot; the test 3 s.
        let epoch = 24.0 * Costs::CHECKPOINTS;
        let p = plan(&costs(), 300.0, 20.0, 50).unwrap();
        assert_eq!(p.epochs, ((300.0 * FILL - 20.0 - 3.0) / epoch).floor() as usize);
        assert!(p.eta_seconds <= 300.0 * FILL && p.eta_seconds + epoch > 300.0 * FILL);
        assert_eq!(plan(&costs(), 300.0, 20.0, 4).unwrap().epochs, 4, "the cap holds");
        let no_final = Costs { final_fit: false, ..costs() };
        assert!(plan(&no_final, 300.0, 20.0, 50).unwrap().epochs > p.epochs);
    }

    #[test]
    fn the_final_fit_alone_plans_its_own_epochs() {
        // No validated pass: an epoch is the final fit's 12 steps (times the writes' bound), one
        // set-up fewer.
        let alone = Costs { validated: false, setup: 5.0, ..costs() };
        let p = plan(&alone, 300.0, 20.0, 50).unwrap();
        let epoch = 12.0 * Costs::CHECKPOINTS;
        assert_eq!(p.epochs, ((300.0 * FILL - 20.0 - 3.0 - 10.0) / epoch).floor() as usize);
        assert!((p.epoch_seconds - epoch).abs() < 1e-9, "{p:?}");
        let both = plan(&Costs { setup: 5.0, ..costs() }, 300.0, 20.0, 50).unwrap();
        assert!(p.epochs > 2 * both.epochs - 1, "{p:?} vs {both:?}");
        assert_eq!(plan(&alone, 300.0, 20.0, 3).unwrap().epochs, 3, "the length asked is the cap");
    }

    #[test]
    fn writes_measured_after_every_epoch_are_not_bounded_again() {
        let bounded = plan(&Costs { between: 2.0, ..costs() }, 600.0, 20.0, 50).unwrap();
        let measured = plan(&Costs { between: 2.0, writes_measured: true, ..costs() }, 600.0, 20.0, 50).unwrap();
        assert!((bounded.epoch_seconds - 14.0 * Costs::CHECKPOINTS).abs() < 1e-9, "{bounded:?}");
        assert!((measured.epoch_seconds - 14.0).abs() < 1e-9, "{measured:?}");
        assert_eq!(measured.epochs, ((600.0 * FILL - 20.0 - 3.0) / 28.0).floor() as usize);
    }

    #[test]
    fn set_up_and_the_report_come_off_the_top() {
        let p = plan(&costs(), 300.0, 20.0, 50).unwrap();
        // Three phases' set-up of 9 s and 4 Grad-CAM images of 0.1 s each: 27.4 s, one epoch.
        let slow = Costs { setup: 9.0, explain: 4, ..costs() };
        assert_eq!(plan(&slow, 300.0, 20.0, 50).unwrap().epochs, p.epochs - 1);
        let saving = Costs { between: 2.0, ..costs() };
        assert!(plan(&saving, 300.0, 20.0, 50).unwrap().epochs < p.epochs, "2 s of writes an epoch");
        let flips = Costs { views: 4, ..costs() };
        assert!(plan(&flips, 300.0, 20.0, 50).unwrap().eta_seconds > p.eta_seconds);
    }

    #[test]
    fn early_epochs_at_a_smaller_size_cost_their_share_of_the_area() {
        let p = plan(&costs(), 300.0, 20.0, 50).unwrap();
        // Four epochs at half the side: a quarter of four epochs' steps in each fine-tune, so one
        // epoch (24 s with writes) in all.
        let early = Costs { presize: Some((0.25, 4)), ..costs() };
        let q = plan(&early, 300.0, 20.0, 50).unwrap();
        let epoch = 24.0 * Costs::CHECKPOINTS;
        let fixed = |p: &Plan| p.eta_seconds - 20.0 - p.epochs as f64 * epoch;
        assert!((fixed(&q) - fixed(&p) - epoch).abs() < 1e-9, "{q:?} vs {p:?}");
        assert_eq!(q.epochs, p.epochs - 1);
        // The writes between epochs take as long at any size: 2 s in each of the 4 + 4 early epochs.
        let writes = |presize| plan(&Costs { between: 2.0, presize, ..costs() }, 600.0, 20.0, 50).unwrap();
        let (w, wo) = (writes(Some((0.25, 4))), writes(None));
        let fixed_w = |p: &Plan| p.eta_seconds - 20.0 - p.epochs as f64 * 28.0 * Costs::CHECKPOINTS;
        assert!((fixed_w(&w) - fixed_w(&wo) - 4.0 * (5.0 + 5.0) * Costs::CHECKPOINTS).abs() < 1e-9, "{w:?}");
        let e = plan(&Costs { presize: Some((0.25, 4)), ..costs() }, 40.0, 20.0, 50).unwrap_err().to_string();
        assert!(e.contains("--progressive epochs"), "{e}");
        let set_up = Costs { setup: 5.0, ..early.clone() };
        let with = plan(&set_up, 300.0, 20.0, 50).unwrap();
        let without = plan(&Costs { presize: None, ..set_up }, 300.0, 20.0, 50).unwrap();
        assert!((fixed(&with) - fixed(&without) - epoch - 10.0).abs() < 1e-9, "and two set-ups of 5 s");
    }

    #[test]
    fn what_follows_the_validated_fine_tune_is_the_plan_less_its_own_phases() {
        for c in [costs(), Costs { setup: 5.0, explain: 3, presize: Some((0.25, 4)), ..costs() }] {
            let p = plan(&c, 600.0, 20.0, 50).unwrap();
            let early = c.presize.map_or(0.0, |(a, n)| n as f64 * c.tune_epoch_at(a) + c.setup);
            let tuned = 20.0 + c.setup + early + p.epochs as f64 * c.tune_epoch();
            let rest = p.eta_seconds - tuned - p.epochs as f64 * p.final_epoch_seconds;
            assert!((rest - p.after_seconds).abs() < 1e-9, "{rest} vs {p:?}");
        }
    }

    #[test]
    fn a_fine_tune_slower_than_rehearsed_shortens_the_final_fit() {
        let p = plan(&costs(), 300.0, 20.0, 50).unwrap();
        let tuned = |slower: f64| 20.0 + p.epochs as f64 * p.epoch_seconds * slower;
        assert_eq!(final_length(&p, p.epoch_seconds, tuned(1.0), p.epochs), p.epochs, "as rehearsed");
        assert_eq!(final_length(&p, p.epoch_seconds / 2.0, tuned(0.5), 3), 3, "never past the best epoch");
        // 1.3× slower: as many final epochs as end within the plan's share at that pace.
        let (elapsed, slow_epoch) = (tuned(1.3), p.epoch_seconds * 1.3);
        let n = final_length(&p, slow_epoch, elapsed, p.epochs);
        let end = |n: usize| elapsed + (p.after_seconds + n as f64 * p.final_epoch_seconds) * 1.3;
        assert!(n < p.epochs && end(n) <= 300.0 * FILL && end(n + 1) > 300.0 * FILL, "{n} of {}", p.epochs);
        assert_eq!(final_length(&p, slow_epoch, 290.0, p.epochs), 0, "no time left: no final fit");
        let older = Plan { final_epoch_seconds: 0.0, ..p.clone() };
        assert_eq!(final_length(&older, slow_epoch, 290.0, 7), 7, "a plan without the final epoch's cost");
    }

    #[test]
    fn a_budget_too_small_for_one_epoch_says_what_would_do() {
        let e = plan(&costs(), 40.0, 20.0, 50).unwrap_err().to_string();
        // (20 + 3 + 28.8) / 0.9 = 57.6 s
        assert!(e.contains("--budget 58s") && e.contains("smaller --size") && e.contains("--restart"), "{e}");
        let p = plan(&costs(), 58.0, 20.0, 50).unwrap();
        assert_eq!(p.epochs, 1, "the budget it names fits one epoch");
    }
}
