//! A fine-tune's cost measured before it runs: the trainer built as [`super::run`] builds it,
//! the learner rehearsed on a few of the run's own batches. `tlearn fit --budget` plans from it.

use super::prepared::{prepare, ImageBatches, Purpose, TrainBatches};
use crate::error::Result;
use crate::progress::Sink;
use crate::runs::finetune::{default_max_memory, FinetuneConfig};
pub use crate::train::timing::StepTimes;
use std::path::Path;

/// What one fine-tune of `cfg` costs here.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cost {
    pub times: StepTimes,
    /// Seconds to open the model, decode the images, build the sessions and warm them up: what
    /// each fine-tune pays once.
    pub setup: f64,
}

/// Measure the fine-tune `cfg` describes, rehearsing in `scratch` (a folder the caller
/// removes). Neither the model nor the run folder changes.
pub fn measure(cfg: &FinetuneConfig, scratch: &Path, sink: &dyn Sink) -> Result<Cost> {
    let t = std::time::Instant::now();
    // Images past the memory budget spill beside the rehearsal, as the run's spill beside it.
    let budget = crate::spill::Budget::new(cfg.max_memory.unwrap_or_else(default_max_memory), scratch);
    let mut p = prepare(cfg, &budget, Purpose::Run, None, sink)?;
    let prepared = t.elapsed().as_secs_f64();
    let batches = TrainBatches::of(cfg, &p.train, p.trunk.as_ref());
    let val = p.val.as_ref().map(|set| ImageBatches { set, augment: None, rescale: cfg.rescale });
    let val = val.as_ref().map(|v| v as &dyn crate::train::BatchSource);
    let times = p.trainer.time_epochs(batches.source(), val, &cfg.fit, scratch)?;
    Ok(Cost { times, setup: prepared + times.warm_up })
}
