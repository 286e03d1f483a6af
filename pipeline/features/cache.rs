//! The on-disk form of a feature cache: `<split>[.<view>].npy`, `.labels.npy`, `.files.csv` and
//! the JSON sidecar that validates them (sha256 of the data files, written last); reading a
//! cache checks every recorded sum and the names its sidecar holds.

use super::npy::{NpyRows, NpyWriter};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::imageio::{Interpolation, View};
use crate::runtime;
use crate::shard::Shard;
use ndarray::{Array1, ArrayD, Axis};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

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
    /// sha256 of `<split>.labels.npy` (absent in older sidecars).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_sha256: Option<String>,
    pub skipped: Vec<Skipped>,
    pub device: runtime::Device,
    /// What the device computed in, where not f32 throughout (OpenVINO's precision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<runtime::Precision>,
    pub tlearn_version: String,
    /// The part of the split these features cover (absent: all of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// The dataset folder as given (the prefix of every row's path) and its real path (what
    /// shard merges compare: parts of one dataset, however its path was spelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_real: Option<String>,
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

/// One file of a split as a stage holds it when there may be many: 100,000 take ~12 MB, half
/// what [`FileRow`]s take. Its class is the training class at `label`.
#[derive(Clone, Debug, PartialEq)]
pub struct CompactRow {
    pub path: Box<str>,
    pub label: u32,
    pub sha256: [u8; 32],
}

/// A content hash as 32 bytes (None when `hex` is not 64 hex digits).
pub fn sha256_raw(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).ok().map(|_| out)
}

/// What `<split>.files.csv` lists of a file, whichever form the row is held in.
pub trait ListedRow {
    fn path(&self) -> &str;
    fn label(&self) -> usize;
    fn sha256_hex(&self) -> std::borrow::Cow<'_, str>;
}

impl ListedRow for FileRow {
    fn path(&self) -> &str {
        &self.path
    }
    fn label(&self) -> usize {
        self.label
    }
    fn sha256_hex(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed(&self.sha256)
    }
}

impl ListedRow for CompactRow {
    fn path(&self) -> &str {
        &self.path
    }
    fn label(&self) -> usize {
        self.label as usize
    }
    fn sha256_hex(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Owned(hex::encode(self.sha256))
    }
}

/// File-name stem of one split's cache in one view: `train`, `train.hflip`, ….
pub fn stem(split: &str, view: View) -> String {
    match view {
        View::Identity => split.to_string(),
        v => format!("{split}.{}", v.name()),
    }
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
    read_view(dir, split, view).map_err(|e| killed_hint(dir, split, view, e))
}

/// A cache that fails its checks while a killed extract's pending sidecar lies beside it: say so,
/// and how it is mended.
fn killed_hint(dir: &Path, split: &str, view: View, e: Error) -> Error {
    let pending = Staged::of(dir, split, view).sidecar.0;
    if !pending.exists() {
        return e;
    }
    let reason =
        format!("{e} (a killed tlearn-extract left {}: rerun tlearn-extract on this folder)", pending.display());
    Error::BadData { path: dir.into(), reason }
}

fn read_view(dir: &Path, split: &str, view: View) -> Result<Features> {
    let (info, files) = read_index(dir, split, view)?;
    let npy = view_npy_path(dir, split, view);
    let bytes = fsutil::read_verified(&npy, &info.npy_sha256)?;
    let x =
        ArrayD::<f32>::read_npy(&bytes[..]).map_err(|e| Error::BadData { path: npy.clone(), reason: e.to_string() })?;
    check_rows(dir, split, view, x.shape(), files.len())?;
    let labels = files.iter().map(|f| f.label).collect();
    Ok(Features { x, labels, files, info })
}

/// One view of one split's cache with its rows left on disk, read one at a time (checked as
/// [`load_view`] checks).
pub struct CacheRows {
    pub info: FeatureInfo,
    pub files: Vec<FileRow>,
    pub rows: NpyRows,
}

pub fn open_view(dir: &Path, split: &str, view: View) -> Result<CacheRows> {
    open_rows(dir, split, view).map_err(|e| killed_hint(dir, split, view, e))
}

fn open_rows(dir: &Path, split: &str, view: View) -> Result<CacheRows> {
    let (info, files) = read_index(dir, split, view)?;
    let rows = NpyRows::open(&view_npy_path(dir, split, view), &info.npy_sha256)?;
    check_rows(dir, split, view, rows.shape(), files.len())?;
    if rows.shape() != info.shape {
        return Err(Error::Shape {
            what: format!("{} vs its sidecar", view_npy_path(dir, split, view).display()),
            expected: info.shape.clone(),
            got: rows.shape().to_vec(),
        });
    }
    Ok(CacheRows { info, files, rows })
}

/// What `dir`, given as a feature folder but holding no features, is instead, and what to give:
/// the folder above feature folders (`features/<dataset>/`), or a dataset whose features were
/// never extracted. None: neither (a feature folder that lacks a split).
fn not_features(dir: &Path) -> Option<Error> {
    let bad = |reason: String| Some(Error::BadData { path: dir.into(), reason });
    if dir.join("train").is_dir() {
        return bad(format!(
            "a dataset, not a feature folder: extract its features with `tlearn-extract --data {} --backbone NAME` \
             and give the folder it writes",
            dir.display()
        ));
    }
    let mut below: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| fsutil::sidecar_path(&p.join("train.npy")).is_file())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    below.sort();
    match below.first() {
        Some(first) => bad(format!(
            "holds feature folders ({}), one per backbone and size: give one, e.g. {}",
            below.join(", "),
            dir.join(first).display()
        )),
        None => None,
    }
}

/// A cache's sidecar and its checked file list.
fn read_index(dir: &Path, split: &str, view: View) -> Result<(FeatureInfo, Vec<FileRow>)> {
    let npy = view_npy_path(dir, split, view);
    let info: FeatureInfo = fsutil::read_json(&fsutil::sidecar_path(&npy)).map_err(|e| match e {
        Error::Io { path, .. } => {
            let how = match view {
                View::Identity => String::new(),
                v => format!(" --views {}", v.name()),
            };
            match (view, not_features(dir)) {
                (View::Identity, Some(e)) => e,
                _ => Error::BadData {
                    path,
                    reason: format!("no feature sidecar; run tlearn-extract{how} for split `{split}`"),
                },
            }
        }
        e => e,
    })?;
    // Names read from a sidecar become folder and file names downstream (runs of tlearn-compare,
    // merged caches): checked as on the command line.
    for (what, name) in [("backbone", &info.backbone), ("split", &info.split)] {
        fsutil::check_name_in(&fsutil::sidecar_path(&npy), what, name)?;
    }
    let fp = files_path(dir, split, view);
    let files_bytes = fsutil::read_verified(&fp, &info.files_sha256)?;
    let files = read_files(&fp, &files_bytes)?;
    // Nothing here reads the labels back (the file list holds them), but other tools do.
    if let Some(sum) = &info.labels_sha256 {
        fsutil::read_verified(&labels_path(dir, split, view), sum)?;
    }
    Ok((info, files))
}

fn check_rows(dir: &Path, split: &str, view: View, shape: &[usize], files: usize) -> Result<()> {
    if shape.first() != Some(&files) {
        return Err(Error::Shape {
            what: format!(
                "{} rows vs {}",
                files_path(dir, split, view).display(),
                view_npy_path(dir, split, view).display()
            ),
            expected: vec![shape.first().copied().unwrap_or(0)],
            got: vec![files],
        });
    }
    Ok(())
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

fn read_files(p: &Path, bytes: &[u8]) -> Result<Vec<FileRow>> {
    let mut r = csv::Reader::from_reader(bytes);
    r.deserialize().map(|row| row.map_err(|e| Error::BadData { path: p.into(), reason: e.to_string() })).collect()
}

pub fn npy_bytes<A: WriteNpyExt>(a: &A) -> Result<Vec<u8>> {
    let mut v = vec![];
    a.write_npy(&mut v).map_err(|e| Error::Other(e.to_string()))?;
    Ok(v)
}

/// What a cache's sidecar records besides its rows.
pub struct CacheMeta<'a> {
    pub split: &'a str,
    pub view: View,
    pub backbone: &'a str,
    pub backbone_sha256: &'a str,
    pub size: u32,
    pub interpolation: Interpolation,
    pub preprocess: &'a crate::imageio::Preprocess,
    pub classes: &'a [String],
    pub device: runtime::Device,
    pub precision: Option<runtime::Precision>,
    pub shard: Option<Shard>,
    pub dataset: Option<String>,
    pub dataset_real: Option<String>,
}

/// The real path of a dataset folder, as sidecars record it.
pub fn dataset_real(dataset: &Path) -> Option<String> {
    std::fs::canonicalize(dataset).ok().map(|p| fsutil::path_text(&p))
}

/// Write one split's cache: the data files first, the sidecar (which validates them) last. `fill`
/// pushes one row of `row_shape` per kept file, in order, into the features' writer (streamed,
/// so no split has to be in memory whole). Rows are numbered in order; skipped files are listed
/// sorted by path. Returns the row count.
pub fn write_cache<R: ListedRow>(
    out: &Path,
    m: &CacheMeta<'_>,
    row_shape: &[usize],
    keep: &[&R],
    mut skipped: Vec<Skipped>,
    fill: impl FnOnce(&mut NpyWriter) -> Result<()>,
) -> Result<usize> {
    skipped.sort_by(|a, b| Path::new(&a.path).cmp(Path::new(&b.path)));
    let npy = view_npy_path(out, m.split, m.view);
    let shape: Vec<usize> = std::iter::once(keep.len()).chain(row_shape.iter().copied()).collect();
    let mut w = NpyWriter::create(&npy, &shape)?;
    fill(&mut w)?;
    let sealed = w.seal()?;
    let npy_sha256 = sealed.sha256.clone();
    let staged = Staged::of(out, m.split, m.view);
    let labels = Array1::from_iter(keep.iter().map(|r| r.label() as i64));
    let labels = npy_bytes(&labels)?;
    fsutil::write_bytes_atomic(&staged.labels.0, &labels)?;
    let labels_sha256 = Some(fsutil::sha256_bytes(&labels));
    let files_sha256 = write_files(&staged.files.0, keep, m.classes)?;
    let info = FeatureInfo {
        split: m.split.into(),
        backbone: m.backbone.into(),
        backbone_sha256: m.backbone_sha256.into(),
        size: m.size,
        interpolation: m.interpolation,
        view: m.view,
        preprocess: m.preprocess.clone(),
        classes: m.classes.to_vec(),
        shape,
        n: keep.len(),
        files_sha256,
        npy_sha256,
        labels_sha256,
        skipped,
        device: m.device,
        precision: m.precision,
        tlearn_version: env!("CARGO_PKG_VERSION").into(),
        shard: m.shard,
        dataset: m.dataset.clone(),
        dataset_real: m.dataset_real.clone(),
    };
    // Everything that describes the new rows goes down under pending names before the rows
    // replace the old ones, and takes its place after, the sidecar last: a kill in between
    // leaves a complete `.npy` its pending sidecar vouches for ([`recover_pending`]), never rows
    // no sidecar describes.
    fsutil::write_json(&staged.sidecar.0, &info)?;
    sealed.persist()?;
    staged.commit()?;
    Ok(keep.len())
}

/// A split's labels, file list and sidecar under their pending names (`<name>.pending`), each
/// with the name it takes when the split's new `.npy` is in place.
struct Staged {
    labels: (PathBuf, PathBuf),
    files: (PathBuf, PathBuf),
    sidecar: (PathBuf, PathBuf),
}

impl Staged {
    fn of(dir: &Path, split: &str, view: View) -> Staged {
        let pair = |p: PathBuf| (fsutil::with_suffix(&p, ".pending"), p);
        Staged {
            labels: pair(labels_path(dir, split, view)),
            files: pair(files_path(dir, split, view)),
            sidecar: pair(fsutil::sidecar_path(&view_npy_path(dir, split, view))),
        }
    }

    /// Each pending file that is there renamed into place, the sidecar last.
    fn commit(&self) -> Result<()> {
        for (from, to) in [&self.labels, &self.files, &self.sidecar] {
            if from.exists() {
                std::fs::rename(from, to).at(to)?;
            }
        }
        Ok(())
    }

    fn discard(&self) -> Result<()> {
        for (from, _) in [&self.labels, &self.files, &self.sidecar] {
            if from.exists() {
                std::fs::remove_file(from).at(from)?;
            }
        }
        Ok(())
    }
}

/// Finish what a killed [`write_cache`] left: a pending sidecar whose `.npy`, file list and labels
/// (pending, or in place) are the ones it describes takes the place of the old sidecar,
/// with its pending labels and file list (true); one that does not — the kill came before the
/// rows were renamed into place — is removed with them.
pub fn recover_pending(dir: &Path, split: &str, view: View) -> Result<bool> {
    let staged = Staged::of(dir, split, view);
    let pending = &staged.sidecar.0;
    if !pending.exists() {
        return Ok(false);
    }
    let info: FeatureInfo = match fsutil::read_json(pending) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!("{e}: dropped");
            staged.discard()?;
            return Ok(false);
        }
    };
    let either =
        |(pending, placed): &(PathBuf, PathBuf)| if pending.exists() { pending.clone() } else { placed.clone() };
    let npy = view_npy_path(dir, split, view);
    let labels_ok =
        info.labels_sha256.as_ref().is_none_or(|sum| fsutil::read_verified(&either(&staged.labels), sum).is_ok());
    let complete = labels_ok
        && fsutil::read_verified(&either(&staged.files), &info.files_sha256).is_ok()
        && fsutil::sha256_file(&npy).is_ok_and(|sha| sha == info.npy_sha256);
    if complete {
        staged.commit()?;
    } else {
        staged.discard()?;
    }
    Ok(complete)
}

/// `<split>.files.csv`: the kept rows numbered in order, each with its training class, streamed
/// (hashed as written).
fn write_files<R: ListedRow>(path: &Path, keep: &[&R], classes: &[String]) -> Result<String> {
    #[derive(Serialize)]
    struct Row<'a> {
        index: usize,
        path: &'a str,
        class: &'a str,
        label: usize,
        sha256: &'a str,
    }
    if let Some(r) = keep.iter().find(|r| r.label() >= classes.len()) {
        return Err(Error::BadData {
            path: path.into(),
            reason: format!("{}: label {} of {} classes", r.path(), r.label(), classes.len()),
        });
    }
    let mut hash = Sha256::new();
    fsutil::write_atomic(path, |w| {
        let mut csv = csv::Writer::from_writer(fsutil::Hashing { inner: w, hash: &mut hash });
        for (index, r) in keep.iter().enumerate() {
            let sha = r.sha256_hex();
            let row = Row { index, path: r.path(), class: &classes[r.label()], label: r.label(), sha256: &sha };
            csv.serialize(row).map_err(std::io::Error::other)?;
        }
        csv.flush()
    })?;
    Ok(hex::encode(hash.finalize()))
}
