//! The epochs of a fit, owned by the [`Trainer`]: each shuffles the previous order (or draws a
//! class-balanced one), steps through
//! its batches at the scheduled rate (targets smoothed, samples weighted by class), validates, syncs
//! the host copy and hands the record to the caller, which may stop the fit.

use super::config::FitConfig;
use super::data::{smoothed_labels, Batch, BatchSource, InMemory};
use super::state::{FitState, State};
use super::trainer::Trainer;
use crate::error::{Error, Result};
use crate::history::Epoch;
use crate::metrics;
use crate::params::Checked;
use ndarray::ArrayD;
use rand::SeedableRng;

impl Trainer {
    /// Fit on (x, labels), validating on (vx, vlabels) every epoch; `on_epoch` sees each record.
    pub fn fit(
        &mut self,
        x: &ArrayD<f32>,
        labels: &[usize],
        val: Option<&dyn BatchSource>,
        cfg: &Checked<FitConfig>,
        mut on_epoch: impl FnMut(&Epoch),
    ) -> Result<Vec<Epoch>> {
        self.fit_with(&InMemory { x, labels }, val, cfg, None, |e, _, _| {
            on_epoch(e);
            Ok(true)
        })
    }

    /// Fit on `data`, validating on `val` every epoch. `on_epoch(record, trainer, state)` may
    /// save checkpoints; it returns false to stop early. Shuffling, dropout masks and whatever
    /// `data` draws come from one ChaCha8 stream seeded with `cfg.seed`; `resume` (with the
    /// trainer's parameters restored) continues a fit so that it ends exactly as an uninterrupted
    /// one. `learner::fit` drives this with checkpoints, best-model files and early stopping.
    pub fn fit_with(
        &mut self,
        data: &dyn BatchSource,
        val: Option<&dyn BatchSource>,
        cfg: &Checked<FitConfig>,
        resume: Option<FitState>,
        mut on_epoch: impl FnMut(&Epoch, &Trainer, &FitState) -> Result<bool>,
    ) -> Result<Vec<Epoch>> {
        let labels = data.labels();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
        let n = labels.len();
        let steps_per_epoch = n.div_ceil(cfg.batch);
        let mut fs = match resume {
            Some(r) => {
                rng.set_word_pos(r.rng_word_pos);
                r
            }
            None => FitState {
                epoch: 0,
                optim: State::new(cfg.optimizer.clone(), &self.params),
                rng_word_pos: rng.get_word_pos(),
                order: vec![],
                history: vec![],
            },
        };
        // Each epoch shuffles the previous epoch's order (or draws a balanced one).
        let mut order = std::mem::take(&mut fs.order);
        if order.len() != n {
            order = (0..n).collect();
        }
        let start = fs.epoch + 1;
        let class_weight = self.begin(cfg, labels, &fs.optim)?;
        for epoch in start..=cfg.epochs {
            let t = std::time::Instant::now();
            cfg.sampling.next_order(&mut order, labels, &mut rng);
            let (mut loss_sum, mut correct, mut last_lr) = (0.0f64, 0usize, f64::NAN);
            for (k, chunk) in order.chunks(cfg.batch).enumerate() {
                let lr = cfg.lr_at(epoch - 1, (epoch - 1) * steps_per_epoch + k, steps_per_epoch);
                let (loss, probs) =
                    self.train_batch(data, chunk, cfg, class_weight.as_deref(), lr, &mut fs.optim, &mut rng)?;
                if !loss.is_finite() {
                    return Err(Error::Other(format!("epoch {epoch}: loss is {loss}; lower the learning rate")));
                }
                loss_sum += loss as f64 * chunk.len() as f64;
                correct += metrics::predicted(&probs).iter().zip(chunk).filter(|(a, &i)| **a == labels[i]).count();
                last_lr = lr;
            }
            let (val_loss, val_accuracy) = self.validate(val)?;
            let rec = Epoch {
                epoch,
                loss: loss_sum / n as f64,
                accuracy: correct as f64 / n as f64,
                val_loss,
                val_accuracy,
                lr: last_lr,
                seconds: t.elapsed().as_secs_f64(),
            };
            self.sync(&mut fs.optim)?;
            fs.epoch = epoch;
            fs.rng_word_pos = rng.get_word_pos();
            fs.order.clone_from(&order);
            fs.history.push(rec.clone());
            if !on_epoch(&rec, self, &fs)? {
                break;
            }
        }
        // `params` holds the last epoch's values; the host copy is authoritative again.
        self.resident = None;
        Ok(fs.history)
    }

    /// Ready the trainer for steps with `cfg` from the optimizer state `state` (which parameters
    /// decay, the parameters and slots on the device); the class weights of `labels`.
    pub(super) fn begin(&mut self, cfg: &FitConfig, labels: &[usize], state: &State) -> Result<Option<Vec<f64>>> {
        self.groups.decayed = self.params.iter().map(|p| cfg.weight_decay > 0.0 && p.ndim() >= 2).collect();
        let class_weight = match &cfg.class_weight {
            Some(c) => Some(c.weights(labels, self.n_classes)?),
            None => None,
        };
        self.start(state)?;
        Ok(class_weight)
    }

    /// One step on the samples `chunk` of `data` at the scheduled rate `lr`: their inputs, then
    /// dropout masks, drawn from `rng` in that order; targets smoothed and weighted as `cfg`
    /// says. Returns the batch loss and outputs.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn train_batch(
        &mut self,
        data: &dyn BatchSource,
        chunk: &[usize],
        cfg: &FitConfig,
        class_weight: Option<&[f64]>,
        lr: f64,
        optim: &mut State,
        rng: &mut rand_chacha::ChaCha8Rng,
    ) -> Result<(f32, ArrayD<f32>)> {
        let labels = data.labels();
        let xb = data.batch(chunk, rng)?;
        let lb: Vec<usize> = chunk.iter().map(|&i| labels[i]).collect();
        let (y, weights) = self.targets(&lb, cfg, class_weight);
        let batch = Batch { x: xb, y, weights, masks: self.draw_masks(chunk.len(), rng) };
        let decay = (lr * cfg.weight_decay) as f32;
        let out = self.step(batch, cfg.optimizer.step_lr(lr, optim.step + 1), decay)?;
        optim.step += 1;
        Ok(out)
    }

    /// A batch's training targets (label smoothing) and sample weights (class weights).
    fn targets(
        &self,
        labels: &[usize],
        cfg: &FitConfig,
        class_weight: Option<&[f64]>,
    ) -> (ArrayD<f32>, Option<ArrayD<f32>>) {
        let y = smoothed_labels(labels, self.train.loss, self.n_classes, cfg.label_smoothing);
        let weights =
            class_weight.map(|w| ArrayD::from_shape_fn(ndarray::IxDyn(&[labels.len(), 1]), |i| w[labels[i[0]]] as f32));
        (y, weights)
    }

    /// Loss and accuracy on the validation samples; NaN (not measured) without any.
    fn validate(&mut self, val: Option<&dyn BatchSource>) -> Result<(f64, f64)> {
        match val {
            Some(v) if !v.labels().is_empty() => {
                let (loss, vp) = self.evaluate(v, 256)?;
                Ok((loss, metrics::accuracy(&metrics::predicted(&vp), v.labels())))
            }
            _ => Ok((f64::NAN, f64::NAN)),
        }
    }
}
