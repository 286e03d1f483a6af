//! A head run (`tlearn-head`): its record and its predictions — the head on a split of cached
//! features, averaged over the run's TTA views.

use crate::error::{Error, Result};
use crate::features::{self, FeatureInfo, Features};
use crate::fsutil;
use crate::heads::{ClassicalSpec, HeadKind, HeadSpec};
use crate::history::Epoch;
use crate::imageio::View;
use crate::metrics;
use crate::runtime::SessionOptions;
use crate::train::lr_find::LrChoice;
use crate::train::FitConfig;
use ndarray::ArrayD;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const HEAD: &str = "head.onnx";

/// A head run's record (in `run.json`; `head.onnx.json` before records were versioned).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HeadRecord {
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
    /// `--lr auto`: how `fit`'s rate was chosen (the range test's suggestions and sweep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_auto: Option<LrChoice>,
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

impl HeadRecord {
    /// Names read from files are checked like names given on the command line.
    pub(super) fn check(&self, record: &Path) -> Result<()> {
        fsutil::check_name_in(record, "backbone", &self.features.backbone)
    }

    /// The run's `head.onnx`, checked against the sha256 this record holds (a head replaced by
    /// another run's is refused, not used).
    pub fn read_head(&self, run_dir: &Path) -> Result<Vec<u8>> {
        let head = run_dir.join(HEAD);
        fsutil::read_verified(&head, &self.head_sha256).map_err(|e| match e {
            Error::Checksum { path, expected, got } => Error::BadData {
                path,
                reason: format!(
                    "changed since the run was recorded (sha256 {got}, recorded {expected}); \
                     retrain the run or restore its head"
                ),
            },
            e => e,
        })
    }
}

/// The run's head on one split of cached features in `fdir`: class probabilities averaged over the
/// plain images and the run's TTA views, with the plain split's features (files, labels).
pub fn predict_split(
    run_dir: &Path,
    info: &HeadRecord,
    fdir: &Path,
    split: &str,
    opts: &SessionOptions,
) -> Result<(ArrayD<f32>, Features)> {
    let mut views = features::load_views(fdir, split, &info.tta)?;
    let f = &views[0];
    if f.info.classes != info.classes {
        return Err(Error::BadData {
            path: fdir.into(),
            reason: format!(
                "classes {:?} differ from the run's {:?}: give features of data with the run's classes (by \
                 default its own, {})",
                f.info.classes,
                info.classes,
                info.features_dir.display()
            ),
        });
    }
    if f.info.backbone_sha256 != info.features.backbone_sha256 || f.info.size != info.features.size {
        let (bb, size) = (&info.features.backbone, info.features.size);
        let these = match (&f.info.backbone, f.info.size) {
            (b, s) if b == bb && s == size => format!("another {bb} (its sha256 differs)"),
            (b, s) => format!("{b} at {s}"),
        };
        return Err(Error::BadData {
            path: fdir.into(),
            reason: format!(
                "features of {these}, but the run was trained on {bb} at {size}: give features of that backbone \
                 (`tlearn-extract --backbone {bb} --size {size}`), or train a run on these"
            ),
        });
    }
    let head = run_dir.join(HEAD);
    let bytes = info.read_head(run_dir)?;
    let mut sum: Option<ArrayD<f32>> = None;
    for v in &views {
        let p = crate::train::predict(&bytes, &head, &v.x, 256, opts)?;
        metrics::check_width(&p, info.classes.len(), &head)?;
        sum = Some(match sum {
            Some(s) => s + p,
            None => p,
        });
    }
    let probs = sum.expect("at least the plain view") / views.len() as f32;
    Ok((probs, views.swap_remove(0)))
}
