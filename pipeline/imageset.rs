//! A split of a class-folder dataset decoded once as 8-bit (N,H,W,C) at the model's input size —
//! what from-scratch training and fine-tuning iterate over for many epochs (augmentation then
//! works on these pixels, on the fly). The pixels stay in memory while they fit a [`PixelBudget`];
//! past it they go to an unlinked file beside the run and come back a batch at a time, so a
//! dataset larger than memory trains with the same batches, bit for bit.

use crate::dataset;
use crate::error::{Error, IoContext, Result};
use crate::imageio::{self, Interpolation};
use crate::progress::Sink;
use ndarray::{Array4, ArrayD, Axis};
use rayon::prelude::*;
use std::cell::Cell;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Images decoded in parallel a chunk at a time: what decoding holds beside the store.
const DECODE_CHUNK: usize = 256;

/// Decoded images of one split.
pub struct ImageSet {
    pixels: Pixels,
    /// (H, W, C) of every image.
    shape: [usize; 3],
    pub labels: Vec<usize>,
    pub files: Vec<PathBuf>,
    /// Unreadable images: (path, reason).
    pub skipped: Vec<(PathBuf, String)>,
}

enum Pixels {
    Memory(Array4<u8>),
    /// Rows of H·W·C bytes in a file no folder lists any more (it goes when the set does).
    Disk(File),
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

/// How many bytes of decoded pixels the sets loaded with it may hold in memory together, and the
/// folder the rest spills to.
pub struct PixelBudget {
    left: Cell<u64>,
    dir: PathBuf,
}

impl PixelBudget {
    pub fn new(bytes: u64, dir: &Path) -> PixelBudget {
        PixelBudget { left: Cell::new(bytes), dir: dir.to_path_buf() }
    }

    /// Take `bytes` from the budget when they fit.
    fn take(&self, bytes: u64) -> bool {
        let fits = bytes <= self.left.get();
        if fits {
            self.left.set(self.left.get() - bytes);
        }
        fits
    }

    /// A fresh file in the spill folder, already unlinked: the kernel frees it when the set is
    /// dropped or the process dies, so no run leaves pixels behind.
    fn spill_file(&self, split: &str) -> Result<File> {
        std::fs::create_dir_all(&self.dir).at(&self.dir)?;
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.join(format!(".pixels-{split}-{}-{n}.tmp", std::process::id()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).at(&path)?;
        std::fs::remove_file(&path).at(&path)?;
        Ok(file)
    }
}

/// Where decoded rows go while a split loads.
enum Store {
    Memory(Vec<u8>),
    Disk(std::io::BufWriter<File>, PathBuf),
}

impl Store {
    fn push(&mut self, row: &[u8]) -> Result<()> {
        match self {
            Store::Memory(v) => v.extend_from_slice(row),
            Store::Disk(w, dir) => w.write_all(row).at(&*dir)?,
        }
        Ok(())
    }

    fn finish(self, n: usize, shape: [usize; 3]) -> Result<Pixels> {
        Ok(match self {
            Store::Memory(v) => {
                Pixels::Memory(Array4::from_shape_vec((n, shape[0], shape[1], shape[2]), v).expect("sizes match"))
            }
            Store::Disk(w, dir) => Pixels::Disk(w.into_inner().map_err(|e| e.into_error()).at(&dir)?),
        })
    }
}

/// Load `root/split/<class>/*` for the given classes (a class not in `classes` is an error),
/// in memory when `budget` has room for the split, else spilled to its folder.
pub fn load_split(
    root: &Path,
    split: &str,
    classes: &[String],
    spec: &LoadSpec,
    budget: &PixelBudget,
    sink: &dyn Sink,
) -> Result<ImageSet> {
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
    let shape = [spec.size.0 as usize, spec.size.1 as usize, spec.channels];
    let bytes = (items.len() * shape.iter().product::<usize>()) as u64;
    let mut store = if budget.take(bytes) {
        Store::Memory(Vec::with_capacity(bytes as usize))
    } else {
        tracing::info!(
            "{split}: {} images, {:.1} MB of pixels past the memory budget: kept in a file in {} and read a \
             batch at a time",
            items.len(),
            bytes as f64 / 1e6,
            budget.dir.display()
        );
        Store::Disk(std::io::BufWriter::with_capacity(1 << 20, budget.spill_file(split)?), budget.dir.clone())
    };
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
                    store.push(&px)?;
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
        return Err(Error::BadData { path: root.join(split), reason: "no readable images".into() });
    }
    let pixels = store.finish(files.len(), shape)?;
    Ok(ImageSet { pixels, shape, labels: keep_labels, files, skipped })
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

    /// Whether the pixels were spilled to disk.
    pub fn on_disk(&self) -> bool {
        matches!(self.pixels, Pixels::Disk(_))
    }

    /// `f` over images `idx` as rows of an (n,H,W,C) array: the whole set and `idx` itself when
    /// it is in memory (no copy), else those rows read back and `0..idx.len()`.
    pub fn with_rows<T>(&self, idx: &[usize], f: impl FnOnce(&Array4<u8>, &[usize]) -> T) -> Result<T> {
        match &self.pixels {
            Pixels::Memory(x) => Ok(f(x, idx)),
            Pixels::Disk(file) => {
                let [h, w, c] = self.shape;
                let row = h * w * c;
                let mut buf = vec![0u8; idx.len() * row];
                for (k, &i) in idx.iter().enumerate() {
                    let at = (i * row) as u64;
                    file.read_exact_at(&mut buf[k * row..(k + 1) * row], at)
                        .map_err(|e| Error::Other(format!("reading image {i} back from the spilled pixels: {e}")))?;
                }
                let rows = Array4::from_shape_vec((idx.len(), h, w, c), buf).expect("sizes match");
                let order: Vec<usize> = (0..idx.len()).collect();
                Ok(f(&rows, &order))
            }
        }
    }

    /// Images `idx` as float32 multiplied by `scale` (Keras' `rescale`).
    pub fn batch_f32(&self, idx: &[usize], scale: f32) -> Result<ArrayD<f32>> {
        self.with_rows(idx, |x, idx| x.select(Axis(0), idx).mapv(|v| v as f32 * scale).into_dyn())
    }
}
