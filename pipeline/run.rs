//! A training run's folder (`runs/<name>/`): the head, its history and the record that later
//! stages (evaluate, score) read to know the classes, backbone and input size.

use crate::error::Result;
use crate::features::FeatureInfo;
use crate::fsutil;
use crate::train::{head::HeadSpec, Epoch, FitConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const HEAD: &str = "head.onnx";
pub const HISTORY_CSV: &str = "history.csv";
pub const HISTORY_PNG: &str = "history.png";

/// `runs/<name>/head.onnx.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    pub name: String,
    pub features_dir: PathBuf,
    /// The training features' sidecar (backbone, size, preprocessing, classes).
    pub features: FeatureInfo,
    pub validation_npy_sha256: Option<String>,
    pub head: HeadSpec,
    pub fit: FitConfig,
    pub loss: crate::train::graph::Loss,
    pub classes: Vec<String>,
    pub head_sha256: String,
    pub final_epoch: Option<Epoch>,
    pub train_seconds: f64,
    pub tlearn_version: String,
}

impl RunInfo {
    pub fn load(run_dir: &Path) -> Result<RunInfo> {
        fsutil::read_json(&fsutil::sidecar_path(&run_dir.join(HEAD)))
    }
}

pub fn write_history_csv(path: &Path, h: &[Epoch]) -> Result<()> {
    let mut w = csv::Writer::from_writer(vec![]);
    for e in h {
        w.serialize(e).map_err(|e| crate::Error::Other(e.to_string()))?;
    }
    fsutil::write_bytes_atomic(path, &w.into_inner().map_err(|e| crate::Error::Other(e.to_string()))?)
}
