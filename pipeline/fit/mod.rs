//! `tlearn fit` (a workflow): a folder of images to a deployable model in one command — split
//! when not split, the backbone fetched, features cached, a warm-start head on pooled features,
//! the whole net fine-tuned with validation choosing the length, the final fit on train +
//! validation for that length, evaluation on test. Every phase is a file target in the fit's
//! folder (`runs/<name>/`), so a killed fit continues where it stopped; `--folds K` runs the
//! recipe once per fold.

mod budget;
mod folds;
mod job;
mod phases;
mod single;
mod start;

use crate::error::Result;
use crate::progress::Sink;
use std::path::Path;

pub use budget::{plan, Costs};
pub use folds::TABLE as FOLDS_TABLE;
pub use job::{FitJob, Fitted};
pub use start::{precision, settings_changes};

/// Run the fit `job` describes; phases already done are skipped.
pub fn run(job: &FitJob, sink: &dyn Sink) -> Result<Fitted> {
    let t = std::time::Instant::now();
    let bb = preflight(job, sink)?;
    let _lock = start::begin(job)?;
    match job.settings.folds {
        Some(k) => folds::run(job, &bb, k, sink),
        None => {
            let split = phases::split(job, &job.run_dir, sink)?;
            single::one(job, &bb, &split, (&job.run_dir, &job.reports), t, sink)
        }
    }
}

/// The backbone (fetched the first time), with what it rules out refused (an input size below
/// its stride, a `--freeze-stride` it does not reach) before the fit records its settings: a
/// refused fit leaves nothing to restart.
fn preflight(job: &FitJob, sink: &dyn Sink) -> Result<crate::backbone::Backbone> {
    let s = &job.settings;
    let bb = phases::backbone(job, sink)?;
    bb.check_input_size(s.size)?;
    if let Some(stride) = s.freeze_stride {
        crate::finetune::freeze::backbone_frozen_before_stride(&bb, s.size, stride)?;
    }
    Ok(bb)
}

/// The commands that use a finished fit, as the user would type them next.
pub fn next_commands(run: &str, runs: &Path, settings: &crate::runs::FitSettings) -> Vec<String> {
    let at = if runs == Path::new(crate::layout::RUNS) { String::new() } else { format!(" --runs {}", runs.display()) };
    vec![
        format!("tlearn predict NEW_IMAGES/ --run {run}{at}"),
        format!("tlearn score NEW_IMAGES/ --run {run}{at} --out scores.csv"),
        format!("tlearn evaluate --run {run}{at} --summary"),
        format!(
            "tlearn fit {} --run {run}-folds --folds 5 {}{at}   # a k-fold estimate of this recipe",
            settings.data.display(),
            settings.recipe_args().join(" ")
        ),
    ]
}
