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
    /// Linear warm-up from ~0 to the rate over this many epochs (by step); the schedule then runs
    /// over the remaining steps.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warmup_epochs: usize,
    /// Keras 3's decoupled `weight_decay` (Adam with it is AdamW): `w −= w·wd·lr` each step, on
    /// weights of rank ≥ 2 only — biases and BatchNorm's γ/β are not decayed (timm's rule).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub weight_decay: f64,
    /// Keras' `label_smoothing`: training targets `y(1−ε) + ε/K` (K = 2 for one sigmoid output).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
    /// Keras' `class_weight`: each training sample's loss times its class's weight (validation
    /// loss unweighted, as in Keras).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_weight: Option<ClassWeight>,
}

/// Settings added after records were first written are left out at their default, so older
/// checkpoints still compare equal.
fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Per-class loss weights.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeight {
    /// n / (K · n_c), from the training labels, K the classes present (scikit-learn's "balanced").
    Balanced,
    /// One weight per class, in class order.
    Given(Vec<f64>),
}

impl ClassWeight {
    /// The weight of each of `k` classes for training labels `labels`.
    pub fn weights(&self, labels: &[usize], k: usize) -> Result<Vec<f64>> {
        match self {
            ClassWeight::Given(w) if w.len() != k => Err(Error::Param {
                name: "class_weight",
                value: format!("{w:?}"),
                reason: format!("needs one weight per class ({k})"),
            }),
            ClassWeight::Given(w) => Ok(w.clone()),
            ClassWeight::Balanced => {
                let mut count = vec![0usize; k];
                for &l in labels {
                    count[l] += 1;
                }
                // Over the classes present (scikit-learn's rule); an absent class's weight is never used.
                let present = count.iter().filter(|&&c| c > 0).count().max(1);
                Ok(count.iter().map(|&c| labels.len() as f64 / (present * c.max(1)) as f64).collect())
            }
        }
    }
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
        let bad = |name, v: f64, reason: &str| Err(Error::Param { name, value: v.to_string(), reason: reason.into() });
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("weight_decay", self.weight_decay, "must be ≥ 0");
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad("label_smoothing", self.label_smoothing, "must be in [0, 1)");
        }
        if let Some(ClassWeight::Given(w)) = &self.class_weight {
            if let Some(&v) = w.iter().find(|v| !(**v > 0.0 && v.is_finite())) {
                return bad("class_weight", v, "every weight must be positive");
            }
        }
        if self.warmup_epochs >= self.epochs {
            let v = self.warmup_epochs as f64;
            return bad("warmup_epochs", v, &format!("must be fewer than the epochs ({})", self.epochs));
        }
        self.schedule.validate()
    }
}

impl FitConfig {
    /// A loop of `epochs` × batches of `batch`, seeded: constant rate, no warm-up, no
    /// regularisation or class weights.
    pub fn new(epochs: usize, batch: usize, seed: u64, optimizer: optim::Optimizer) -> Self {
        FitConfig {
            epochs,
            batch,
            seed,
            optimizer,
            schedule: optim::Schedule::Constant,
            warmup_epochs: 0,
            weight_decay: 0.0,
            label_smoothing: 0.0,
            class_weight: None,
        }
    }

    /// The learning rate of step `step` (0-based, over the whole run) in epoch `epoch` (0-based)
    /// of a run of `steps_per_epoch` steps per epoch: the warm-up's linear ramp, then the schedule
    /// over the steps left.
    pub fn lr_at(&self, epoch: usize, step: usize, steps_per_epoch: usize) -> f64 {
        let base = self.optimizer.lr();
        let warm = self.warmup_epochs * steps_per_epoch;
        if step < warm {
            return base * (step + 1) as f64 / warm as f64;
        }
        let total = steps_per_epoch * self.epochs;
        self.schedule.lr(base, epoch - self.warmup_epochs.min(epoch), step - warm, total - warm)
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
    smoothed_labels(labels, loss, k, 0.0)
}

/// [`label_tensor`] with Keras' label smoothing ε: `y(1−ε) + ε/K`, K = 2 for BCE.
pub fn smoothed_labels(labels: &[usize], loss: Loss, k: usize, eps: f64) -> ArrayD<f32> {
    let soft = |hot: bool, k: usize| (if hot { 1.0 - eps } else { 0.0 } + eps / k as f64) as f32;
    match loss {
        Loss::BinaryCrossEntropy => {
            ArrayD::from_shape_fn(ndarray::IxDyn(&[labels.len(), 1]), |i| soft(labels[i[0]] == 1, 2))
        }
        Loss::CategoricalCrossEntropy => {
            ArrayD::from_shape_fn(ndarray::IxDyn(&[labels.len(), k]), |i| soft(labels[i[0]] == i[1], k))
        }
    }
}

/// One training batch as the update graph takes it.
pub struct Batch {
    pub x: ArrayD<f32>,
    /// Targets ([`label_tensor`]).
    pub y: ArrayD<f32>,
    /// Per-sample loss weights (N,1); None: ones.
    pub weights: Option<ArrayD<f32>>,
    pub masks: Vec<ArrayD<f32>>,
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
    /// Learning-rate factors and weight decay of the parameters ([`Trainer::scale_lr`]).
    groups: optim::Groups,
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
            groups: optim::Groups::default(),
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
        let ones = ArrayD::ones(ndarray::IxDyn(&[y.shape()[0], 1]));
        let mut feed: Vec<(&str, ndarray::ArrayViewD<'_, f32>)> =
            vec![(self.train.input.as_str(), x), (graph::LABELS, y.view()), (graph::WEIGHTS, ones.view())];
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

    /// Multiply each parameter's learning rate by `factor(name)` in later fits (e.g. a lower rate
    /// for a pretrained base than for its new head).
    pub fn scale_lr(&mut self, factor: &dyn Fn(&str) -> f32) {
        self.groups.lr_scale = self.train.params.iter().map(|p| factor(p)).collect();
    }

    /// Move the host parameters and `state`'s slots to the device for [`Trainer::train_step`].
    pub fn start(&mut self, state: &optim::State) -> Result<()> {
        self.resident = None;
        let r = resident::Resident::new(&self.train, &self.params, state, &self.groups, &self.what, &self.opts)?;
        self.resident = Some(r);
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
        self.step(Batch { x, y, weights: None, masks }, lr, 0.0)
    }

    /// [`Trainer::train_step`] with sample weights and this step's weight decay `lr·wd`.
    pub fn step(&mut self, batch: Batch, lr: f32, decay: f32) -> Result<(f32, ArrayD<f32>)> {
        self.resident.as_mut().ok_or_else(|| Error::Other("train_step before start".into()))?.step(batch, lr, decay)
    }

    /// Copy the device parameters into `self.params` and the slots into `state`.
    pub fn sync(&mut self, state: &mut optim::State) -> Result<()> {
        match &self.resident {
            Some(r) => r.download(&mut self.params, state),
            None => Ok(()),
        }
    }

    /// Loss and outputs on the samples of `data` (no dropout), in batches, at the current
    /// parameters (on the device during a fit). `data` draws from its own fixed stream, so
    /// evaluating never moves a fit's randomness.
    pub fn evaluate(&mut self, data: &dyn BatchSource, batch: usize) -> Result<(f64, ArrayD<f32>)> {
        let labels = data.labels();
        let n = labels.len();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut loss = 0.0;
        let probs = in_batches(n, batch, |r| {
            let idx: Vec<usize> = r.clone().collect();
            let xb = data.batch(&idx, &mut rng)?;
            let yb = label_tensor(&labels[r.clone()], self.eval.loss, self.n_classes);
            let mut feed: Vec<(&str, ort::session::SessionInputValue<'_>)> =
                vec![(self.eval.input.as_str(), runtime::view(xb.view())?), (graph::LABELS, runtime::view(yb.view())?)];
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
    /// one. [`learner::fit`] drives this with checkpoints, best-model files and early stopping.
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
        self.groups.decayed = self.params.iter().map(|p| cfg.weight_decay > 0.0 && p.ndim() >= 2).collect();
        let class_weight = match &cfg.class_weight {
            Some(c) => Some(c.weights(labels, self.n_classes)?),
            None => None,
        };
        self.start(&fs.optim)?;
        for epoch in start..=cfg.epochs {
            let t = std::time::Instant::now();
            order.shuffle(&mut rng);
            let (mut loss_sum, mut correct) = (0.0f64, 0usize);
            for (k, chunk) in order.chunks(cfg.batch).enumerate() {
                let lr = cfg.lr_at(epoch - 1, (epoch - 1) * steps_per_epoch + k, steps_per_epoch);
                let xb = data.batch(chunk, &mut rng)?;
                let lb: Vec<usize> = chunk.iter().map(|&i| labels[i]).collect();
                let (y, weights) = self.targets(&lb, cfg, class_weight.as_deref());
                let batch = Batch { x: xb, y, weights, masks: self.draw_masks(chunk.len(), &mut rng) };
                let decay = (lr * cfg.weight_decay) as f32;
                let (loss, probs) = self.step(batch, opt.step_lr(lr, fs.optim.step + 1), decay)?;
                fs.optim.step += 1;
                if !loss.is_finite() {
                    return Err(Error::Other(format!("epoch {epoch}: loss is {loss}; lower the learning rate")));
                }
                loss_sum += loss as f64 * chunk.len() as f64;
                correct += metrics::predicted(&probs).iter().zip(&lb).filter(|(a, b)| a == b).count();
            }
            let (val_loss, val_accuracy) = self.validate(val)?;
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
    Predictor::open(model, what, opts)?.run(x.view(), batch)
}

/// An inference model (one input, one output) opened once, for inputs that come a part at a time.
pub struct Predictor {
    session: ort::session::Session,
    input: String,
    output: String,
}

impl Predictor {
    pub fn open(model: &[u8], what: &Path, opts: &SessionOptions) -> Result<Predictor> {
        let session = runtime::open(model, what, opts)?.session;
        let bad = |reason: &str| Error::BadModel { path: what.into(), reason: reason.into() };
        let input = session.inputs().first().ok_or_else(|| bad("the model has no input"))?.name().to_string();
        let output = session.outputs().first().ok_or_else(|| bad("the model has no output"))?.name().to_string();
        Ok(Predictor { session, input, output })
    }

    /// The outputs of `x`, run `batch` rows at a time.
    pub fn run(&mut self, x: ndarray::ArrayViewD<'_, f32>, batch: usize) -> Result<ArrayD<f32>> {
        let (input, output) = (self.input.as_str(), self.output.as_str());
        in_batches(x.shape()[0], batch, |r| {
            Ok(runtime::run_f32(&mut self.session, vec![(input, x.slice_axis(Axis(0), r.into()))], &[output])?
                .remove(0))
        })
    }
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
