//! A split of a class-folder dataset decoded once as 8-bit (N,H,W,C) at the model's input size —
//! what from-scratch training and fine-tuning iterate over for many epochs (augmentation then
//! works on these pixels, on the fly). The pixels stay in memory while they fit the run's
//! [`spill::Budget`]; past it they go to an unlinked file beside the run and come back a batch at
//! a time, so a dataset larger than memory trains with the same batches, bit for bit.

use crate::dataset::{self, ScanReport};
use crate::error::{Error, Result};
use crate::imageio::{self, Interpolation};
use crate::progress::Sink;
use crate::spill::{self, RowWriter, Rows};
use ndarray::{ArrayD, ArrayView4, Axis, Ix4};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Images decoded in parallel a chunk at a time: what decoding holds beside the store.
const DECODE_CHUNK: usize = 256;

/// Decoded images of one split.
pub struct ImageSet {
    /// (H, W, C) 0..255 per image; None once [`ImageSet::release_pixels`] let them go.
    pixels: Option<Rows<u8>>,
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

/// Load `root/<split>/<class>/*` of each of `splits` as one set for the given classes (a class
/// not in `classes` is an error), in memory when `budget` has room, else spilled to its folder.
/// Several splits (in the same layout) are listed as one folder holding all their images would be
/// (by path below the split folder; a path in two splits: the earlier split's first), so training
/// on them equals training on such a folder whose classes are those of `train/`.
pub fn load_splits(
    root: &Path,
    splits: &[&str],
    classes: &[String],
    spec: &LoadSpec,
    budget: &spill::Budget,
    sink: &dyn Sink,
) -> Result<ImageSet> {
    let split = splits.join("+");
    let (items, labels, report) = list_splits(root, splits, classes)?;
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
    let shape = [spec.size.0 as usize, spec.size.1 as usize, spec.channels];
    let mut store = RowWriter::new(budget, &format!("{split} images"), items.len(), &shape)?;
    // Every file of the split that is not used is listed with the reason.
    let mut skipped: Vec<(PathBuf, String)> = report
        .skipped_non_images
        .iter()
        .map(|p| (p.clone(), format!("{}: not an image file name", crate::fsutil::path_text(p))))
        .chain(report.unreadable.iter().map(|(p, why)| (crate::fsutil::text_path(p), why.clone())))
        .collect();
    let (mut keep_labels, mut files) = (vec![], vec![]);
    let pb = sink.meter(items.len() as u64, "img", &format!("decoding {split}"));
    for (chunk, chunk_labels) in items.chunks(DECODE_CHUNK).zip(labels.chunks(DECODE_CHUNK)) {
        let decoded: Vec<Result<Vec<u8>>> = chunk
            .par_iter()
            .map(|it| {
                let px = decode(&it.path, spec);
                pb.inc(1);
                px
            })
            .collect();
        for ((it, r), &l) in chunk.iter().zip(decoded).zip(chunk_labels) {
            match r {
                Ok(px) => {
                    store.push(1, &px)?;
                    keep_labels.push(l);
                    files.push(it.path.clone());
                }
                Err(e) => {
                    tracing::warn!("{e} (skipped)");
                    skipped.push((it.path.clone(), e.to_string()));
                }
            }
        }
    }
    drop(pb);
    if files.is_empty() {
        let dirs: Vec<String> = splits.iter().map(|s| root.join(s).display().to_string()).collect();
        return Err(Error::BadData { path: root.into(), reason: format!("no readable images in {}", dirs.join(", ")) });
    }
    Ok(ImageSet { pixels: Some(store.finish()?), labels: keep_labels, files, skipped })
}

/// The items of `splits` with their class indices, in [`load_splits`]' order, and what the scans
/// skipped.
fn list_splits(
    root: &Path,
    splits: &[&str],
    classes: &[String],
) -> Result<(Vec<dataset::Item>, Vec<usize>, ScanReport)> {
    let mut listed: Vec<(PathBuf, dataset::Item, usize)> = vec![];
    let mut report = ScanReport::default();
    for split in splits {
        let (_, items, r) = dataset::list_split(root, split)?;
        let labels = dataset::labels(&items, classes, split)?;
        let dir = root.join(split);
        for (it, l) in items.into_iter().zip(labels) {
            let below = it.path.strip_prefix(&dir).map(Path::to_path_buf).unwrap_or_else(|_| it.path.clone());
            listed.push((below, it, l));
        }
        report.skipped_non_images.extend(r.skipped_non_images);
        report.unreadable.extend(r.unreadable);
    }
    // One split keeps its scan's order as it is.
    if splits.len() > 1 {
        listed.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let (items, labels) = listed.into_iter().map(|(_, it, l)| (it, l)).unzip();
    Ok((items, labels, report))
}

/// One image as H·W·C bytes at the spec's size and channels.
fn decode(path: &Path, spec: &LoadSpec) -> Result<Vec<u8>> {
    let a =
        imageio::with_decoded(path, spec.max_pixels, |img| imageio::to_rgb_array(img, spec.size, spec.interpolation))?;
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
}

impl ImageSet {
    /// Images in the set.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Free the pixels (a cached trunk has seen them all); the labels and file lists stay.
    pub fn release_pixels(&mut self) {
        self.pixels = None;
    }

    fn pixels(&self) -> Result<&Rows<u8>> {
        self.pixels.as_ref().ok_or_else(|| Error::Other("the images' pixels were released".into()))
    }

    /// `f` over images `idx` as rows of an (n,H,W,C) array: the whole set and `idx` itself when
    /// it is in memory (no copy), else those rows read back and `0..idx.len()`.
    pub fn with_rows<T>(&self, idx: &[usize], f: impl FnOnce(ArrayView4<'_, u8>, &[usize]) -> T) -> Result<T> {
        self.pixels()?.with_rows(idx, |x, idx| f(x.into_dimensionality::<Ix4>().expect("NHWC rows"), idx))
    }

    /// Images `idx` as float32 multiplied by `scale` (Keras' `rescale`).
    pub fn batch_f32(&self, idx: &[usize], scale: f32) -> Result<ArrayD<f32>> {
        self.pixels()?.with_rows(idx, |x, idx| x.select(Axis(0), idx).mapv(|v| v as f32 * scale))
    }
}
