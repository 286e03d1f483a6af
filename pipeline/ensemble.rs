//! The ensemble stage (`tlearn ensemble NAME RUN RUN…`): finished runs of the same classes made
//! into one run whose deployable model averages their probabilities — different seeds, sizes or
//! backbones, or the folds of a K-fold fit. The run evaluates, scores and predicts like any other.

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::progress::Sink;
use crate::runs::{self, EnsembleRecord, Member, ModelInfo, Record, Run, MODEL};
use std::path::{Path, PathBuf};

/// An ensemble to make.
pub struct EnsembleJob {
    /// The ensemble's folder, `runs/<name>/`.
    pub run_dir: PathBuf,
    /// The members' folders (two or more, each a finished run).
    pub members: Vec<PathBuf>,
    /// Where head runs' backbones are (their deployable models are built if missing).
    pub onnx_dir: PathBuf,
}

/// Make the ensemble `job` describes: its `model.onnx` (+ sidecar), then `run.json`. An ensemble
/// of the same name is replaced; any other folder there is refused.
pub fn make(job: &EnsembleJob, sink: &dyn Sink) -> Result<EnsembleRecord> {
    check_members(job)?;
    let dir = &job.run_dir;
    let mut members = Vec::with_capacity(job.members.len());
    let mut models = Vec::with_capacity(job.members.len());
    for m in &job.members {
        let run = Run::open(m)?;
        let path = run.deployable(&job.onnx_dir, sink)?;
        let bytes = std::fs::read(&path).at(&path)?;
        let sha = fsutil::sha256_bytes(&bytes);
        runs::check_current_as(&path, Some(&sha))?;
        let model = crate::onnx::decode_model(&bytes, &path)?;
        let size = runs::meta(&model, &path)?.size;
        members.push(Member { name: run.name.clone(), dir: Member::recorded_dir(m, dir), size, model_sha256: sha });
        models.push((model, path));
    }
    let parts: Vec<(&crate::onnx::proto::ModelProto, &Path)> = models.iter().map(|(m, p)| (m, p.as_path())).collect();
    let fused = runs::fuse_mean(&parts)?;
    let meta = runs::meta(&fused, dir)?;
    let bytes = crate::onnx::encode_model(&fused);
    let out = dir.join(MODEL);
    crate::runtime::check_loads(&bytes, &out)?;
    // The folder is claimed only now: a member that cannot be read leaves nothing behind.
    claim(dir)?;
    let _lock = crate::lock::dir(dir)?;
    fsutil::write_bytes_atomic(&out, &bytes)?;
    let model_sha256 = fsutil::sha256_bytes(&bytes);
    let info = ModelInfo { head_sha256: None, backbone_sha256: None, tta: vec![], model_sha256: model_sha256.clone() };
    fsutil::write_json(&fsutil::sidecar_path(&out), &info)?;
    let record = EnsembleRecord {
        members,
        classes: meta.classes,
        size: meta.size,
        model_sha256,
        tlearn_version: env!("CARGO_PKG_VERSION").into(),
    };
    runs::write_record(dir, &Record::Ensemble(record.clone()))?;
    sink.note(&format!(
        "ensemble → {} ({:.1} MB): the mean of {} at {} px",
        out.display(),
        bytes.len() as f64 / 1e6,
        record
            .members
            .iter()
            .zip(record.labels())
            .map(|(m, l)| format!("{l} ({} px)", m.size))
            .collect::<Vec<_>>()
            .join(", "),
        record.size
    ));
    Ok(record)
}

/// Two or more members, none of them the ensemble's own folder, none given twice.
fn check_members(job: &EnsembleJob) -> Result<()> {
    if job.members.len() < 2 {
        return Err(Error::Param {
            name: "runs",
            value: job.members.len().to_string(),
            reason: "an ensemble averages two runs or more: name them after the ensemble's name".into(),
        });
    }
    let real: Vec<PathBuf> = job.members.iter().map(|m| fsutil::real_path(m)).collect();
    let own = fsutil::real_path(&job.run_dir);
    for (i, r) in real.iter().enumerate() {
        if *r == own {
            return Err(Error::Param {
                name: "runs",
                value: job.members[i].display().to_string(),
                reason: "the ensemble cannot be its own member: give it another name".into(),
            });
        }
        if real[..i].contains(r) {
            return Err(Error::Param {
                name: "runs",
                value: job.members[i].display().to_string(),
                reason: "given twice: each member counts once in the mean".into(),
            });
        }
    }
    Ok(())
}

/// The ensemble's folder, created; an existing one must be an ensemble (it is replaced) or hold
/// nothing but hidden files (a lock, a killed writer's temporary file).
fn claim(dir: &Path) -> Result<()> {
    if dir.exists() {
        let shown = |e: &std::fs::DirEntry| !e.file_name().to_string_lossy().starts_with('.');
        match runs::find_record(dir) {
            Ok(Some((Record::Ensemble(_), _))) => {}
            _ if !std::fs::read_dir(dir).at(dir)?.filter_map(|e| e.ok()).any(|e| shown(&e)) => {}
            _ => {
                return Err(Error::BadData {
                    path: dir.into(),
                    reason: "holds another run or other files, which an ensemble would replace; choose another name \
                             (or --runs folder)"
                        .into(),
                })
            }
        }
    }
    std::fs::create_dir_all(dir).at(dir)
}
