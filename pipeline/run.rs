//! A training run's folder (`runs/<name>/`): the head, its history and the record that later
//! stages (evaluate, score) read to know the classes, backbone and input size.

use crate::error::{Error, IoContext, Result};
use crate::features::{self, FeatureInfo, Features};
use crate::fsutil;
use crate::heads::{ClassicalSpec, HeadKind};
use crate::imageio::View;
use crate::runtime::SessionOptions;
use crate::train::{head::HeadSpec, Epoch, FitConfig};
use ndarray::ArrayD;
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
    /// Which classifier the head is (runs written before the zoo are dense).
    #[serde(default)]
    pub kind: HeadKind,
    /// Pooling and standardisation (all kinds); units, layers and dropout (dense).
    pub head: HeadSpec,
    /// Hyper-parameters of a classical head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classical: Option<ClassicalSpec>,
    /// The dense head's training loop (recorded, unused by classical heads but for the seed).
    pub fit: FitConfig,
    pub loss: crate::train::graph::Loss,
    pub classes: Vec<String>,
    pub head_sha256: String,
    pub final_epoch: Option<Epoch>,
    pub train_seconds: f64,
    /// Flipped views of the training images added to the training set (feature augmentation).
    #[serde(default)]
    pub train_views: Vec<View>,
    /// Views whose probabilities evaluate and score average with the plain image's (test-time
    /// augmentation; empty = none).
    #[serde(default)]
    pub tta: Vec<View>,
    pub tlearn_version: String,
}

impl RunInfo {
    pub fn load(run_dir: &Path) -> Result<RunInfo> {
        fsutil::read_json(&fsutil::sidecar_path(&run_dir.join(HEAD)))
    }
}

/// The run's head on one split of cached features in `fdir`: class probabilities averaged over the
/// plain images and the run's TTA views, with the plain split's features (files, labels).
pub fn predict_split(
    run_dir: &Path,
    info: &RunInfo,
    fdir: &Path,
    split: &str,
    opts: &SessionOptions,
) -> Result<(ArrayD<f32>, Features)> {
    let mut views = features::load_views(fdir, split, &info.tta)?;
    let f = &views[0];
    if f.info.classes != info.classes {
        return Err(Error::BadData {
            path: fdir.into(),
            reason: format!("classes {:?} differ from the run's {:?}", f.info.classes, info.classes),
        });
    }
    if f.info.backbone_sha256 != info.features.backbone_sha256 || f.info.size != info.features.size {
        return Err(Error::BadData {
            path: fdir.into(),
            reason: "features come from another backbone or size than the run was trained on".into(),
        });
    }
    let head = run_dir.join(HEAD);
    let bytes = std::fs::read(&head).at(&head)?;
    let mut sum: Option<ArrayD<f32>> = None;
    for v in &views {
        let p = crate::train::predict(&bytes, &head, &v.x, 256, opts)?;
        sum = Some(match sum {
            Some(s) => s + p,
            None => p,
        });
    }
    let probs = sum.expect("at least the plain view") / views.len() as f32;
    Ok((probs, views.swap_remove(0)))
}

pub fn write_history_csv(path: &Path, h: &[Epoch]) -> Result<()> {
    let mut w = csv::Writer::from_writer(vec![]);
    for e in h {
        w.serialize(e).map_err(|e| crate::Error::Other(e.to_string()))?;
    }
    fsutil::write_bytes_atomic(path, &w.into_inner().map_err(|e| crate::Error::Other(e.to_string()))?)
}
