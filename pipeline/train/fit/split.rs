//! A training step's forward and backward pass on OpenVINO's CPU plugin (`--precision bf16`:
//! bf16 matrix kernels, AMX where the CPU has it), its update elsewhere: [`Gradients`] runs the
//! compiled graph without the optimizer (parameters in, loss, outputs and gradients out), and the
//! resident buffers' update session applies them in float32 on the CPU provider, so weights and
//! optimizer slots never lose precision (float32 master weights, as mixed-precision training
//! keeps them). bf16 has float32's exponent range, so gradients need no loss scaling.

use crate::error::Result;
use crate::onnx::{self, proto::ModelProto};
use crate::runtime::{self, Device, SessionOptions};
use crate::train::compile::{self as graph, lower, with_batch, TrainGraph};
use ndarray::{ArrayD, ArrayViewD};
use ort::session::{Session, SessionInputValue};
use std::collections::hash_map::{Entry, HashMap};
use std::path::{Path, PathBuf};

/// A batch's loss, the model's outputs, and the gradient of every parameter.
pub type Outputs = (f32, ArrayD<f32>, Vec<ArrayD<f32>>);

/// The gradients graph (no update), on OpenVINO compiled once per batch size: OpenVINO compiles a
/// convolution only for weights of a known shape, and a depthwise weight gradient takes the
/// batch's output gradient as its weights. A fit sees two sizes (the batch and an epoch's last).
pub struct Gradients {
    model: ModelProto,
    sessions: HashMap<usize, Session>,
    what: PathBuf,
    opts: SessionOptions,
    input: String,
    output: String,
    masks: Vec<String>,
    params: Vec<String>,
    /// The gradients' names, in the parameters' order: the update session's inputs.
    pub grads: Vec<String>,
}

impl Gradients {
    /// `train` without an update, to be opened on `opts` (on OpenVINO for each batch size it
    /// meets).
    pub fn new(train: &TrainGraph, what: &Path, opts: &SessionOptions) -> Gradients {
        Gradients {
            model: lower(train, None, opts.device),
            sessions: HashMap::new(),
            what: what.into(),
            opts: opts.clone(),
            input: train.input.clone(),
            output: train.output.clone(),
            masks: train.masks.iter().map(|m| m.name.clone()).collect(),
            params: train.params.clone(),
            grads: train.params.iter().map(|p| graph::grad_name(p)).collect(),
        }
    }

    /// Whether these are the gradients of `train` (its input, output and parameters).
    pub fn serves(&self, train: &TrainGraph) -> bool {
        self.input == train.input && self.output == train.output && self.params == train.params
    }

    /// How many sessions are open: on OpenVINO one per batch size met, elsewhere at most one.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The gradients graph as its sessions run it (the batch left symbolic).
    pub fn model(&self) -> &ModelProto {
        &self.model
    }

    /// Loss, outputs and every parameter's gradient on a batch — `x`, targets `y`, sample
    /// `weights` (None: ones) and dropout `masks` — at `params` (in the training graph's order:
    /// host views or tensors). Borrowed, so a gradient check or Grad-CAM copies nothing.
    pub fn run(
        &mut self,
        (x, y, weights): (ArrayViewD<'_, f32>, ArrayViewD<'_, f32>, Option<ArrayViewD<'_, f32>>),
        masks: &[ArrayD<f32>],
        params: Vec<SessionInputValue<'_>>,
    ) -> Result<Outputs> {
        let n = x.shape()[0];
        // Only OpenVINO needs the batch fixed; elsewhere one session serves every size.
        let fixed = self.opts.device == Device::Openvino;
        let session = match self.sessions.entry(if fixed { n } else { 0 }) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let m = if fixed { with_batch(&self.model, n) } else { self.model.clone() };
                e.insert(runtime::open_with(&onnx::encode_model(&m), &self.what, &self.opts, true)?.session)
            }
        };
        let ones = ArrayD::ones(ndarray::IxDyn(&[n, 1]));
        let mut feed: Vec<(&str, SessionInputValue<'_>)> = vec![
            (self.input.as_str(), runtime::view(x)?),
            (graph::LABELS, runtime::view(y)?),
            (graph::WEIGHTS, runtime::view(weights.unwrap_or(ones.view()))?),
        ];
        for (name, m) in self.masks.iter().zip(masks) {
            feed.push((name.as_str(), runtime::view(m.view())?));
        }
        feed.extend(self.params.iter().map(String::as_str).zip(params));
        let mut names = vec![graph::LOSS, self.output.as_str()];
        names.extend(self.grads.iter().map(String::as_str));
        let mut out = runtime::run_values(session, feed, &names)?;
        let grads = out.split_off(2);
        let probs = out.pop().expect("outputs");
        let loss = out.pop().expect("loss").iter().next().copied().unwrap_or(f32::NAN);
        Ok((loss, probs, grads))
    }
}
