//! Where tlearn puts things when not told otherwise, relative to the working folder: the one
//! home of the folder conventions the binaries' defaults follow (the Makefile spells the same).

use std::path::{Path, PathBuf};

/// Datasets: `data/<name>/{train,validation,test}/<class>/`.
pub const DATA: &str = "data";
/// Backbones and nets: `onnx/<name>.onnx` (+ sidecar), the user catalog.
pub const ONNX: &str = "onnx";
/// Feature caches: `features/<dataset>/<backbone>-<size>/`.
pub const FEATURES: &str = "features";
/// Run folders: `runs/<run>/`.
pub const RUNS: &str = "runs";
/// Reports: `reports/<run>/`.
pub const REPORTS: &str = "reports";
/// `tlearn-compare`'s runs and table.
pub const COMPARE_RUNS: &str = "runs/compare";
pub const COMPARE_REPORTS: &str = "reports/compare";
/// The prepared data sets and their raw extractions.
pub const ELPV: &str = "data/elpv";
pub const ELPV_RAW: &str = "data/elpv-raw";
pub const MNIST: &str = "data/mnist";
pub const MNIST_RAW: &str = "data/mnist-raw";
/// Downloads kept between runs: pip wheels, npm tarballs.
pub const WHEELS: &str = ".cache/wheels";
pub const NPM: &str = ".cache/npm";

/// The feature folder of a data set's images through a backbone at a size.
pub fn features_dir(dataset: &str, backbone: &str, size: u32) -> PathBuf {
    Path::new(FEATURES).join(dataset).join(format!("{backbone}-{size}"))
}

/// A built-in net's file: `onnx/<name>.onnx`.
pub fn net_path(name: &str) -> PathBuf {
    Path::new(ONNX).join(format!("{name}.onnx"))
}

/// A run's scores when no output is given: `<reports>/<run>/scores.csv`.
pub fn scores_path(reports: &Path, run: &str) -> PathBuf {
    reports.join(run).join("scores.csv")
}
