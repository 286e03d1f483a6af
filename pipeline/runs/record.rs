//! The one versioned run record, `run.json`: every kind of run writes it last; folders written
//! before it (format 1: the kind's own sidecar) are read too.

use super::ensemble::EnsembleRecord;
use super::finetune::FinetuneRecord;
use super::fit::FitRecord;
use super::fuse::MODEL;
use super::head::{HeadRecord, HEAD};
use crate::error::{Error, Result};
use crate::fsutil;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The run record, in every run folder.
pub const RECORD: &str = "run.json";
/// The record's format: 2 is `run.json`; 1 was a kind's own sidecar (`head.onnx.json`,
/// `model.onnx.json`), still read.
pub const FORMAT: u32 = 2;

/// What a run is, with the kind's own record.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Record {
    /// A head trained on cached features (`tlearn-head`, `tlearn-compare`).
    Head(HeadRecord),
    /// A whole net trained on images (`tlearn-finetune`).
    Finetune(FinetuneRecord),
    /// Finished runs' deployable models averaged as one (`tlearn ensemble`).
    Ensemble(EnsembleRecord),
}

/// What a `run.json` holds: a model's run, or a fit naming the phase folder with its model.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Kind {
    Head(HeadRecord),
    Finetune(FinetuneRecord),
    Ensemble(EnsembleRecord),
    Fit(FitRecord),
}

/// `run.json`: the format, then the record.
#[derive(Serialize, Deserialize)]
struct Stored {
    format: u32,
    #[serde(flatten)]
    kind: Kind,
}

/// Write `record` as `run_dir/run.json` (atomically; the last file a training stage writes).
pub fn write_record(run_dir: &Path, record: &Record) -> Result<()> {
    let kind = match record.clone() {
        Record::Head(h) => Kind::Head(h),
        Record::Finetune(f) => Kind::Finetune(f),
        Record::Ensemble(e) => Kind::Ensemble(e),
    };
    fsutil::write_json(&run_dir.join(RECORD), &Stored { format: FORMAT, kind })
}

/// Write a fit's record as `fit_dir/run.json` (atomically; the last file `tlearn fit` writes).
pub fn write_fit_record(fit_dir: &Path, record: &FitRecord) -> Result<()> {
    fsutil::write_json(&fit_dir.join(RECORD), &Stored { format: FORMAT, kind: Kind::Fit(record.clone()) })
}

/// `dir/run.json` when it exists, its format checked.
fn read_stored(dir: &Path) -> Result<Option<(Kind, PathBuf)>> {
    let path = dir.join(RECORD);
    if !path.is_file() {
        return Ok(None);
    }
    let v: serde_json::Value = fsutil::read_json(&path)?;
    let format = v.get("format").and_then(|f| f.as_u64()).unwrap_or(0);
    if format > FORMAT as u64 {
        return Err(Error::BadData {
            path,
            reason: format!(
                "record format {format}, newer than this tlearn reads ({FORMAT}); use the tlearn that wrote it"
            ),
        });
    }
    let stored: Stored = serde_json::from_value(v)
        .map_err(|e| Error::BadData { path: path.clone(), reason: format!("not a run record: {e}") })?;
    Ok(Some((stored.kind, path)))
}

/// The record of a fit run in `dir` (None: `dir` is not one).
pub fn read_fit(dir: &Path) -> Result<Option<FitRecord>> {
    Ok(match read_stored(dir)? {
        Some((Kind::Fit(f), _)) => Some(f),
        _ => None,
    })
}

/// The folder of the run that holds `dir`'s model: `dir` itself, or a fit run's model phase.
pub fn model_dir(dir: &Path) -> Result<PathBuf> {
    match read_fit(dir)? {
        Some(f) => f.model_dir(dir),
        None => Ok(dir.to_path_buf()),
    }
}

/// The record in `dir`: `run.json`, or (format 1) `head.onnx.json` of a head run or the
/// `model.onnx.json` of a fine-tune that holds its settings.
pub fn read_record(dir: &Path) -> Result<Record> {
    read_record_at(dir).map(|(record, _)| record)
}

/// [`read_record`], with the file it was read from (what messages about the record name).
pub fn read_record_at(dir: &Path) -> Result<(Record, PathBuf)> {
    find_record(dir)?.ok_or_else(|| Error::BadData {
        path: dir.into(),
        reason: format!(
            "not a run folder: no {RECORD} (nor the {HEAD}.json or {MODEL}.json of an older tlearn); \
             train it with tlearn-head or tlearn-finetune --run NAME"
        ),
    })
}

/// `dir`'s record and the file it was read from (a fit run's: its model phase's); None where
/// `dir` holds none (a record there that cannot be read is an error, not None).
pub fn find_record(dir: &Path) -> Result<Option<(Record, PathBuf)>> {
    let dir = &model_dir(dir)?;
    let old_head = fsutil::sidecar_path(&dir.join(HEAD));
    let old_finetune = fsutil::sidecar_path(&dir.join(MODEL));
    let (record, path) = if let Some((kind, path)) = read_stored(dir)? {
        match kind {
            Kind::Head(h) => (Record::Head(h), path),
            Kind::Finetune(f) => (Record::Finetune(f), path),
            Kind::Ensemble(e) => (Record::Ensemble(e), path),
            Kind::Fit(_) => {
                return Err(Error::BadData { path, reason: "a fit run's model phase is a fit run itself".into() })
            }
        }
    } else if old_head.is_file() {
        if is_finetune_record(&old_finetune) {
            tracing::warn!(
                "{}: holds an older tlearn's records of a head run and of a fine-tune; reading the head run's \
                 ({}); retrain the run to write one {RECORD}",
                dir.display(),
                old_head.display()
            );
        }
        let h: HeadRecord = fsutil::read_json(&old_head)?;
        (Record::Head(h), old_head)
    } else if is_finetune_record(&old_finetune) {
        (Record::Finetune(fsutil::read_json(&old_finetune)?), old_finetune)
    } else {
        if old_finetune.is_file() {
            // A sidecar that does not parse is named as such, not taken for a missing record.
            fsutil::read_json::<serde_json::Value>(&old_finetune)?;
        }
        return Ok(None);
    };
    if let Record::Head(h) = &record {
        h.check(&path)?;
    }
    Ok(Some((record, path)))
}

/// A format-1 fine-tune record: the deployable model's sidecar holding the run's settings.
fn is_finetune_record(side: &Path) -> bool {
    fsutil::read_json::<serde_json::Value>(side).is_ok_and(|v| v.get("config").is_some())
}
