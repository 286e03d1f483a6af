//! A run folder (`runs/<name>/`) as a domain type: the one versioned record every kind of run
//! writes (`run.json`), what the run predicts on a split, and its deployable model. Training
//! stages produce a [`Run`]; evaluate, score and explain take one, whatever kind it is.
//!
//! Knows no stage: it does not train, evaluate or score; it knows only what a finished run left.

pub mod deployable;
pub mod finetune;
mod fuse;
pub mod head;

pub use deployable::{check_current, check_current_as, check_differentiable, ModelInfo, MODEL};
pub use finetune::{FinetuneConfig, FinetuneRecord, TrunkInfo};
pub use fuse::{deployable, fuse, meta, plain, ModelMeta, INPUT, OUTPUT};
pub use head::{HeadRecord, HEAD};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::progress::Sink;
use crate::runtime::SessionOptions;
use ndarray::ArrayD;
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
}

/// `run.json`: the format, then the record.
#[derive(Serialize, Deserialize)]
struct Stored {
    format: u32,
    #[serde(flatten)]
    record: Record,
}

/// Write `record` as `run_dir/run.json` (atomically; the last file a training stage writes).
pub fn write_record(run_dir: &Path, record: &Record) -> Result<()> {
    fsutil::write_json(&run_dir.join(RECORD), &Stored { format: FORMAT, record: record.clone() })
}

/// How a run predicts: where its graphs run, and how much memory a fine-tune's decoded images may
/// hold before they are read from a file in the run folder (None: the default budget).
#[derive(Clone, Debug, Default)]
pub struct PredictOptions {
    pub session: SessionOptions,
    pub max_memory: Option<u64>,
}

/// A finished run, opened from its folder.
#[derive(Clone, Debug)]
pub struct Run {
    pub dir: PathBuf,
    pub name: String,
    pub record: Record,
}

/// A run's class probabilities on a split, with each row's file and true class.
pub struct Predictions {
    pub probs: ArrayD<f32>,
    /// (path as `fsutil::path_text`, true class index) per row.
    pub files: Vec<(String, usize)>,
    /// Images of the split that could not be read: (path, why).
    pub skipped: Vec<(String, String)>,
    /// The sha256 of what was predicted on, when it is one file (cached features).
    pub source_sha256: Option<String>,
}

impl Run {
    /// The run in `dir`: its `run.json`, or the record an older tlearn wrote.
    pub fn open(dir: &Path) -> Result<Run> {
        let record = read_record(dir)?;
        let name = fsutil::real_path(dir).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Run { dir: dir.to_path_buf(), name, record })
    }

    pub fn classes(&self) -> &[String] {
        match &self.record {
            Record::Head(h) => &h.classes,
            Record::Finetune(f) => &f.classes,
        }
    }

    /// What evaluation predicts on when no other source is given: the run's feature folder (a
    /// head run) or dataset (a fine-tune).
    pub fn default_source(&self) -> &Path {
        match &self.record {
            Record::Head(h) => &h.features_dir,
            Record::Finetune(f) => &f.config.data,
        }
    }

    /// The run's probabilities on `split` of `source` (a feature folder for a head run, a class-
    /// folder dataset for a fine-tune; default: the run's own), as the run's own evaluation
    /// computes them: the head on cached features, or the best epoch's net on the images loaded as
    /// training loaded them; averaged over the run's TTA views.
    pub fn predict(
        &self,
        split: &str,
        source: Option<&Path>,
        opts: &PredictOptions,
        sink: &dyn Sink,
    ) -> Result<Predictions> {
        let source = source.unwrap_or(self.default_source());
        match &self.record {
            Record::Head(h) => {
                let (probs, f) = head::predict_split(&self.dir, h, source, split, &opts.session)?;
                let files = f.files.iter().map(|r| (r.path.clone(), r.label)).collect();
                Ok(Predictions { probs, files, skipped: vec![], source_sha256: Some(f.info.npy_sha256.clone()) })
            }
            Record::Finetune(f) => {
                let (session, max_memory) = (opts.session.clone(), opts.max_memory);
                let cfg = FinetuneConfig { run_dir: self.dir.clone(), session, max_memory, ..f.config.clone() };
                let best = self.dir.join(crate::train::learner::BEST);
                let bytes = match &f.best_sha256 {
                    Some(sha) => fsutil::read_verified(&best, sha)?,
                    None => std::fs::read(&best).map_err(|e| Error::Io { path: best.clone(), err: e })?,
                };
                let net = crate::onnx::decode_model(&bytes, &best)?;
                let (probs, set) = finetune::predict_split((&net, &best), &cfg, (source, split), &f.classes, sink)?;
                let files = set.files.iter().zip(&set.labels).map(|(p, &l)| (fsutil::path_text(p), l)).collect();
                let skipped = set.skipped.iter().map(|(p, why)| (fsutil::path_text(p), why.clone())).collect();
                Ok(Predictions { probs, files, skipped, source_sha256: None })
            }
        }
    }

    /// What `metrics.json` records about the run beside the metrics of `split`.
    pub fn context(&self, split: &str, p: &Predictions) -> serde_json::Value {
        match &self.record {
            Record::Head(info) => serde_json::json!({
                "run": self.name,
                "split": split,
                "backbone": info.features.backbone,
                "size": info.features.size,
                "kind": info.kind,
                "head": info.head,
                "classical": info.classical,
                "fit": info.fit,
                "train_views": info.train_views,
                "tta": info.tta,
                "features_npy_sha256": p.source_sha256,
                "head_sha256": info.head_sha256,
            }),
            Record::Finetune(info) => serde_json::json!({
                "run": self.name,
                "split": split,
                "model": info.config.model,
                "best_epoch": info.best_epoch.as_ref().map(|e| e.epoch).unwrap_or(0),
                "epochs_run": info.epochs_run,
                "include_validation": info.config.include_validation,
                "train_seconds": info.train_seconds,
                "fit": info.config.fit,
                "augment": info.config.augment,
                "tta": info.config.tta,
                "model_sha256": info.model_sha256,
                "skipped": p.skipped,
            }),
        }
    }

    /// A few words on what the run is: its backbone and size, or the net it fine-tuned.
    pub fn describe(&self) -> String {
        match &self.record {
            Record::Head(h) => format!("{} {s}×{s}, {} head", h.features.backbone, h.kind.name(), s = h.features.size),
            Record::Finetune(f) => {
                let best = f.best_epoch.as_ref().map(|e| e.epoch).unwrap_or(0);
                format!("{} fine-tuned, epoch {best}", f.config.model.display())
            }
        }
    }

    /// The run's training curves (written when it trained more than one epoch).
    pub fn history_png(&self) -> PathBuf {
        self.dir.join(crate::history::HISTORY_PNG)
    }

    /// The run's deployable model (`model.onnx`): a head run's is built (or rebuilt) from its head
    /// and the backbone in `onnx_dir`; a fine-tune's is its own, checked.
    pub fn deployable(&self, onnx_dir: &Path, sink: &dyn Sink) -> Result<PathBuf> {
        deployable::export(self, onnx_dir, sink)
    }
}

/// The record in `dir`: `run.json`, or (format 1) `head.onnx.json` of a head run or the
/// `model.onnx.json` of a fine-tune that holds its settings.
fn read_record(dir: &Path) -> Result<Record> {
    let path = dir.join(RECORD);
    let record = if path.is_file() {
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
        stored.record
    } else if let Some(old) = Some(fsutil::sidecar_path(&dir.join(HEAD))).filter(|p| p.is_file()) {
        let h: HeadRecord = fsutil::read_json(&old)?;
        Record::Head(h)
    } else if let Some(old) = Some(fsutil::sidecar_path(&dir.join(MODEL))).filter(|p| is_finetune_record(p)) {
        Record::Finetune(fsutil::read_json(&old)?)
    } else {
        return Err(Error::BadData {
            path: dir.into(),
            reason: format!(
                "not a run folder: no {RECORD} (nor the {HEAD}.json or {MODEL}.json of an older tlearn); \
                 train it with tlearn-head or tlearn-finetune --run NAME"
            ),
        });
    };
    if let Record::Head(h) = &record {
        h.check(&path)?;
    }
    Ok(record)
}

/// A format-1 fine-tune record: the deployable model's sidecar holding the run's settings.
fn is_finetune_record(side: &Path) -> bool {
    fsutil::read_json::<serde_json::Value>(side).is_ok_and(|v| v.get("config").is_some())
}
