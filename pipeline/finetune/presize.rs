//! `--progressive SIZE:EPOCHS` (progressive resizing): the fine-tune's first epochs at a smaller
//! image size, in the run's `presize/` folder — a fit of its own, checkpointed and continued like
//! any, its history beside it — whose last weights the epochs at the model's own size start from.
//! A step costs about the image's area, so an epoch at 224 costs ≈ 0.56 of one at 300.

use super::prepared::{comparable, prepare, ImageBatches, Prepared, Purpose, TrainBatches};
use crate::error::{Error, Result};
use crate::lock::Lock;
use crate::progress::Sink;
use crate::runs::finetune::memory_budget;
use crate::runs::FinetuneConfig;
use crate::train::learner::{self, Checkpointing, FitOptions, Live};
use crate::train::{BatchSource, Trainer};
use ndarray::ArrayD;

/// The folder in a run that holds the epochs at the smaller size.
pub const DIR: &str = "presize";

/// The weights the epochs at the model's own size start from, and what making them took.
pub(super) struct Start {
    params: Vec<(String, ArrayD<f32>)>,
    pub seconds: f64,
}

impl Start {
    /// `tr` (the same model at its own size, the same parameters selected) at these weights.
    pub fn apply(self, tr: &mut Trainer) -> Result<()> {
        let same_names = self.params.iter().map(|(n, _)| n).eq(tr.train.params.iter());
        if !same_names {
            return Err(Error::Other("--progressive: the two sizes train different parameters".into()));
        }
        for (i, (name, v)) in self.params.into_iter().enumerate() {
            if v.shape() != tr.params[i].shape() {
                return Err(Error::Other(format!("--progressive: {name} changes shape with the size")));
            }
            tr.params[i] = v;
        }
        Ok(())
    }
}

/// The epochs at the smaller size (continued from `presize/checkpoint.onnx`, replayed when
/// finished), or None without `--progressive`.
/// The run's folder is locked once the model and images have passed their checks, and stays
/// locked with the returned lock (the run goes on holding it); the images at the smaller size had
/// a memory budget of their own and are gone when this returns.
pub(super) fn run(cfg: &FinetuneConfig, sink: &dyn Sink) -> Result<Option<(Start, Lock)>> {
    let Some(p) = cfg.progressive else { return Ok(None) };
    let dir = cfg.run_dir.join(DIR);
    let budget = memory_budget(cfg);
    let Prepared { train, val, mut trainer, .. } = prepare(cfg, &budget, Purpose::Run, Some(p.size), sink)?;
    let run_lock = crate::lock::dir(&cfg.run_dir)?;
    // A lock of its own inside the run's: taking it clears what a killed writer left here.
    let _lock = crate::lock::dir(&dir)?;
    sink.note(&format!("progressive resizing: epochs 1–{} at {}×{} → {}", p.epochs, p.size, p.size, dir.display()));
    let t = std::time::Instant::now();
    let mut fit = (*cfg.fit).clone();
    fit.epochs = p.epochs;
    let title = format!("{}: the first {} epochs at {} px", crate::runs::name_of(&cfg.run_dir), p.epochs, p.size);
    let o = FitOptions {
        fit: crate::params::ParamGuard::check(fit)?,
        checkpoint: Some(Checkpointing {
            path: dir.join(crate::train::checkpoint::CHECKPOINT),
            config: comparable(cfg, &train, val.as_ref()),
            resume: cfg.resume,
            share: crate::train::pacing::SHARE,
        }),
        models: Some(dir.clone()),
        patience: None,
        wrap: None,
        live: Some(Live { dir, title }),
    };
    let batches = TrainBatches::of(cfg, &train, None);
    let plain_val = val.as_ref().map(|set| ImageBatches { set, augment: None, rescale: cfg.rescale });
    let validation = plain_val.as_ref().map(|v| v as &dyn BatchSource);
    let fitted = learner::fit(&mut trainer, batches.source(), validation, &o, sink)?;
    let params = trainer.train.params.iter().cloned().zip(std::mem::take(&mut trainer.params)).collect();
    Ok(Some((Start { params, seconds: t.elapsed().as_secs_f64() + fitted.restored_seconds }, run_lock)))
}
