//! The head stage (`tlearn-head`): a head trained on a feature folder into a run folder
//! (`runs/<name>/`): the head, its history and the run's record ([`crate::runs`]), which later
//! stages read to know the classes, backbone and input size.

use crate::error::Result;
use crate::features;
use crate::fsutil;
use crate::heads::{self, ClassicalSpec, HeadKind, HeadSpec, Trained};
use crate::history::{self, HISTORY_CSV, HISTORY_PNG};
use crate::imageio::View;
use crate::params::Checked;
use crate::progress::Sink;
use crate::runs::{HeadRecord, HEAD};
use crate::runtime::SessionOptions;
use crate::train::FitConfig;
use std::path::PathBuf;

/// What a rerun does with a dense head's checkpoint unless told: continue it with the same
/// settings and features, else start over (`--restart` always starts over).
pub const RESUME: crate::train::checkpoint::Resume = crate::train::checkpoint::Resume::Auto;

/// A head to train on a feature folder into `run_dir` (what `tlearn-head` and `tlearn-compare` do).
pub struct HeadJob {
    pub features: PathBuf,
    pub run_dir: PathBuf,
    pub kind: HeadKind,
    pub spec: Checked<HeadSpec>,
    pub classical: Checked<ClassicalSpec>,
    pub fit: Checked<FitConfig>,
    pub opts: SessionOptions,
    /// Cached flipped views added to the training set.
    pub train_views: Vec<View>,
    /// Views averaged with the plain image at evaluation and scoring.
    pub tta: Vec<View>,
    /// What to do with a dense head's checkpoint in the run folder.
    pub resume: crate::train::checkpoint::Resume,
}

/// Train the job's head and write the run: `head.onnx`, `history.csv` (+ `history.png` for the
/// dense head), and the run record `run.json`, each atomically, the record last.
pub fn train_head(job: &HeadJob, sink: &dyn Sink) -> Result<(HeadRecord, Trained)> {
    let train_sets = features::load_views(&job.features, "train", &job.train_views)?;
    let (train_x, train_labels) = features::concat_views(&train_sets)?;
    let train = &train_sets[0];
    let val = features::load(&job.features, "validation").ok();
    if val.is_none() {
        tracing::warn!("{}: no validation features; validation columns will be empty", job.features.display());
    }
    let classes = train.info.classes.clone();
    crate::dataset::check_classes(&classes, &job.features)?;
    let data = heads::Data {
        x: &train_x,
        y: &train_labels,
        val: val.as_ref().map(|v| (&v.x, v.labels.as_slice())),
        classes: classes.len(),
    };
    let _lock = crate::lock::dir(&job.run_dir)?;
    // A dense head checkpoints every epoch; a rerun with the same settings and features continues.
    let config = serde_json::json!({
        "kind": job.kind, "head": job.spec, "fit": job.fit, "train_views": job.train_views,
        "train": train_sets.iter().map(|f| f.info.npy_sha256.clone()).collect::<Vec<_>>(),
        "validation": val.as_ref().map(|v| v.info.npy_sha256.clone()),
    });
    let ckpt = crate::train::learner::Checkpointing {
        path: job.run_dir.join(crate::train::checkpoint::CHECKPOINT),
        config: crate::train::checkpoint::comparable(config),
        resume: job.resume,
    };
    let t = std::time::Instant::now();
    let head = heads::head(job.kind, &job.spec, &job.classical, &job.fit, &job.opts, Some(ckpt));
    let trained = head.fit(&data, job.fit.seed, sink)?;
    let secs = t.elapsed().as_secs_f64();
    let bytes = crate::onnx::encode_model(&trained.model);
    fsutil::write_bytes_atomic(&job.run_dir.join(HEAD), &bytes)?;
    let history = &trained.history;
    history::write_csv(&job.run_dir.join(HISTORY_CSV), history)?;
    let name = crate::runs::name_of(&job.run_dir);
    if history.len() > 1 {
        let title = format!("{name} on {} — {}", train.info.backbone, job.features.display());
        if let Err(e) = crate::plot::history(&job.run_dir.join(HISTORY_PNG), &title, history) {
            tracing::warn!("history plot not written: {e}");
        }
    }
    let info = HeadRecord {
        name,
        features_dir: job.features.clone(),
        features: train.info.clone(),
        validation_npy_sha256: val.as_ref().map(|v| v.info.npy_sha256.clone()),
        kind: job.kind,
        head: (*job.spec).clone(),
        classical: (job.kind != HeadKind::Dense).then(|| (*job.classical).clone()),
        fit: (*job.fit).clone(),
        loss: crate::train::graph::Loss::for_classes(classes.len()),
        classes,
        head_sha256: fsutil::sha256_bytes(&bytes),
        final_epoch: history.last().cloned(),
        train_seconds: secs,
        train_views: train_sets.iter().skip(1).map(|f| f.info.view).collect(),
        tta: job.tta.iter().copied().filter(|v| *v != View::Identity).collect(),
        tlearn_version: env!("CARGO_PKG_VERSION").into(),
    };
    crate::runs::write_record(&job.run_dir, &crate::runs::Record::Head(info.clone()))?;
    Ok((info, trained))
}
