//! Stream images through an ONNX session in batches, decoding the next batch (rayon) while
//! onnxruntime runs the current one. Shared by `extract`, `score` and int8 calibration.

use crate::error::{Error, Result};
use crate::imageio::{self, Interpolation, Preprocess, View};
use crate::runtime;
use ndarray::{Array4, ArrayD, Axis};
use ort::session::Session;
use rayon::prelude::*;
use std::path::PathBuf;

/// How images become input tensors.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub size: (u32, u32),
    pub interpolation: Interpolation,
    pub preprocess: Preprocess,
    pub max_pixels: u64,
    /// Flip applied after resizing and preprocessing.
    pub view: View,
}

/// Run `input` → `output` over `paths`; `sink(i, result)` is called once per path, in order.
/// Unreadable images reach the sink as `Err` and do not stop the run.
pub fn run_images(
    session: &mut Session,
    input: &str,
    output: &str,
    paths: &[PathBuf],
    spec: &LoadSpec,
    batch: usize,
    mut sink: impl FnMut(usize, std::result::Result<ndarray::ArrayViewD<'_, f32>, &Error>) -> Result<()>,
) -> Result<()> {
    run_batches(session, input, &[output], paths, spec, batch, |b| {
        let mut row = 0;
        for (i, r) in b.decoded.iter().enumerate() {
            match r {
                Ok(()) => {
                    let y = &b.outputs.as_ref().expect("a batch with a readable image has outputs")[0];
                    sink(b.start + i, Ok(y.index_axis(Axis(0), row)))?;
                    row += 1;
                }
                Err(e) => sink(b.start + i, Err(e))?,
            }
        }
        Ok(())
    })
}

/// One batch of [`run_batches`].
pub struct Batch {
    /// Index of the batch's first path.
    pub start: usize,
    /// Each path of the batch: decoded, or why not.
    pub decoded: Vec<Result<()>>,
    /// The requested outputs over the decoded images, in order; None when none decoded.
    pub outputs: Option<Vec<ArrayD<f32>>>,
}

/// Run `input` → `outputs` over `paths` a batch at a time, decoding the next batch (in parallel)
/// while the session runs the current one; `each` sees every batch in order.
pub fn run_batches(
    session: &mut Session,
    input: &str,
    outputs: &[&str],
    paths: &[PathBuf],
    spec: &LoadSpec,
    batch: usize,
    mut each: impl FnMut(Batch) -> Result<()>,
) -> Result<()> {
    let batch = batch.max(1);
    let (h, w) = (spec.size.0 as usize, spec.size.1 as usize);
    let chunks: Vec<(usize, &[PathBuf])> = paths.chunks(batch).enumerate().map(|(i, c)| (i * batch, c)).collect();
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<Result<ndarray::Array3<f32>>>)>(1);
        scope.spawn(move || {
            for (start, chunk) in chunks {
                let decoded: Vec<Result<ndarray::Array3<f32>>> = chunk
                    .par_iter()
                    .map(|p| {
                        imageio::load(p, spec.size, spec.interpolation, &spec.preprocess, spec.max_pixels)
                            .map(|a| spec.view.apply(a))
                    })
                    .collect();
                if tx.send((start, decoded)).is_err() {
                    return;
                }
            }
        });
        for (start, decoded) in rx {
            let ok: Vec<&ndarray::Array3<f32>> = decoded.iter().filter_map(|r| r.as_ref().ok()).collect();
            let outputs = if ok.is_empty() {
                None
            } else {
                let mut x = Array4::<f32>::zeros((ok.len(), h, w, 3));
                for (row, a) in ok.iter().enumerate() {
                    x.index_axis_mut(Axis(0), row).assign(a);
                }
                Some(runtime::run_f32(session, vec![(input, x.view().into_dyn())], outputs)?)
            };
            each(Batch { start, decoded: decoded.into_iter().map(|r| r.map(|_| ())).collect(), outputs })?;
        }
        Ok(())
    })
}
