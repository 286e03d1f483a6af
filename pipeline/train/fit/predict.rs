//! Inference on a trained (or any) model with one input and one output, in batches.

use crate::error::{Error, Result};
use crate::runtime::{self, SessionOptions};
use ndarray::{ArrayD, Axis};
use std::path::Path;

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
pub fn in_batches(
    n: usize,
    batch: usize,
    mut f: impl FnMut(std::ops::Range<usize>) -> Result<ArrayD<f32>>,
) -> Result<ArrayD<f32>> {
    let batch = batch.max(1);
    let outs = (0..n).step_by(batch).map(|s| f(s..(s + batch).min(n))).collect::<Result<Vec<_>>>()?;
    let views: Vec<_> = outs.iter().map(|a| a.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Other(e.to_string()))
}
