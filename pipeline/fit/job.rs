//! What a fit is asked to do and what it produced.

use crate::metrics::Metrics;
use crate::params::Checked;
use crate::runs::{FitRecord, FitSettings};
use crate::runtime::SessionOptions;
use std::path::PathBuf;

/// A fit to run.
pub struct FitJob {
    pub settings: Checked<FitSettings>,
    /// The fit's folder, `runs/<name>/`.
    pub run_dir: PathBuf,
    /// Where its report goes, `reports/<name>/`.
    pub reports: PathBuf,
    pub onnx_dir: PathBuf,
    pub session: SessionOptions,
    pub max_memory: Option<u64>,
    /// Grad-CAM overlays in the test report: the N most confident mistakes (0: none).
    pub explain: usize,
    /// Delete what an earlier fit of this name wrote and start over.
    pub restart: bool,
}

/// What a fit produced.
pub struct Fitted {
    pub record: FitRecord,
    /// The test metrics (None without test images; per fold in the record for K-fold).
    pub metrics: Option<Metrics>,
    /// The deployable model, `runs/<name>/model.onnx` (None for K-fold).
    pub model: Option<PathBuf>,
}
