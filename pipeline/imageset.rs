//! A split of a class-folder dataset decoded once into memory as 8-bit (N,H,W,C) at the model's
//! input size — what from-scratch training and fine-tuning iterate over for many epochs
//! (augmentation then works on these pixels, on the fly).

use crate::dataset;
use crate::error::{Error, Result};
use crate::imageio::{self, Interpolation};
use crate::progress::Sink;
use ndarray::{Array4, ArrayD, Axis};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Decoded images of one split.
pub struct ImageSet {
    /// (N, H, W, C) 0..255.
    pub x: Array4<u8>,
    pub labels: Vec<usize>,
    pub files: Vec<PathBuf>,
    /// Unreadable images: (path, reason).
    pub skipped: Vec<(PathBuf, String)>,
}

/// How images become model inputs.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub size: (u32, u32),
    /// 1 (gray, ITU-R 601 luma like PIL's "L") or 3 (RGB).
    pub channels: usize,
    pub interpolation: Interpolation,
    pub max_pixels: u64,
}

/// Load `root/split/<class>/*` for the given classes (a class not in `classes` is an error).
pub fn load_split(root: &Path, split: &str, classes: &[String], spec: &LoadSpec, sink: &dyn Sink) -> Result<ImageSet> {
    let (_, items, report) = dataset::list_split(root, split)?;
    for p in &report.skipped_non_images {
        tracing::warn!("{}: skipped (not an image file name)", p.display());
    }
    if spec.channels != 1 && spec.channels != 3 {
        return Err(Error::Param {
            name: "channels",
            value: spec.channels.to_string(),
            reason: "images have 1 or 3 channels".into(),
        });
    }
    let labels = dataset::labels(&items, classes, split)?;
    let (h, w) = (spec.size.0 as usize, spec.size.1 as usize);
    let pb = sink.meter(items.len() as u64, "img", &format!("decoding {split}"));
    let decoded: Vec<Result<Vec<u8>>> = items
        .par_iter()
        .map(|it| {
            let a = imageio::with_decoded(&it.path, spec.max_pixels, |img| {
                imageio::to_rgb_array(img, spec.size, spec.interpolation)
            })?;
            pb.inc(1);
            Ok(if spec.channels == 3 {
                a.iter().map(|&v| v.round() as u8).collect()
            } else {
                a.lanes(Axis(2))
                    .into_iter()
                    .map(|p| {
                        let [r, g, b] = imageio::LUMA;
                        (p[0] * r + p[1] * g + p[2] * b).round().clamp(0.0, 255.0) as u8
                    })
                    .collect()
            })
        })
        .collect();
    drop(pb);
    let mut x = Vec::with_capacity(items.len() * h * w * spec.channels);
    let (mut keep_labels, mut files) = (vec![], vec![]);
    // Every file of the split that is not used is listed with the reason.
    let mut skipped: Vec<(PathBuf, String)> = report
        .skipped_non_images
        .iter()
        .map(|p| (p.clone(), format!("{}: not an image file name", crate::fsutil::path_text(p))))
        .chain(report.unreadable.iter().map(|(p, why)| (crate::fsutil::text_path(p), why.clone())))
        .collect();
    for ((it, r), l) in items.iter().zip(decoded).zip(labels) {
        match r {
            Ok(px) => {
                x.extend_from_slice(&px);
                keep_labels.push(l);
                files.push(it.path.clone());
            }
            Err(e) => {
                tracing::warn!("{e} (skipped)");
                skipped.push((it.path.clone(), e.to_string()));
            }
        }
    }
    if files.is_empty() {
        return Err(Error::BadData { path: root.join(split), reason: "no readable images".into() });
    }
    let x = Array4::from_shape_vec((files.len(), h, w, spec.channels), x).expect("sizes match");
    Ok(ImageSet { x, labels: keep_labels, files, skipped })
}

impl ImageSet {
    /// All images as float32 scaled by `scale`.
    pub fn to_f32(&self, scale: f32) -> ArrayD<f32> {
        self.x.mapv(|v| v as f32 * scale).into_dyn()
    }
}

/// Rows `idx` of `x` as float32 scaled by `scale` (Keras' `rescale`).
pub fn batch_f32(x: &Array4<u8>, idx: &[usize], scale: f32) -> ArrayD<f32> {
    x.select(Axis(0), idx).mapv(|v| v as f32 * scale).into_dyn()
}
