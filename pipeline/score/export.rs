//! The deployable model of a head run: `runs/<run>/model.onnx` (preprocessing + backbone + head,
//! [`super::fuse`]) and its sidecar, rebuilt only when the head, the backbone or the TTA views
//! changed.

use crate::error::{Error, Result};
use crate::fsutil;
use crate::progress::Sink;
use crate::run::{RunInfo, HEAD};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const MODEL: &str = "model.onnx";

/// `runs/<run>/model.onnx.json`: what the deployable model was built from.
#[derive(Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    pub head_sha256: String,
    pub backbone_sha256: String,
    #[serde(default)]
    pub tta: Vec<crate::imageio::View>,
    pub model_sha256: String,
}

/// Build `runs/<run>/model.onnx` unless an up-to-date one exists; returns its path. The head
/// must be the one the run recorded, the backbone the one its features came from. A fine-tune's
/// run has no head: its own `model.onnx` is returned once checked.
pub fn export_run(run_dir: &Path, onnx_dir: &Path, sink: &dyn Sink) -> Result<PathBuf> {
    let out = run_dir.join(MODEL);
    let side = fsutil::sidecar_path(&out);
    if !fsutil::sidecar_path(&run_dir.join(HEAD)).exists() && side.is_file() {
        // A fine-tune's run: its model.onnx is the deployable model, checked against its record.
        check_current(&out)?;
        return Ok(out);
    }
    let fresh = |info: &RunInfo| -> Result<bool> {
        let Ok(mi) = fsutil::read_json::<ModelInfo>(&side) else { return Ok(false) };
        Ok(out.exists()
            && mi.head_sha256 == info.head_sha256
            && mi.backbone_sha256 == info.features.backbone_sha256
            && mi.tta == info.tta
            && fsutil::sha256_file(&out)? == mi.model_sha256)
    };
    // The head is checked against its record even when the model is up to date: a run whose
    // head was replaced is refused, not scored.
    let info = RunInfo::load(run_dir)?;
    info.read_head(run_dir)?;
    if fresh(&info)? {
        return Ok(out);
    }
    // Rebuilt under the run's lock (and checked again there): never beside a head being
    // retrained, nor by two scorers at once (the model and its sidecar are read as a pair).
    let _lock = crate::lock::dir(run_dir)?;
    let info = RunInfo::load(run_dir)?;
    let head_bytes = info.read_head(run_dir)?;
    if fresh(&info)? {
        return Ok(out);
    }
    let bb = crate::backbone::Backbone::open(onnx_dir, &info.features.backbone)?;
    if bb.info.onnx_sha256 != info.features.backbone_sha256 {
        return Err(Error::Checksum {
            path: bb.path.clone(),
            expected: info.features.backbone_sha256.clone(),
            got: bb.info.onnx_sha256.clone(),
        });
    }
    let backbone = crate::onnx::decode_model(&bb.bytes, &bb.path)?;
    let head = crate::onnx::decode_model(&head_bytes, &run_dir.join(HEAD))?;
    let f = &info.features;
    let fused = super::fuse(&backbone, &head, &f.preprocess, f.size, f.interpolation, &info.classes, &info.tta)?;
    let bytes = crate::onnx::encode_model(&fused);
    crate::runtime::check_loads(&bytes, &out)?;
    fsutil::write_bytes_atomic(&out, &bytes)?;
    let record = ModelInfo {
        head_sha256: info.head_sha256,
        backbone_sha256: info.features.backbone_sha256,
        tta: info.tta.clone(),
        model_sha256: fsutil::sha256_bytes(&bytes),
    };
    fsutil::write_json(&side, &record)?;
    sink.note(&format!("deployable model → {} ({:.1} MB)", out.display(), bytes.len() as f64 / 1e6));
    Ok(out)
}

/// A deployable model is read only while it is current: its recorded sha256 (in a head run's
/// or a fine-tune's `model.onnx.json`) must match, and one built for a head run must match the
/// head and views the run now records. A stale one (the head retrained since) is refused with
/// the command that rebuilds it, so no stage trains, scores or explains an old model silently.
pub fn check_current(model: &Path) -> Result<()> {
    check_current_as(model, None)
}

/// [`check_current`] with the model's sha256 when the caller has read it already (`sha256`),
/// so the bytes checked are the bytes used.
pub fn check_current_as(model: &Path, sha256: Option<&str>) -> Result<()> {
    let Ok(side) = fsutil::read_json::<serde_json::Value>(&fsutil::sidecar_path(model)) else { return Ok(()) };
    // A bare `model.onnx` (run from inside its run folder) still names its run.
    let given = fsutil::parent_dir(model);
    let run_dir = &if given == Path::new(".") { fsutil::real_path(given) } else { given.to_path_buf() };
    let record = fsutil::sidecar_path(&run_dir.join(HEAD));
    if let (Ok(mi), true) = (serde_json::from_value::<ModelInfo>(side.clone()), record.is_file()) {
        let info = RunInfo::load(run_dir)?;
        if info.head_sha256 != mi.head_sha256 || info.tta != mi.tta {
            let run = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            return Err(Error::BadData {
                path: model.into(),
                reason: format!(
                    "stale: built from another head or other views than {} records now (the run was retrained); \
                     rebuild it with `tlearn-score --run {run} --runs {} --export-only`",
                    record.display(),
                    fsutil::parent_dir(run_dir).display()
                ),
            });
        }
    }
    if let Some(recorded) = side.get("model_sha256").and_then(|s| s.as_str()) {
        let got = match sha256 {
            Some(s) => s.to_string(),
            None => fsutil::sha256_file(model)?,
        };
        if got != recorded {
            return Err(Error::Checksum { path: model.into(), expected: recorded.into(), got });
        }
    }
    Ok(())
}

/// The ops of an int8 (QDQ or QLinear) model, which have no gradient.
const QUANTIZED_OPS: &[&str] = &["QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger"];

/// Grad-CAM and fine-tuning differentiate the model: an int8 one (from a `-int8` backbone) is
/// refused before any work, naming the fp32 backbone to use instead (from the run's record when
/// the model sits in a head run's folder).
pub fn check_differentiable(model: &crate::onnx::proto::ModelProto, path: &Path, what: &str) -> Result<()> {
    let Some(n) = crate::onnx::graph(model).node.iter().find(|n| QUANTIZED_OPS.contains(&n.op_type.as_str())) else {
        return Ok(());
    };
    let run_dir = fsutil::parent_dir(path);
    let instead = match RunInfo::load(run_dir) {
        Ok(info) => {
            let bb = &info.features.backbone;
            let fp32 = bb.strip_suffix("-int8").unwrap_or(bb);
            format!("extract features with the fp32 backbone (`--backbone {fp32}`, of which `{bb}` is the int8 form) and train the head on them")
        }
        Err(_) => "use a model built on the fp32 backbone this int8 one was quantized from".into(),
    };
    Err(Error::BadData {
        path: path.into(),
        reason: format!(
            "an int8 model ({} node `{}`): {what} needs gradients, which int8 layers do not have; {instead}",
            n.op_type, n.name
        ),
    })
}
