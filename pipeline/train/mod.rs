//! Training on stock onnxruntime: the training-graph compiler ([`graph`]), optimizers
//! ([`optim`]), and the loop that fits any compiled classifier on in-memory tensors.

pub mod checkpoint;
pub mod conv;
pub mod graph;
pub mod learner;
pub mod nchwc;
pub mod optim;
pub mod poolconv;
pub mod resident;
mod rules;

use crate::error::{Error, Result};
use crate::history::Epoch;
use crate::metrics;
use crate::onnx::{self, proto::ModelProto};
use crate::params::{Checked, ParamGuard};
use crate::runtime::{self, SessionOptions};
use graph::{Loss, Mode, TrainGraph};
use ndarray::{ArrayD, Axis};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Loop settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FitConfig {
    pub epochs: usize,
    pub batch: usize,
    pub seed: u64,
    pub optimizer: optim::Optimizer,
    #[serde(default)]
    pub schedule: optim::Schedule,
}

impl ParamGuard for FitConfig {
    fn check_ref(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::Param { name: "epochs", value: "0".into(), reason: "must be ≥ 1".into() });
        }
        if self.batch == 0 {
            return Err(Error::Param { name: "batch", value: "0".into(), reason: "must be ≥ 1".into() });
        }
        self.optimizer.validate()?;
        self.schedule.validate()
    }
}

/// Everything a fit needs to continue exactly where it stopped: the epochs done, the optimizer
/// state and the position of the seeded random stream (parameters live in the [`Trainer`]).
#[derive(Clone, Debug)]
pub struct FitState {
    pub epoch: usize,
    pub optim: optim::State,
    /// ChaCha8 word position after the last finished epoch.
    pub rng_word_pos: u128,
    /// The sample order of the last finished epoch (the next shuffle permutes it).
    pub order: Vec<usize>,
    pub history: Vec<Epoch>,
}

/// Initializers under this name are constants to the compiler (a head's statistics and
/// projections); fusing a head into a deployable model prefixes its names (`head/frozen/…`), so a
/// `frozen/` segment anywhere in the name counts.
pub use graph::FROZEN;

/// Is the initializer `name` a constant that training never changes?
pub fn is_frozen(name: &str) -> bool {
    name.starts_with(FROZEN) || name.contains(&format!("/{FROZEN}"))
}

/// The samples a fit draws its batches from.
pub trait BatchSource {
    /// The label of every sample, in sample order.
    fn labels(&self) -> &[usize];
    /// The inputs of the samples `idx` (decoded, augmented…), drawing any randomness from `rng`.
    fn batch(&self, idx: &[usize], rng: &mut rand_chacha::ChaCha8Rng) -> Result<ArrayD<f32>>;
}

/// Samples held in memory: rows of `x`.
pub struct InMemory<'a> {
    pub x: &'a ArrayD<f32>,
    pub labels: &'a [usize],
}

impl BatchSource for InMemory<'_> {
    fn labels(&self) -> &[usize] {
        self.labels
    }
    fn batch(&self, idx: &[usize], _: &mut rand_chacha::ChaCha8Rng) -> Result<ArrayD<f32>> {
        Ok(self.x.select(Axis(0), idx))
    }
}

/// Labels as the loss expects them: (N,1) 0/1 for BCE, one-hot (N,K) for CE.
pub fn label_tensor(labels: &[usize], loss: Loss, k: usize) -> ArrayD<f32> {
    match loss {
        Loss::BinaryCrossEntropy => ArrayD::from_shape_fn(ndarray::IxDyn(&[labels.len(), 1]), |i| labels[i[0]] as f32),
        Loss::CategoricalCrossEntropy => {
            ArrayD::from_shape_fn(ndarray::IxDyn(&[labels.len(), k]), |i| (labels[i[0]] == i[1]) as u8 as f32)
        }
    }
}

/// A model in training: compiled graphs, open sessions, current parameters.
///
/// While a fit runs, parameters and optimizer slots live in a [`resident::Resident`] on the
/// session's device; `params` (the host copy) is refreshed by [`Trainer::sync`] at every epoch end.
pub struct Trainer {
    pub model: ModelProto,
    pub train: TrainGraph,
    eval: TrainGraph,
    /// Gradients-only session of `train`, opened on first use ([`Trainer::gradients`]).
    grad_s: Option<ort::session::Session>,
    eval_s: ort::session::Session,
    pub params: Vec<ArrayD<f32>>,
    resident: Option<resident::Resident>,
    grad_names: Vec<String>,
    n_classes: usize,
    what: PathBuf,
    opts: SessionOptions,
}

impl Trainer {
    pub fn new(
        model: &ModelProto,
        what: &Path,
        feature_shape: &[usize],
        n_classes: usize,
        opts: &SessionOptions,
    ) -> Result<Trainer> {
        Self::with_trainable(model, what, feature_shape, n_classes, opts, &|_| true)
    }

    /// Like [`Trainer::new`], training only the float initializers `trainable` accepts (and never
    /// [`is_frozen`] ones).
    pub fn with_trainable(
        model: &ModelProto,
        what: &Path,
        feature_shape: &[usize],
        n_classes: usize,
        opts: &SessionOptions,
        trainable: &dyn Fn(&str) -> bool,
    ) -> Result<Trainer> {
        let sel = |n: &str| !is_frozen(n) && trainable(n);
        let pools = graph::PoolGrad::for_device(opts.device);
        let train = graph::compile_with(model, what, &sel, feature_shape, Mode::Train, pools)?;
        let eval = graph::compile(model, what, &sel, feature_shape, Mode::Eval)?;
        let eval_s =
            runtime::open(&onnx::encode_model(&nchwc::for_device(&eval.model, opts.device)), what, opts)?.session;
        let g = onnx::graph(model);
        let params = train
            .params
            .iter()
            .map(|p| onnx::tensor_to_f32(g.initializer.iter().find(|t| &t.name == p).expect("param is an initializer")))
            .collect::<Result<Vec<_>>>()?;
        let grad_names = train.params.iter().map(|p| graph::grad_name(p)).collect();
        Ok(Trainer {
            model: model.clone(),
            train,
            eval,
            grad_s: None,
            eval_s,
            params,
            resident: None,
            grad_names,
            n_classes,
            what: what.into(),
            opts: opts.clone(),
        })
    }

    /// Dropout masks for a batch of `n`: 0 with probability p, else 1/(1−p).
    pub fn draw_masks(&self, n: usize, rng: &mut impl Rng) -> Vec<ArrayD<f32>> {
        self.train
            .masks
            .iter()
            .map(|m| {
                let keep = 1.0 - m.ratio;
                let shape: Vec<usize> = [&[n][..], &m.shape].concat();
                ArrayD::from_shape_simple_fn(ndarray::IxDyn(&shape), || {
                    if rng.gen::<f32>() < keep {
                        1.0 / keep
                    } else {
                        0.0
                    }
                })
            })
            .collect()
    }

    /// Loss, outputs and the gradient of every parameter on a batch, at the host parameters
    /// `self.params` (no update; gradient checks).
    pub fn gradients(
        &mut self,
        x: ndarray::ArrayViewD<'_, f32>,
        y: &ArrayD<f32>,
        masks: &[ArrayD<f32>],
    ) -> Result<(f32, ArrayD<f32>, Vec<ArrayD<f32>>)> {
        if self.grad_s.is_none() {
            let bytes = onnx::encode_model(&nchwc::for_device(&self.train.model, self.opts.device));
            self.grad_s = Some(runtime::open(&bytes, &self.what, &self.opts)?.session);
        }
        let mut feed: Vec<(&str, ndarray::ArrayViewD<'_, f32>)> =
            vec![(self.train.input.as_str(), x), (graph::LABELS, y.view())];
        for (p, a) in self.train.params.iter().zip(&self.params) {
            feed.push((p.as_str(), a.view()));
        }
        for (m, a) in self.train.masks.iter().zip(masks) {
            feed.push((m.name.as_str(), a.view()));
        }
        let mut names: Vec<&str> = vec![graph::LOSS, self.train.output.as_str()];
        names.extend(self.grad_names.iter().map(|s| s.as_str()));
        let mut out = runtime::run_f32(self.grad_s.as_mut().expect("opened"), feed, &names)?;
        let grads = out.split_off(2);
        let probs = out.pop().expect("outputs");
        let loss = out.pop().expect("loss").iter().next().copied().unwrap_or(f32::NAN);
        Ok((loss, probs, grads))
    }

    /// Move the host parameters and `state`'s slots to the device for [`Trainer::train_step`].
    pub fn start(&mut self, state: &optim::State) -> Result<()> {
        self.resident = None;
        self.resident = Some(resident::Resident::new(&self.train, &self.params, state, &self.what, &self.opts)?);
        Ok(())
    }

    /// One optimisation step on a batch (after [`Trainer::start`]): forward, backward and the
    /// optimizer's update in one graph run, with `lr` as given by [`optim::Optimizer::step_lr`];
    /// returns the loss and the outputs.
    pub fn train_step(
        &mut self,
        x: ArrayD<f32>,
        y: ArrayD<f32>,
        masks: Vec<ArrayD<f32>>,
        lr: f32,
    ) -> Result<(f32, ArrayD<f32>)> {
        self.resident.as_mut().ok_or_else(|| Error::Other("train_step before start".into()))?.step(x, y, masks, lr)
    }

    /// Copy the device parameters into `self.params` and the slots into `state`.
    pub fn sync(&mut self, state: &mut optim::State) -> Result<()> {
        match &self.resident {
            Some(r) => r.download(&mut self.params, state),
            None => Ok(()),
        }
    }

    /// Loss and outputs on `x` (no dropout), in batches, at the current parameters (on the
    /// device during a fit).
    pub fn evaluate(&mut self, x: &ArrayD<f32>, labels: &[usize], batch: usize) -> Result<(f64, ArrayD<f32>)> {
        let n = x.shape()[0];
        let mut loss = 0.0;
        let probs = in_batches(n, batch, |r| {
            let yb = label_tensor(&labels[r.clone()], self.eval.loss, self.n_classes);
            let mut feed: Vec<(&str, ort::session::SessionInputValue<'_>)> = vec![
                (self.eval.input.as_str(), runtime::view(x.slice_axis(Axis(0), r.clone().into()))?),
                (graph::LABELS, runtime::view(yb.view())?),
            ];
            for (i, p) in self.eval.params.iter().enumerate() {
                let v = match &self.resident {
                    Some(res) => (&res.params()[i]).into(),
                    None => runtime::view(self.params[i].view())?,
                };
                feed.push((p.as_str(), v));
            }
            let mut o = runtime::run_values(&mut self.eval_s, feed, &[graph::LOSS, self.eval.output.as_str()])?;
            loss += o[0].iter().next().copied().unwrap_or(f32::NAN) as f64 * r.len() as f64;
            Ok(o.pop().expect("probs"))
        })?;
        Ok((loss / n.max(1) as f64, probs))
    }

    /// Fit on (x, labels), validating on (vx, vlabels) every epoch; `on_epoch` sees each record.
    pub fn fit(
        &mut self,
        x: &ArrayD<f32>,
        labels: &[usize],
        val: Option<InMemory>,
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
    /// one. [`learner::fit`] drives this with checkpoints, best-model files and early stopping.
    pub fn fit_with(
        &mut self,
        data: &dyn BatchSource,
        val: Option<InMemory>,
        cfg: &Checked<FitConfig>,
        resume: Option<FitState>,
        mut on_epoch: impl FnMut(&Epoch, &Trainer, &FitState) -> Result<bool>,
    ) -> Result<Vec<Epoch>> {
        let labels = data.labels();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
        let n = labels.len();
        let steps_per_epoch = n.div_ceil(cfg.batch);
        let total_steps = steps_per_epoch * cfg.epochs;
        let base_lr = cfg.optimizer.lr();
        let opt = &cfg.optimizer;
        let mut fs = match resume {
            Some(r) => {
                rng.set_word_pos(r.rng_word_pos);
                r
            }
            None => FitState {
                epoch: 0,
                optim: optim::State::new(cfg.optimizer.clone(), &self.params),
                rng_word_pos: rng.get_word_pos(),
                order: vec![],
                history: vec![],
            },
        };
        // Each epoch shuffles the previous epoch's order.
        let mut order = std::mem::take(&mut fs.order);
        if order.len() != n {
            order = (0..n).collect();
        }
        let start = fs.epoch + 1;
        self.start(&fs.optim)?;
        for epoch in start..=cfg.epochs {
            let t = std::time::Instant::now();
            order.shuffle(&mut rng);
            let (mut loss_sum, mut correct) = (0.0f64, 0usize);
            for (k, chunk) in order.chunks(cfg.batch).enumerate() {
                let lr = cfg.schedule.lr(base_lr, epoch - 1, (epoch - 1) * steps_per_epoch + k, total_steps);
                let xb = data.batch(chunk, &mut rng)?;
                let lb: Vec<usize> = chunk.iter().map(|&i| labels[i]).collect();
                let yb = label_tensor(&lb, self.train.loss, self.n_classes);
                let masks = self.draw_masks(chunk.len(), &mut rng);
                let (loss, probs) = self.train_step(xb, yb, masks, opt.step_lr(lr, fs.optim.step + 1))?;
                fs.optim.step += 1;
                if !loss.is_finite() {
                    return Err(Error::Other(format!("epoch {epoch}: loss is {loss}; lower the learning rate")));
                }
                loss_sum += loss as f64 * chunk.len() as f64;
                correct += metrics::predicted(&probs).iter().zip(&lb).filter(|(a, b)| a == b).count();
            }
            let (val_loss, val_accuracy) = self.validate(val.as_ref())?;
            let rec = Epoch {
                epoch,
                loss: loss_sum / n as f64,
                accuracy: correct as f64 / n as f64,
                val_loss,
                val_accuracy,
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

    /// Loss and accuracy on the validation samples; NaN (not measured) without any.
    fn validate(&mut self, val: Option<&InMemory>) -> Result<(f64, f64)> {
        match val {
            Some(v) if !v.labels.is_empty() => {
                let (loss, vp) = self.evaluate(v.x, v.labels, 256)?;
                Ok((loss, metrics::accuracy(&metrics::predicted(&vp), v.labels)))
            }
            _ => Ok((f64::NAN, f64::NAN)),
        }
    }

    /// The inference model with the current parameters as initializers (Dropout kept; it is the
    /// identity at inference).
    pub fn export(&self) -> ModelProto {
        let mut m = self.model.clone();
        let g = m.graph.as_mut().expect("graph");
        for t in g.initializer.iter_mut() {
            if let Some(i) = self.train.params.iter().position(|p| p == &t.name) {
                *t = onnx::tensor_f32(&t.name, &self.params[i]);
            }
        }
        m
    }
}

/// Run an inference model (one input, one output) over `x` in batches.
pub fn predict(model: &[u8], what: &Path, x: &ArrayD<f32>, batch: usize, opts: &SessionOptions) -> Result<ArrayD<f32>> {
    let mut s = runtime::open(model, what, opts)?.session;
    let bad = |reason: &str| Error::BadModel { path: what.into(), reason: reason.into() };
    let input = s.inputs().first().ok_or_else(|| bad("the model has no input"))?.name().to_string();
    let output = s.outputs().first().ok_or_else(|| bad("the model has no output"))?.name().to_string();
    in_batches(x.shape()[0], batch, |r| {
        Ok(runtime::run_f32(&mut s, vec![(input.as_str(), x.slice_axis(Axis(0), r.into()))], &[output.as_str()])?
            .remove(0))
    })
}

/// Call `f` on consecutive row ranges of at most `batch` rows and stack its outputs.
fn in_batches(
    n: usize,
    batch: usize,
    mut f: impl FnMut(std::ops::Range<usize>) -> Result<ArrayD<f32>>,
) -> Result<ArrayD<f32>> {
    let batch = batch.max(1);
    let outs = (0..n).step_by(batch).map(|s| f(s..(s + batch).min(n))).collect::<Result<Vec<_>>>()?;
    let views: Vec<_> = outs.iter().map(|a| a.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Other(e.to_string()))
}
