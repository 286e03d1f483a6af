//! A run's deployable model, `runs/<run>/model.onnx`, and its sidecar: for a head run built from
//! preprocessing + backbone + head ([`super::fuse`]) and rebuilt only when the head, the backbone
//! or the TTA views changed; for a fine-tune, the run's own, checked. Also what every reader of a
//! deployable model checks first: that it is current, and differentiable where that is needed.

use super::fuse::fuse;
use super::head::{HeadRecord, HEAD};
use super::record::{find_record, read_record, Record, RECORD};
use super::run::Run;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::progress::Sink;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use super::fuse::MODEL;

/// `runs/<run>/model.onnx.json`: what the deployable model was built from — a head run's head and
/// backbone (none for a fine-tuned net) and the views it averages.
#[derive(Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone_sha256: Option<String>,
    #[serde(default)]
    pub tta: Vec<crate::imageio::View>,
    pub model_sha256: String,
}

/// The run's `model.onnx`: for a head run built unless an up-to-date one exists (the head must be
/// the one the run recorded, the backbone the one its features came from); a fine-tune's own
/// `model.onnx`, once checked. Returns its path.
impl Run {
    /// The run's deployable model (`model.onnx`): a head run's is built (or rebuilt) from its head
    /// and the backbone in `onnx_dir`; a fine-tune's is its own, checked.
    pub fn deployable(&self, onnx_dir: &Path, sink: &dyn Sink) -> Result<PathBuf> {
        export(self, onnx_dir, sink)
    }
}

fn export(run: &Run, onnx_dir: &Path, sink: &dyn Sink) -> Result<PathBuf> {
    let out = run.dir.join(MODEL);
    let Record::Head(info) = &run.record else {
        check_current(&out)?;
        return Ok(out);
    };
    let run_dir = run.dir.as_path();
    let side = fsutil::sidecar_path(&out);
    let fresh = |info: &HeadRecord| -> Result<bool> {
        let Ok(mi) = fsutil::read_json::<ModelInfo>(&side) else { return Ok(false) };
        Ok(out.exists()
            && mi.head_sha256.as_ref() == Some(&info.head_sha256)
            && mi.backbone_sha256.as_ref() == Some(&info.features.backbone_sha256)
            && mi.tta == info.tta
            && fsutil::sha256_file(&out)? == mi.model_sha256)
    };
    // The head is checked against its record even when the model is up to date: a run whose
    // head was replaced is refused, not scored.
    info.read_head(run_dir)?;
    if fresh(info)? {
        return Ok(out);
    }
    // Rebuilt under the run's lock (and checked again there, from a fresh read of the record):
    // never beside a head being retrained, nor by two scorers at once (the model and its sidecar
    // are read as a pair).
    let _lock = crate::lock::dir(run_dir)?;
    let Record::Head(info) = read_record(run_dir)? else {
        return Err(Error::BadData { path: run_dir.join(RECORD), reason: "no longer a head run".into() });
    };
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
    let fused = fuse(&backbone, &head, &f.preprocess, f.size, f.interpolation, &info.classes, &info.tta)?;
    let bytes = crate::onnx::encode_model(&fused);
    crate::runtime::check_loads(&bytes, &out)?;
    fsutil::write_bytes_atomic(&out, &bytes)?;
    let record = ModelInfo {
        head_sha256: Some(info.head_sha256),
        backbone_sha256: Some(info.features.backbone_sha256),
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
    // Beside a run's record, the record decides (one that cannot be read is an error, not a pass);
    // a model with no record beside it is checked against its sidecar alone.
    if model.file_name() == Some(std::ffi::OsStr::new(MODEL)) {
        if let Some((Record::Head(info), file)) = find_record(run_dir)? {
            let mi = serde_json::from_value::<ModelInfo>(side.clone()).ok();
            let built_from = mi.as_ref().and_then(|m| m.head_sha256.as_ref().map(|h| (h, &m.tta)));
            if built_from != Some((&info.head_sha256, &info.tta)) {
                let run = super::run::name_of(run_dir);
                return Err(Error::BadData {
                    path: model.into(),
                    reason: format!(
                        "stale: not built from the head and views {} records now (the run was retrained); \
                         rebuild it with `tlearn-score --run {run} --runs {} --export-only`",
                        file.display(),
                        fsutil::parent_dir(run_dir).display()
                    ),
                });
            }
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
    let instead = match read_record(run_dir) {
        Ok(Record::Head(info)) => {
            let bb = &info.features.backbone;
            let fp32 = bb.strip_suffix("-int8").unwrap_or(bb);
            format!("extract features with the fp32 backbone (`--backbone {fp32}`, of which `{bb}` is the int8 form) and train the head on them")
        }
        _ => "use a model built on the fp32 backbone this int8 one was quantized from".into(),
    };
    Err(Error::BadData {
        path: path.into(),
        reason: format!(
            "an int8 model ({} node `{}`): {what} needs gradients, which int8 layers do not have; {instead}",
            n.op_type, n.name
        ),
    })
}
