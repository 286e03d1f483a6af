//! The [`Trainer`]: a model in training — its compiled graphs (through [`lower()`]), open sessions
//! and current parameters; gradients (checks), steps on the resident buffers, evaluation, export.
//! The epochs themselves are in `epochs.rs`.

use super::data::{label_tensor, Batch, BatchSource};
use super::predict::in_batches;
use super::resident;
use super::split::{Gradients, Outputs};
use super::state::State;
use crate::error::{Error, Result};
use crate::onnx::{self, proto::ModelProto};
use crate::runtime::{self, SessionOptions};
use crate::train::compile::update::Groups;
#[cfg(doc)]
use crate::train::compile::update::Optimizer;
use crate::train::compile::{self as graph, is_frozen, lower, Mode, TrainGraph};
use ndarray::ArrayD;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

/// A model in training: compiled graphs, open sessions, current parameters.
///
/// While a fit runs, parameters and optimizer slots live in a [`resident::Resident`] on the
/// session's device; `params` (the host copy) is refreshed by [`Trainer::sync`] at every epoch end.
pub struct Trainer {
    pub model: ModelProto,
    pub train: TrainGraph,
    pub(super) eval: TrainGraph,
    /// Gradients-only sessions of `train`, opened on first use ([`Trainer::gradients`], and every
    /// step on OpenVINO): one set for all this trainer's fits, each batch size compiled once.
    grad_s: Option<Gradients>,
    pub(super) eval_s: ort::session::Session,
    pub params: Vec<ArrayD<f32>>,
    pub(super) resident: Option<resident::Resident>,
    /// Learning-rate factors and weight decay of the parameters ([`Trainer::scale_lr`]).
    pub(super) groups: Groups,
    pub(super) n_classes: usize,
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
        let forms = graph::Forms::for_device(opts.device);
        let train = graph::compile_with(model, what, &sel, feature_shape, Mode::Train, forms)?;
        let eval = graph::compile(model, what, &sel, feature_shape, Mode::Eval)?;
        let eval_s = runtime::open(&onnx::encode_model(&lower(&eval, None, opts.device)), what, opts)?.session;
        let g = onnx::graph(model);
        let params = train
            .params
            .iter()
            .map(|p| onnx::tensor_to_f32(g.initializer.iter().find(|t| &t.name == p).expect("param is an initializer")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Trainer {
            model: model.clone(),
            train,
            eval,
            grad_s: None,
            eval_s,
            params,
            resident: None,
            groups: Groups::default(),
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
    ) -> Result<Outputs> {
        self.gradient_graph();
        let g = self.grad_s.as_mut().expect("made above");
        let params = self.params.iter().map(|a| runtime::view(a.view())).collect::<Result<Vec<_>>>()?;
        g.run((x, y.view(), None), masks, params)
    }

    /// Make the gradients sessions of `self.train` on first use, and again where the graph was
    /// replaced since (another trainable set).
    fn gradient_graph(&mut self) {
        if self.grad_s.as_ref().is_some_and(|g| !g.serves(&self.train)) {
            self.grad_s = None;
        }
        let (train, what, opts) = (&self.train, &self.what, &self.opts);
        self.grad_s.get_or_insert_with(|| Gradients::new(train, what, opts));
    }

    /// How many gradients sessions are open ([`Gradients::sessions`]): on OpenVINO one per batch
    /// size any of this trainer's fits met, each compiled once.
    pub fn gradient_sessions(&self) -> usize {
        self.grad_s.as_ref().map_or(0, Gradients::sessions)
    }

    /// Multiply each parameter's learning rate by `factor(name)` in later fits (e.g. a lower rate
    /// for a pretrained base than for its new head).
    pub fn scale_lr(&mut self, factor: &dyn Fn(&str) -> f32) {
        self.groups.lr_scale = self.train.params.iter().map(|p| factor(p)).collect();
    }

    /// Move the host parameters and `state`'s slots to the device for [`Trainer::train_step`].
    pub fn start(&mut self, state: &State) -> Result<()> {
        self.resident = None;
        // On OpenVINO the forward and backward pass runs there, the update alone on the CPU.
        let split = self.opts.device == runtime::Device::Openvino;
        if split {
            self.gradient_graph();
        }
        let (train, what, opts) = (&self.train, &self.what, &self.opts);
        let grads = self.grad_s.as_ref().filter(|_| split);
        let r = resident::Resident::new((train, &self.params), state, &self.groups, (what, opts), grads)?;
        self.resident = Some(r);
        Ok(())
    }

    /// One optimisation step on a batch (after [`Trainer::start`]): forward, backward and the
    /// optimizer's update in one graph run, with `lr` as given by [`Optimizer::step_lr`];
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
        let r = self.resident.as_mut().ok_or_else(|| Error::Other("train_step before start".into()))?;
        r.step(batch, (lr, decay), self.grad_s.as_mut())
    }

    /// Copy the device parameters into `self.params` and the slots into `state`.
    pub fn sync(&mut self, state: &mut State) -> Result<()> {
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
