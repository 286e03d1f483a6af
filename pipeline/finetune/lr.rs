//! The fine-tune's learning rate found rather than given: the range test on the run's own
//! trainer and batches ([`lr_find`]), and `--lr auto` ([`choose_lr`]), which trains at its
//! suggestion.

use super::prepared::{prepare, Purpose, TrainBatches};
use crate::error::{Error, Result};
use crate::params::{Checked, ParamGuard};
use crate::progress::Sink;
use crate::runs::finetune::{default_max_memory, FinetuneConfig};
use crate::spill;
use crate::train::lr_find::{with_lr, LrChoice, LrCurve, Sweep};

/// The learning-rate range test for the fine-tune `cfg` describes (see [`crate::train::lr_find`]):
/// the trainer built as [`run`] builds it (model, trainable set, `--lr-base` ratio, cached
/// trunk), stepping through the training batches as the run would (augmentation, rescale,
/// batch, seed). Nothing is written: neither the model nor the run folder changes (images past
/// the memory budget go to an unlinked file in the system's temporary folder).
pub fn lr_find(cfg: &FinetuneConfig, sweep: &Checked<Sweep>, sink: &dyn Sink) -> Result<LrCurve> {
    cfg.check()?;
    let budget = spill::Budget::new(cfg.max_memory.unwrap_or_else(default_max_memory), &std::env::temp_dir());
    let mut p = prepare(cfg, &budget, Purpose::Sweep, None, sink)?;
    let batches = TrainBatches::of(cfg, &p.train, p.trunk.as_ref());
    let trainable: usize = p.trainer.params.iter().map(|a| a.len()).sum();
    sink.note(&format!(
        "{}: learning-rate sweep over {trainable} trainable parameters, {} training images, {} steps from {:e} to {:e}",
        cfg.model.display(),
        p.train.labels.len(),
        sweep.steps,
        sweep.start,
        sweep.end
    ));
    p.trainer.lr_sweep(batches.source(), &cfg.fit, sweep, sink)
}

/// `--lr auto`: `cfg` at the rate the range test suggests (fastai's `valley`), with `lr_auto`
/// recording the choice (it goes into the run's record). A run continued from its checkpoint
/// keeps the rate its first run chose, unswept (a sweep that came out a hair different would
/// make the settings differ); `--restart` sweeps again.
pub fn choose_lr(cfg: &FinetuneConfig, sweep: &Checked<Sweep>, sink: &dyn Sink) -> Result<FinetuneConfig> {
    if cfg.lr_base.is_some() {
        return Err(Error::Param {
            name: "lr",
            value: "auto".into(),
            reason: "--lr auto finds one rate for every parameter, and --lr-base sets the conv base's apart; \
                     give --lr with --lr-base (tlearn-lr-find sweeps at their ratio), or drop --lr-base"
                .into(),
        });
    }
    let choice = match chosen_before(cfg, sweep)? {
        Some(c) => {
            sink.note(&format!("--lr auto: {:.3e}, as the run's first start chose (its checkpoint)", c.lr));
            c
        }
        None => {
            let curve = lr_find(cfg, sweep, sink)?;
            let c = curve.choose(sweep)?;
            let steep = c.steep.map(|s| format!("{s:.3e}")).unwrap_or_else(|| "none".into());
            sink.note(&format!(
                "--lr auto: training at {:.3e} (valley; steep {steep}); the sweep {}",
                c.lr,
                curve.why()
            ));
            c
        }
    };
    let mut fit = (*cfg.fit).clone();
    fit.optimizer = with_lr(&fit.optimizer, choice.lr);
    Ok(FinetuneConfig { fit: fit.check()?, lr_auto: Some(choice), ..cfg.clone() })
}

/// The choice recorded in the run's checkpoint by an earlier `--lr auto` start with the same sweep,
/// unless the run starts over.
fn chosen_before(cfg: &FinetuneConfig, sweep: &Sweep) -> Result<Option<LrChoice>> {
    let Some((_, saved)) = super::earlier::recorded(cfg)? else { return Ok(None) };
    let choice = saved.get("lr_auto").and_then(|v| serde_json::from_value::<LrChoice>(v.clone()).ok());
    Ok(choice.filter(|c| c.sweep == *sweep))
}
