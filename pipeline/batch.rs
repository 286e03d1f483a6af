//! Stream images through an ONNX session in batches, decoding the next batch (rayon) while
//! onnxruntime runs the current one. Shared by `extract` and `score`.

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
            let ok: Vec<usize> = decoded.iter().enumerate().filter(|(_, r)| r.is_ok()).map(|(i, _)| i).collect();
            let mut x = Array4::<f32>::zeros((ok.len(), h, w, 3));
            for (row, &i) in ok.iter().enumerate() {
                x.index_axis_mut(Axis(0), row).assign(decoded[i].as_ref().expect("ok"));
            }
            let y: Option<ArrayD<f32>> = if ok.is_empty() {
                None
            } else {
                Some(runtime::run_f32(session, vec![(input, x.view().into_dyn())], &[output])?.remove(0))
            };
            let mut row = 0;
            for (i, r) in decoded.iter().enumerate() {
                match r {
                    Ok(_) => {
                        let y = y.as_ref().expect("non-empty batch");
                        sink(start + i, Ok(y.index_axis(Axis(0), row)))?;
                        row += 1;
                    }
                    Err(e) => sink(start + i, Err(e))?,
                }
            }
        }
        Ok(())
    })
}
