//! Folders of Grad-CAM overlays: `tlearn-score --explain DIR` (an overlay of every image scored,
//! made with the same deployable model — its plain view when it has TTA views) and a report's
//! `gradcam/`, each with an `index.csv` naming the overlays, which is what a later run removes.
//! A sharded run (`--shard I/N`) writes `index.I-of-N.csv` and `I-of-N-NNNNN-<stem>.png`, so the
//! shards of one job can share the folder.

use crate::error::Result;
use crate::fsutil;
use crate::progress::Sink;
use crate::runtime::SessionOptions;
use std::path::{Path, PathBuf};

/// The index of the overlays (of an unsharded run).
pub const INDEX: &str = "index.csv";

/// The index file of `shard` (or of an unsharded run).
pub fn index_name(shard: Option<crate::shard::Shard>) -> String {
    match shard {
        Some(s) => format!("index.{}-of-{}.csv", s.index, s.count),
        None => INDEX.into(),
    }
}

/// One row of [`INDEX`].
#[derive(serde::Serialize)]
struct Row {
    path: String,
    overlay: String,
    class: String,
    probability: f32,
}

/// What [`explain_files`] wrote.
#[derive(Debug, Default)]
pub struct ExplainedFiles {
    pub written: usize,
    /// Images that could not be explained: (path, why).
    pub skipped: Vec<(PathBuf, String)>,
}

/// Overlays of `files` (in path order, `NNNNN-<stem>.png`) into `dir` and its index (path,
/// overlay, class, probability: the predicted class's). Images up to `max_pixels` are decoded.
/// `dir` must be new, empty or tlearn's own ([`crate::output::claim_dir`]); the overlays an
/// earlier run listed in the same index are removed first, and nothing else.
pub fn explain_files(
    model_path: &Path,
    files: &[PathBuf],
    dir: &Path,
    (max_pixels, shard): (u64, Option<crate::shard::Shard>),
    opts: &SessionOptions,
    sink: &dyn Sink,
) -> Result<ExplainedFiles> {
    let inputs: Vec<&Path> = files.iter().map(|p| p.as_path()).chain([model_path]).collect();
    fsutil::check_output_apart(dir, &inputs)?;
    let (mut cam, meta) = grad_cam(model_path, opts)?;
    crate::output::claim_dir(dir, "Grad-CAM overlays", |d| has_own_index(&d.join(INDEX)))?;
    let index = dir.join(index_name(shard));
    remove_listed(&index)?;
    let prefix = shard.map(|s| format!("{}-of-{}-", s.index, s.count)).unwrap_or_default();
    let mut sorted: Vec<&PathBuf> = files.iter().collect();
    sorted.sort();
    let (mut rows, mut done) = (vec![], ExplainedFiles::default());
    let meter = sink.meter(sorted.len() as u64, "img", "Grad-CAM");
    for (i, f) in sorted.into_iter().enumerate() {
        let png = super::png_path(dir, i, &f.to_string_lossy());
        let png = png.with_file_name(format!("{prefix}{}", png.file_name().unwrap_or_default().to_string_lossy()));
        match super::file(&mut cam, f, None, max_pixels, &png) {
            Ok((e, _)) => rows.push(Row {
                path: fsutil::csv_cell(&fsutil::path_text(f)).into_owned(),
                overlay: png.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                class: fsutil::csv_cell(&meta.classes[e.class]).into_owned(),
                probability: e.probs[e.class],
            }),
            Err(e) => done.skipped.push((f.clone(), e.to_string())),
        }
        meter.inc(1);
    }
    done.written = rows.len();
    fsutil::write_bytes_atomic(&index, &fsutil::csv_bytes(&index, rows)?)?;
    Ok(done)
}

/// Write an overlay index at `index` (tlearn's header): (path, overlay file name, class,
/// probability) per overlay, so a later run removes exactly these ([`remove_listed`]).
pub fn write_overlay_index(index: &Path, rows: impl IntoIterator<Item = (String, String, String, f32)>) -> Result<()> {
    let rows = rows.into_iter().map(|(path, overlay, class, probability)| Row {
        path: fsutil::csv_cell(&path).into_owned(),
        overlay,
        class: fsutil::csv_cell(&class).into_owned(),
        probability,
    });
    fsutil::write_bytes_atomic(index, &fsutil::csv_bytes(index, rows)?)
}

/// Grad-CAM for the deployable model at `model_path` (its plain view when it has TTA views), and
/// the model's metadata.
pub fn grad_cam(model_path: &Path, opts: &SessionOptions) -> Result<(super::GradCam, crate::runs::ModelMeta)> {
    crate::runs::check_current(model_path)?;
    let model = crate::onnx::load_model(model_path)?;
    crate::runs::check_differentiable(&model, model_path, "Grad-CAM")?;
    let meta = crate::runs::meta(&model, model_path)?;
    let plain = crate::runs::plain(&model, model_path)?;
    let cam = super::GradCam::new(&plain, model_path, meta.size, meta.interpolation, opts)?;
    Ok((cam, meta))
}

/// The header of tlearn's index (the fields of [`Row`]).
const HEADER: &str = "path,overlay,class,probability";

/// Does `index` start with tlearn's own header (a folder filled before folders were marked)?
fn has_own_index(index: &Path) -> bool {
    fsutil::starts_with_line(index, HEADER)
}

/// Remove the overlays an earlier run listed in `index`: only in a folder tlearn owns, only from
/// an index with tlearn's header, and only files named as tlearn names overlays (the index may
/// have been edited; the folder may hold other files).
pub fn remove_listed(index: &Path) -> Result<()> {
    if !has_own_index(index) {
        return Ok(());
    }
    let Ok(text) = std::fs::read_to_string(index) else { return Ok(()) };
    let listed: std::collections::HashSet<String> = csv::Reader::from_reader(text.as_bytes())
        .records()
        .flatten()
        .filter_map(|row| row.get(1).map(String::from))
        .collect();
    let dir = fsutil::parent_dir(index);
    crate::output::remove_own_files(dir, |n| listed.contains(n) && crate::output::is_overlay_name(n))?;
    Ok(())
}
