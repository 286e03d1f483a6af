//! A finished run, opened from its folder: what it is, what it predicts on a split, what
//! evaluation records of it.

use super::fit::FitRecord;
use super::record::{find_record, read_fit, read_record, Record};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::runtime::SessionOptions;
use ndarray::ArrayD;
use std::path::{Path, PathBuf};

/// A run's name: its folder's, as given (a link keeps its own name); `.` is named by where it is.
pub fn name_of(dir: &Path) -> String {
    let name = dir.file_name().map(PathBuf::from).or_else(|| fsutil::real_path(dir).file_name().map(PathBuf::from));
    name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The runs in `runs_dir` (its folders with a readable record), sorted by name.
pub fn list(runs_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(runs_dir) else { return vec![] };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && matches!(find_record(p), Ok(Some(_))))
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .collect();
    names.sort();
    names
}

/// There is no run `dir`: the runs its folder holds (and the nearest name), or how to make one.
pub fn unknown_run(dir: &Path) -> Error {
    const SHOWN: usize = 20;
    let (runs, name) = (fsutil::parent_dir(dir), name_of(dir));
    let known = list(runs);
    let hint = if known.is_empty() {
        format!(
            ": {} holds no runs; train one with `tlearn fit DATA --run NAME` (or tlearn-head, tlearn-finetune), or \
             give --runs DIR where yours are",
            runs.display()
        )
    } else {
        let guess = crate::params::nearest(&name, known.iter().map(String::as_str));
        let guess = guess.map(|k| format!("did you mean `{k}`? ")).unwrap_or_default();
        let more = known.len().saturating_sub(SHOWN);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        format!(" in {}: {guess}its runs: {}{more}", runs.display(), known[..known.len().min(SHOWN)].join(", "))
    };
    let nested = nested(runs, &name);
    let hint = match nested.first() {
        Some(group) => {
            format!("{hint}; a run `{name}` is in {}: give --runs {} --run {name}", group.display(), group.display())
        }
        None => hint,
    };
    Error::Unknown { what: "run", name, hint }
}

/// The folders one level below `runs` (a K-fold fit's, a comparison's) that hold a run `name`.
fn nested(runs: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(runs) else { return vec![] };
    let mut groups: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && matches!(find_record(&p.join(name)), Ok(Some(_))))
        .collect();
    groups.sort();
    groups
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
    /// The fit this run is the model of, when it was opened through one (`tlearn fit`).
    pub fit: Option<FitRecord>,
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
    /// The run in `dir`: its `run.json`, or the record an older tlearn wrote. A fit run opens as
    /// the phase that holds its model, under the fit's name.
    pub fn open(dir: &Path) -> Result<Run> {
        if !dir.exists() {
            return Err(unknown_run(dir));
        }
        let fit = read_fit(dir)?;
        let inner = match &fit {
            Some(f) => f.model_dir(dir)?,
            None => dir.to_path_buf(),
        };
        let record = read_record(&inner)?;
        Ok(Run { dir: inner, name: name_of(dir), record, fit })
    }

    pub fn classes(&self) -> &[String] {
        match &self.record {
            Record::Head(h) => &h.classes,
            Record::Finetune(f) => &f.classes,
            Record::Ensemble(e) => &e.classes,
        }
    }

    /// What `metrics.json` records about the run beside the metrics of `split` (and, for a fit's
    /// model, what the fit decided).
    pub fn context(&self, split: &str, p: &Predictions) -> serde_json::Value {
        let mut v = self.own_context(split, p);
        if let Some(f) = &self.fit {
            v["fit"] = serde_json::json!({
                "backbone": f.settings.backbone,
                "size": f.settings.size,
                "model_run": f.model_run,
                "best_epoch": f.best_epoch,
                "final_fit": f.settings.final_fit,
                "balance": f.balance,
                "budget": f.plan.as_ref().map(|p| p.describe()),
            });
        }
        v
    }

    fn own_context(&self, split: &str, p: &Predictions) -> serde_json::Value {
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
            Record::Ensemble(info) => serde_json::json!({
                "run": self.name,
                "split": split,
                "members": info.members,
                "size": info.size,
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
            Record::Ensemble(e) => {
                let names = e.labels();
                format!("the mean of {} runs: {}", names.len(), names.join(", "))
            }
        }
    }

    /// The run's training curves (written when it trained more than one epoch).
    pub fn history_png(&self) -> PathBuf {
        self.dir.join(crate::history::HISTORY_PNG)
    }
}
