//! The feature cache: run a backbone over every split and keep `<split>.npy` (N,h,w,c float32),
//! `<split>.labels.npy` (int64), `<split>.files.csv` and a JSON sidecar. Reruns reuse every row
//! whose image content, backbone and preprocessing are unchanged.
//!
//! Extra *views* (flips, for feature augmentation and test-time augmentation) are caches of their
//! own next to the plain one: `<split>.<view>.npy` with the same rows in the same order.

use crate::backbone::Backbone;
use crate::batch::{run_images, LoadSpec};
use crate::dataset;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::imageio::{Interpolation, View};
use crate::runtime::{self, SessionOptions};
use ndarray::{Array1, ArrayD, Axis};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Extraction settings.
#[derive(Clone, Debug)]
pub struct ExtractConfig {
    pub dataset: PathBuf,
    pub out: PathBuf,
    pub size: u32,
    pub interpolation: Interpolation,
    pub batch: usize,
    pub session: SessionOptions,
    pub max_pixels: u64,
    pub splits: Vec<String>,
    /// Extra views cached besides the plain images (`<split>.<view>.npy`).
    pub views: Vec<View>,
}

/// The sidecar of one split's features.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FeatureInfo {
    pub split: String,
    pub backbone: String,
    pub backbone_sha256: String,
    pub size: u32,
    pub interpolation: Interpolation,
    /// Which view of the images these features are (absent in older sidecars: the plain images).
    #[serde(default)]
    pub view: View,
    pub preprocess: crate::imageio::Preprocess,
    pub classes: Vec<String>,
    pub shape: Vec<usize>,
    pub n: usize,
    /// sha256 of `<split>.files.csv` (which holds the per-file content hashes).
    pub files_sha256: String,
    pub npy_sha256: String,
    pub skipped: Vec<Skipped>,
    pub device: runtime::Device,
    pub tlearn_version: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// One row of `<split>.files.csv`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileRow {
    pub index: usize,
    pub path: String,
    pub class: String,
    pub label: usize,
    pub sha256: String,
}

/// What one split's extraction did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SplitReport {
    pub split: String,
    pub view: View,
    pub n: usize,
    pub reused: usize,
    pub computed: usize,
    pub skipped: usize,
    pub up_to_date: bool,
}

/// File-name stem of one split's cache in one view: `train`, `train.hflip`, ….
pub fn stem(split: &str, view: View) -> String {
    match view {
        View::Identity => split.to_string(),
        v => format!("{split}.{}", v.name()),
    }
}

pub fn npy_path(dir: &Path, split: &str) -> PathBuf {
    view_npy_path(dir, split, View::Identity)
}

pub fn view_npy_path(dir: &Path, split: &str, view: View) -> PathBuf {
    dir.join(format!("{}.npy", stem(split, view)))
}

fn files_path(dir: &Path, split: &str, view: View) -> PathBuf {
    dir.join(format!("{}.files.csv", stem(split, view)))
}

fn labels_path(dir: &Path, split: &str, view: View) -> PathBuf {
    dir.join(format!("{}.labels.npy", stem(split, view)))
}

/// Loaded features of one split.
pub struct Features {
    pub x: ArrayD<f32>,
    pub labels: Vec<usize>,
    pub files: Vec<FileRow>,
    pub info: FeatureInfo,
}

/// Read one split's cache, checking it against its sidecar.
pub fn load(dir: &Path, split: &str) -> Result<Features> {
    load_view(dir, split, View::Identity)
}

/// Read one view of one split's cache.
pub fn load_view(dir: &Path, split: &str, view: View) -> Result<Features> {
    let npy = view_npy_path(dir, split, view);
    let info: FeatureInfo = fsutil::read_json(&fsutil::sidecar_path(&npy)).map_err(|e| match e {
        Error::Io { path, .. } => {
            let how = match view {
                View::Identity => String::new(),
                v => format!(" --views {}", v.name()),
            };
            Error::BadData { path, reason: format!("no feature sidecar; run tlearn-extract{how} for split `{split}`") }
        }
        e => e,
    })?;
    let bytes = std::fs::read(&npy).at(&npy)?;
    let sha = fsutil::sha256_bytes(&bytes);
    if sha != info.npy_sha256 {
        return Err(Error::Checksum { path: npy, expected: info.npy_sha256, got: sha });
    }
    let x =
        ArrayD::<f32>::read_npy(&bytes[..]).map_err(|e| Error::BadData { path: npy.clone(), reason: e.to_string() })?;
    let fp = files_path(dir, split, view);
    let files = read_files(&fp)?;
    if files.len() != x.shape()[0] {
        return Err(Error::Shape {
            what: format!("{} rows vs {}", fp.display(), npy.display()),
            expected: vec![x.shape()[0]],
            got: vec![files.len()],
        });
    }
    let labels = files.iter().map(|f| f.label).collect();
    Ok(Features { x, labels, files, info })
}

/// The plain cache of a split followed by the given views of it, checked to hold the same
/// images in the same order (the views of one image share a row index).
pub fn load_views(dir: &Path, split: &str, views: &[View]) -> Result<Vec<Features>> {
    let mut out = vec![load(dir, split)?];
    for &v in views.iter().filter(|v| **v != View::Identity) {
        let f = load_view(dir, split, v)?;
        let same = f.files.len() == out[0].files.len()
            && f.files.iter().zip(&out[0].files).all(|(a, b)| a.path == b.path && a.sha256 == b.sha256);
        if !same || f.info.backbone_sha256 != out[0].info.backbone_sha256 || f.info.size != out[0].info.size {
            return Err(Error::BadData {
                path: view_npy_path(dir, split, v),
                reason: format!("{} view is stale: rerun tlearn-extract --views {}", v.name(), v.name()),
            });
        }
        out.push(f);
    }
    Ok(out)
}

/// Stack several views' features (and labels) into one training set, view-major.
pub fn concat_views(views: &[Features]) -> Result<(ArrayD<f32>, Vec<usize>)> {
    let xs: Vec<_> = views.iter().map(|f| f.x.view()).collect();
    let x = ndarray::concatenate(Axis(0), &xs).map_err(|e| Error::Other(e.to_string()))?;
    Ok((x, views.iter().flat_map(|f| f.labels.iter().copied()).collect()))
}

fn read_files(p: &Path) -> Result<Vec<FileRow>> {
    let mut r = csv::Reader::from_path(p).map_err(|e| Error::BadData { path: p.into(), reason: e.to_string() })?;
    r.deserialize().map(|row| row.map_err(|e| Error::BadData { path: p.into(), reason: e.to_string() })).collect()
}

/// Extract every configured split; returns one report per split.
pub fn extract(cfg: &ExtractConfig, bb: &Backbone) -> Result<Vec<SplitReport>> {
    let classes = dataset::training_classes(&cfg.dataset)?;
    let mut session = None;
    let mut reports = vec![];
    for split in &cfg.splits {
        if !cfg.dataset.join(split).is_dir() {
            tracing::warn!("{}: no such split folder, skipped", cfg.dataset.join(split).display());
            continue;
        }
        let rows = split_rows(cfg, split, &classes)?;
        let mut views = vec![View::Identity];
        for v in &cfg.views {
            if !views.contains(v) {
                views.push(*v);
            }
        }
        for view in views {
            reports.push(extract_split(cfg, bb, split, view, &rows, &classes, &mut session)?);
        }
    }
    Ok(reports)
}

/// The files of one split with their labels and content hashes (read once for all its views).
fn split_rows(cfg: &ExtractConfig, split: &str, classes: &[String]) -> Result<Vec<FileRow>> {
    let (_, items, report) = dataset::list_split(&cfg.dataset, split)?;
    for p in &report.skipped_non_images {
        tracing::warn!("{}: skipped (not an image file name)", p.display());
    }
    let labels = dataset::labels(&items, classes, split)?;
    items
        .iter()
        .zip(labels)
        .map(|(it, label)| {
            let bytes = std::fs::read(&it.path).at(&it.path)?;
            Ok(FileRow {
                index: 0,
                path: it.path.display().to_string(),
                class: it.class.clone(),
                label,
                sha256: fsutil::sha256_bytes(&bytes),
            })
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn extract_split(
    cfg: &ExtractConfig,
    bb: &Backbone,
    split: &str,
    view: View,
    rows: &[FileRow],
    classes: &[String],
    session: &mut Option<runtime::OpenSession>,
) -> Result<SplitReport> {
    let npy = view_npy_path(&cfg.out, split, view);
    let pre = bb.info.preprocess.clone();
    // What an earlier run left that is still valid: rows keyed by content hash.
    let previous = load_view(&cfg.out, split, view).ok().filter(|f| {
        f.info.backbone_sha256 == bb.info.onnx_sha256
            && f.info.size == cfg.size
            && f.info.interpolation == cfg.interpolation
            && f.info.view == view
            && f.info.preprocess == pre
            && f.info.classes == classes
    });
    let mut cached: HashMap<String, ndarray::ArrayViewD<'_, f32>> = HashMap::new();
    let mut prev_skipped: HashMap<String, String> = HashMap::new();
    if let Some(p) = &previous {
        for (i, f) in p.files.iter().enumerate() {
            cached.insert(f.sha256.clone(), p.x.index_axis(Axis(0), i));
        }
        for s in &p.info.skipped {
            prev_skipped.insert(s.path.clone(), s.reason.clone());
        }
        // Unchanged: the same files with the same contents, bad files still the same bad files.
        let live: Vec<&FileRow> = rows.iter().filter(|r| !prev_skipped.contains_key(&r.path)).collect();
        let same_rows = p.files.len() == live.len()
            && p.files.iter().zip(&live).all(|(a, b)| a.path == b.path && a.sha256 == b.sha256 && a.label == b.label);
        let same_skips = prev_skipped.len() + live.len() == rows.len();
        if same_rows && same_skips {
            tracing::info!("{split}: {} up to date ({} images)", npy.display(), live.len());
            return Ok(SplitReport {
                split: split.into(),
                view,
                n: live.len(),
                reused: live.len(),
                skipped: prev_skipped.len(),
                up_to_date: true,
                ..Default::default()
            });
        }
    }
    let todo: Vec<usize> = (0..rows.len()).filter(|&i| !cached.contains_key(&rows[i].sha256)).collect();
    let todo_paths: Vec<PathBuf> = todo.iter().map(|&i| PathBuf::from(&rows[i].path)).collect();
    let mut computed: HashMap<usize, ArrayD<f32>> = HashMap::new();
    let mut skipped = vec![];
    let mut device = previous.as_ref().map(|p| p.info.device).unwrap_or(runtime::Device::Cpu);
    if !todo.is_empty() {
        if session.is_none() {
            *session = Some(runtime::open(&bb.bytes, &bb.path, &cfg.session)?);
        }
        let s = session.as_mut().expect("opened");
        device = s.device;
        let spec = LoadSpec {
            size: (cfg.size, cfg.size),
            interpolation: cfg.interpolation,
            preprocess: pre.clone(),
            max_pixels: cfg.max_pixels,
            view,
        };
        let pb = crate::cli::progress(todo.len() as u64, "img");
        pb.set_message(match view {
            View::Identity => format!("{split} ({})", bb.name),
            v => format!("{split} {} ({})", v.name(), bb.name),
        });
        run_images(
            &mut s.session,
            crate::onnx::cut::IMAGE,
            crate::onnx::cut::FEATURES,
            &todo_paths,
            &spec,
            cfg.batch,
            |i, r| {
                match r {
                    Ok(y) => {
                        computed.insert(todo[i], y.to_owned());
                    }
                    Err(e) => {
                        tracing::warn!("{e} (skipped)");
                        skipped.push(Skipped { path: rows[todo[i]].path.clone(), reason: e.to_string() });
                    }
                }
                pb.inc(1);
                Ok(())
            },
        )?;
        pb.finish_and_clear();
    }
    let skipped_paths: std::collections::HashSet<&str> = skipped.iter().map(|s| s.path.as_str()).collect();
    let mut keep = vec![];
    let mut views = vec![];
    for (i, r) in rows.iter().enumerate() {
        if skipped_paths.contains(r.path.as_str()) {
            continue;
        }
        let v = match computed.get(&i) {
            Some(a) => a.view(),
            None => cached[&r.sha256].clone(),
        };
        views.push(v);
        keep.push(r.clone());
    }
    if keep.is_empty() {
        return Err(Error::BadData { path: cfg.dataset.join(split), reason: "no readable images".into() });
    }
    let x = ndarray::stack(Axis(0), &views).map_err(|e| Error::Other(e.to_string()))?;
    for (i, r) in keep.iter_mut().enumerate() {
        r.index = i;
    }
    let labels = Array1::from_iter(keep.iter().map(|r| r.label as i64));
    // Write data files first, the sidecar (which validates them) last.
    let mut npy_bytes = vec![];
    x.write_npy(&mut npy_bytes).map_err(|e| Error::Other(e.to_string()))?;
    fsutil::write_bytes_atomic(&npy, &npy_bytes)?;
    let mut lb = vec![];
    labels.write_npy(&mut lb).map_err(|e| Error::Other(e.to_string()))?;
    fsutil::write_bytes_atomic(&labels_path(&cfg.out, split, view), &lb)?;
    let mut w = csv::Writer::from_writer(vec![]);
    for r in &keep {
        w.serialize(r).map_err(|e| Error::Other(e.to_string()))?;
    }
    let files_csv = w.into_inner().map_err(|e| Error::Other(e.to_string()))?;
    fsutil::write_bytes_atomic(&files_path(&cfg.out, split, view), &files_csv)?;
    let info = FeatureInfo {
        split: split.into(),
        backbone: bb.name.clone(),
        backbone_sha256: bb.info.onnx_sha256.clone(),
        size: cfg.size,
        interpolation: cfg.interpolation,
        view,
        preprocess: pre,
        classes: classes.to_vec(),
        shape: x.shape().to_vec(),
        n: keep.len(),
        files_sha256: fsutil::sha256_bytes(&files_csv),
        npy_sha256: fsutil::sha256_bytes(&npy_bytes),
        skipped: skipped.clone(),
        device,
        tlearn_version: env!("CARGO_PKG_VERSION").into(),
    };
    fsutil::write_json(&fsutil::sidecar_path(&npy), &info)?;
    Ok(SplitReport {
        split: split.into(),
        view,
        n: keep.len(),
        reused: keep.len() - computed.len(),
        computed: computed.len(),
        skipped: skipped.len(),
        up_to_date: false,
    })
}

/// Flattened view helper: (N, rest).
pub fn flatten(x: &ArrayD<f32>) -> ndarray::Array2<f32> {
    let n = x.shape()[0];
    let d: usize = x.shape()[1..].iter().product();
    x.to_shape((n, d)).expect("contiguous").to_owned()
}
