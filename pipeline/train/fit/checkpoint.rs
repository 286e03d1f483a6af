//! Training checkpoints shared by the head and fine-tune stages: after an epoch (as often as
//! [`super::pacing`] allows), what trains — the trained parameters and the optimizer slots the
//! optimizer uses (`optimizer/{m,v}/<param>`) — and the loop state (epoch, RNG position, sample
//! order, history, best epoch) go into one ONNX file's initializers and metadata, written
//! atomically. Frozen tensors are not written: they are the source model's, which the trainer is
//! built from again, and their sha256 is recorded and checked on restore. A run restored from it
//! ends exactly as an uninterrupted one (same weights, same history). (Checkpoints written whole —
//! every initializer and both slots — still restore.)

use super::state::{FitState, State};
use super::trainer::Trainer;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::history::Epoch;
use crate::onnx::{self, proto::ModelProto, proto::StringStringEntryProto};
use crate::train::compile::update::{self as optim, Optimizer};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File name of a run's checkpoint.
pub const CHECKPOINT: &str = "checkpoint.onnx";
const STATE_KEY: &str = "tlearn.fit_state";

/// What to do with an existing checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Resume {
    /// Continue from it when it was made with the same settings and data (else start over).
    #[default]
    Auto,
    /// Continue from it; a checkpoint made with other settings is an error.
    Require,
    /// Continue from it when it was made with the same settings and data; one made with other
    /// settings is an error naming them (a finished run is never replaced without `Restart`).
    Keep,
    /// Ignore it and start over.
    Restart,
}

impl Resume {
    /// What `--restart` and `--resume` ask for, else the stage's own default (`otherwise`): a
    /// dense head starts over when its settings changed ([`Resume::Auto`]); a fine-tune refuses
    /// to replace a finished run unasked ([`Resume::Keep`]).
    pub fn from_flags(restart: bool, require: bool, otherwise: Resume) -> Resume {
        match (restart, require) {
            (true, _) => Resume::Restart,
            (false, true) => Resume::Require,
            (false, false) => otherwise,
        }
    }
}

/// The loop state stored in a checkpoint's metadata.
#[derive(Serialize, Deserialize)]
struct Saved {
    /// The run's settings and data fingerprint, minus `epochs` (a resumed run may extend them).
    config: serde_json::Value,
    epoch: usize,
    rng_word_pos: String,
    optim_step: i32,
    order: Vec<usize>,
    history: Vec<Epoch>,
    best_epoch: Option<Epoch>,
    since_best: usize,
    /// sha256 of the best epoch's model file (fine-tune's `best.onnx`), checked on resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    best_sha256: Option<String>,
    /// sha256 of the frozen tensors ([`frozen_sha256`]), which the checkpoint leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    frozen_sha256: Option<String>,
}

/// A restored fit: its state, best epoch so far, and epochs since that best one.
pub struct Restored {
    pub state: FitState,
    pub best_epoch: Option<Epoch>,
    pub since_best: usize,
    /// sha256 of the best epoch's model file, when the fit keeps one.
    pub best_sha256: Option<String>,
}

/// `config` (any serialisable settings) as checkpoints compare it: `epochs` removed wherever it
/// appears at the top level or under `fit`.
pub fn comparable(config: serde_json::Value) -> serde_json::Value {
    let mut v = config;
    if let Some(o) = v.as_object_mut() {
        o.remove("epochs");
        if let Some(fit) = o.get_mut("fit").and_then(|f| f.as_object_mut()) {
            fit.remove("epochs");
        }
    }
    v
}

/// The best epoch so far as a checkpoint records it: its record, the epochs since, and the
/// sha256 of the file its model was written to (if any).
#[derive(Default)]
pub struct BestSoFar {
    pub epoch: Option<Epoch>,
    pub since: usize,
    pub sha256: Option<String>,
}

/// sha256 of what a checkpoint of `tr` leaves out: every initializer of its model that it does
/// not train (names, types, shapes and values, in the model's order).
pub fn frozen_sha256(tr: &Trainer) -> String {
    use prost::Message;
    use sha2::Digest;
    let trained: std::collections::HashSet<&str> = tr.train.params.iter().map(String::as_str).collect();
    let mut h = sha2::Sha256::new();
    for t in onnx::graph(&tr.model).initializer.iter().filter(|t| !trained.contains(t.name.as_str())) {
        h.update(t.encode_to_vec());
    }
    hex::encode(h.finalize())
}

/// Write the checkpoint of `tr` after the epoch `fs` ends; `frozen` is [`frozen_sha256`] of
/// `tr`. Returns the bytes written.
pub fn save(
    path: &Path,
    tr: &Trainer,
    fs: &FitState,
    config: &serde_json::Value,
    best: BestSoFar,
    frozen: &str,
) -> Result<u64> {
    let BestSoFar { epoch: best_epoch, since: since_best, sha256: best_sha256 } = best;
    let saved = Saved {
        config: config.clone(),
        epoch: fs.epoch,
        rng_word_pos: fs.rng_word_pos.to_string(),
        optim_step: fs.optim.step,
        order: fs.order.clone(),
        history: fs.history.clone(),
        best_epoch,
        since_best,
        best_sha256,
        frozen_sha256: Some(frozen.into()),
    };
    let n_slots = fs.optim.opt.n_slots();
    let mut initializer = vec![];
    for ((p, a), (s0, s1)) in tr.train.params.iter().zip(&tr.params).zip(&fs.optim.slots) {
        initializer.push(onnx::tensor_f32(p, a));
        for (i, s) in [s0, s1].into_iter().enumerate().take(n_slots) {
            initializer.push(onnx::tensor_f32(&optim::slot_name(i, p), s));
        }
    }
    // Every tensor is also an output, so the file is a model ONNX tools open (and onnxruntime
    // loads: it returns the tensors).
    let output = initializer
        .iter()
        .map(|t| {
            onnx::value_info(
                &t.name,
                onnx::proto::dtype::FLOAT,
                &t.dims.iter().map(|&d| onnx::Dim::Fixed(d)).collect::<Vec<_>>(),
            )
        })
        .collect();
    let graph = onnx::proto::GraphProto { name: "tlearn_checkpoint".into(), initializer, output, ..Default::default() };
    let m = ModelProto {
        ir_version: tr.model.ir_version,
        opset_import: tr.model.opset_import.clone(),
        producer_name: "tlearn".into(),
        graph: Some(graph),
        metadata_props: vec![onnx::proto::StringStringEntryProto {
            key: STATE_KEY.into(),
            value: serde_json::to_string(&saved).expect("state serialises"),
        }],
        ..Default::default()
    };
    let bytes = onnx::encode_model(&m);
    fsutil::write_bytes_atomic(path, &bytes)?;
    Ok(bytes.len() as u64)
}

/// The settings and data fingerprint a checkpoint was made with (what [`restore`] compares);
/// None when there is no checkpoint at `path`.
pub fn saved_config(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    // The metadata alone: a rerun reads this before restoring (`--lr auto`, `--precision auto`).
    Ok(Some(read_saved(path, &onnx::load_metadata(path)?)?.config))
}

fn read_saved(path: &Path, metadata: &[StringStringEntryProto]) -> Result<Saved> {
    let bad = |reason: String| Error::BadModel { path: path.into(), reason };
    let text = metadata
        .iter()
        .find(|p| p.key == STATE_KEY)
        .ok_or_else(|| bad("no tlearn fit state in its metadata".into()))?;
    serde_json::from_str(&text.value).map_err(|e| bad(format!("its fit state ({STATE_KEY}) does not parse: {e}")))
}

/// Restore parameters into `tr` from the checkpoint at `path` and return its loop state; None
/// when there is none to continue from (absent, `Restart`, or other settings, data or frozen
/// tensors under `Auto`). `frozen` is [`frozen_sha256`] of `tr`.
pub fn restore(
    path: &Path,
    config: &serde_json::Value,
    frozen: &str,
    optimizer: &Optimizer,
    tr: &mut Trainer,
    mode: Resume,
) -> Result<Option<Restored>> {
    if mode == Resume::Restart || !path.exists() {
        return Ok(None);
    }
    let bad = |reason: String| Error::BadModel { path: path.into(), reason };
    let m = onnx::load_model(path)?;
    let saved = read_saved(path, &m.metadata_props)?;
    if saved.frozen_sha256.as_ref().is_some_and(|s| s != frozen) {
        // The source model's frozen tensors changed since: as other settings would.
        let tagged = |v: &serde_json::Value, sha: &str| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.insert("frozen_tensors_sha256".into(), sha.into());
            }
            v
        };
        let was = tagged(&saved.config, saved.frozen_sha256.as_deref().unwrap_or_default());
        return other_settings(path, &was, &tagged(config, frozen), mode);
    }
    if saved.config != *config {
        return other_settings(path, &saved.config, config, mode);
    }
    let inits: std::collections::HashMap<&str, &onnx::proto::TensorProto> =
        onnx::graph(&m).initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let get = |name: &str| -> Result<ndarray::ArrayD<f32>> {
        onnx::tensor_to_f32(inits.get(name).ok_or_else(|| bad(format!("no tensor `{name}`")))?)
    };
    let used = optimizer.n_slots();
    let slot = |i: usize, p: &str, like: &ndarray::ArrayD<f32>| -> Result<ndarray::ArrayD<f32>> {
        match inits.get(optim::slot_name(i, p).as_str()) {
            Some(_) => get(&optim::slot_name(i, p)),
            // A slot the optimizer does not use is not written; it stays zero.
            None if i >= used => Ok(ndarray::ArrayD::zeros(like.raw_dim())),
            None => Err(bad(format!("no tensor `{}`", optim::slot_name(i, p)))),
        }
    };
    let mut slots = vec![];
    for (i, p) in tr.train.params.clone().iter().enumerate() {
        let v = get(p)?;
        if v.shape() != tr.params[i].shape() {
            return Err(Error::Shape {
                what: format!("{}: parameter {p}", path.display()),
                expected: tr.params[i].shape().to_vec(),
                got: v.shape().to_vec(),
            });
        }
        slots.push((slot(0, p, &v)?, slot(1, p, &v)?));
        tr.params[i] = v;
    }
    let state = FitState {
        epoch: saved.epoch,
        optim: State { opt: optimizer.clone(), slots, step: saved.optim_step },
        rng_word_pos: saved.rng_word_pos.parse().map_err(|_| bad("bad rng position".into()))?,
        order: saved.order,
        history: saved.history,
    };
    tracing::info!("{}: resuming after epoch {}", path.display(), state.epoch);
    Ok(Some(Restored {
        state,
        best_epoch: saved.best_epoch,
        since_best: saved.since_best,
        best_sha256: saved.best_sha256,
    }))
}

/// A checkpoint made with other settings (`was`) than the run's (`now`): an error under `Require`
/// and `Keep`, naming what differs under `Keep`; else start over.
fn other_settings(
    path: &Path,
    was: &serde_json::Value,
    now: &serde_json::Value,
    mode: Resume,
) -> Result<Option<Restored>> {
    let bad = |reason: String| Error::BadModel { path: path.into(), reason };
    match mode {
        Resume::Require => {
            Err(bad("the checkpoint was made with other settings or data (only --epochs may change)".into()))
        }
        Resume::Keep => Err(bad(format!(
            "this run was trained with other settings or data ({}); give --restart to train it again \
             from the start (its files are replaced), or another --run",
            differences(was, now).join("; ")
        ))),
        Resume::Auto | Resume::Restart => {
            tracing::info!("{}: made with other settings or data; starting over", path.display());
            Ok(None)
        }
    }
}

/// What differs between two settings records, as `key: was → now` (nested keys joined with `.`),
/// at most eight of them.
pub fn differences(was: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                let null = serde_json::Value::Null;
                for k in keys {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), out);
                }
            }
            _ if a != b => {
                let short = |v: &serde_json::Value| {
                    let t = v.to_string();
                    if t.chars().count() > 40 {
                        format!("{}…", t.chars().take(40).collect::<String>())
                    } else {
                        t
                    }
                };
                out.push(format!("{prefix}: {} → {}", short(a), short(b)));
            }
            _ => {}
        }
    }
    let mut out = vec![];
    walk("", was, now, &mut out);
    out.truncate(8);
    out
}

#[cfg(test)]
mod tests {
    use super::Resume;

    #[test]
    fn the_flags_choose_over_the_stages_default() {
        assert_eq!(Resume::from_flags(true, true, Resume::Keep), Resume::Restart);
        assert_eq!(Resume::from_flags(false, true, Resume::Keep), Resume::Require);
        assert_eq!(Resume::from_flags(false, false, Resume::Keep), Resume::Keep);
        assert_eq!(Resume::from_flags(false, false, Resume::Auto), Resume::Auto);
    }
}
