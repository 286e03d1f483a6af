//! The head stage (`tlearn-head`): a head trained on a feature folder into a run folder
//! (`runs/<name>/`): the head, its history and the run's record ([`crate::runs`]), which later
//! stages read to know the classes, backbone and input size.

use crate::error::Result;
use crate::features;
use crate::fsutil;
use crate::heads::{self, ClassicalSpec, HeadKind, HeadSpec, Trained};
use crate::history::{self, HISTORY_CSV, HISTORY_PNG};
use crate::imageio::View;
use crate::params::{Checked, ParamGuard};
use crate::progress::Sink;
use crate::runs::{HeadRecord, HEAD};
use crate::runtime::SessionOptions;
use crate::train::lr_find::{LrChoice, LrCurve, Sweep};
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
    /// `--lr auto`: how `fit`'s rate was chosen ([`choose_lr`]), recorded with the run.
    pub lr_auto: Option<LrChoice>,
}

/// A job's features: the training rows (with their added views), the validation rows, the classes.
struct Loaded {
    train_sets: Vec<features::Features>,
    x: ndarray::ArrayD<f32>,
    labels: Vec<usize>,
    val: Option<features::Features>,
    classes: Vec<String>,
}

impl Loaded {
    fn read(job: &HeadJob) -> Result<Loaded> {
        let train_sets = features::load_views(&job.features, "train", &job.train_views)?;
        let (x, labels) = features::concat_views(&train_sets)?;
        let val = features::load(&job.features, "validation").ok();
        if val.is_none() {
            tracing::warn!("{}: no validation features; validation columns will be empty", job.features.display());
        }
        let classes = train_sets[0].info.classes.clone();
        crate::dataset::check_classes(&classes, &job.features)?;
        Ok(Loaded { train_sets, x, labels, val, classes })
    }

    fn data(&self) -> heads::Data<'_> {
        heads::Data {
            x: &self.x,
            y: &self.labels,
            val: self.val.as_ref().map(|v| (&v.x, v.labels.as_slice())),
            classes: self.classes.len(),
        }
    }
}

/// The learning-rate range test for the job's dense head (see [`crate::train::lr_find`]): the
/// head built and initialised as [`train_head`] builds it, on the same training features. Nothing
/// is written.
pub fn lr_find(job: &HeadJob, sweep: &Checked<Sweep>, sink: &dyn Sink) -> Result<LrCurve> {
    if job.kind != HeadKind::Dense {
        return Err(crate::Error::Param {
            name: "head",
            value: job.kind.name().into(),
            reason: "only the dense head trains with a learning rate (the range test needs one)".into(),
        });
    }
    let loaded = Loaded::read(job)?;
    let dense = heads::dense::Dense {
        spec: job.spec.clone(),
        fit: job.fit.clone(),
        opts: job.opts.clone(),
        checkpoint: None,
        live: None,
    };
    dense.lr_find(&loaded.data(), job.fit.seed, sweep, sink)
}

/// `--lr auto` for a dense head: the job at the rate the range test suggests (fastai's
/// `valley`), the choice recorded in [`HeadJob::lr_auto`]. (A rerun sweeps again; the sweep is
/// seeded, so it chooses the same rate and the run continues from its checkpoint.)
pub fn choose_lr(job: HeadJob, sweep: &Checked<Sweep>, sink: &dyn Sink) -> Result<HeadJob> {
    let curve = lr_find(&job, sweep, sink)?;
    let choice = curve.choose(sweep)?;
    let steep = choice.steep.map(|s| format!("{s:.3e}")).unwrap_or_else(|| "none".into());
    sink.note(&format!("--lr auto: training at {:.3e} (valley; steep {steep}); the sweep {}", choice.lr, curve.why()));
    let mut fit = (*job.fit).clone();
    fit.optimizer = crate::train::lr_find::with_lr(&fit.optimizer, choice.lr);
    Ok(HeadJob { fit: fit.check()?, lr_auto: Some(choice), ..job })
}

/// Train the job's head and write the run: `head.onnx`, `history.csv` (+ `history.png` for the
/// dense head), and the run record `run.json`, each atomically, the record last.
pub fn train_head(job: &HeadJob, sink: &dyn Sink) -> Result<(HeadRecord, Trained)> {
    let loaded = Loaded::read(job)?;
    let data = loaded.data();
    let Loaded { train_sets, val, classes, .. } = &loaded;
    let train = &train_sets[0];
    let _lock = crate::lock::dir(&job.run_dir)?;
    // A dense head checkpoints as it goes; a rerun with the same settings and features continues.
    let config = serde_json::json!({
        "kind": job.kind, "head": job.spec, "fit": job.fit, "train_views": job.train_views,
        "train": train_sets.iter().map(|f| f.info.npy_sha256.clone()).collect::<Vec<_>>(),
        "validation": val.as_ref().map(|v| v.info.npy_sha256.clone()),
    });
    let ckpt = crate::train::learner::Checkpointing {
        path: job.run_dir.join(crate::train::checkpoint::CHECKPOINT),
        config: crate::train::checkpoint::comparable(config),
        resume: job.resume,
        share: crate::train::pacing::SHARE,
    };
    let t = std::time::Instant::now();
    let name = crate::runs::name_of(&job.run_dir);
    let title = format!("{name} on {} — {}", train.info.backbone, job.features.display());
    let live = crate::train::learner::Live { dir: job.run_dir.clone(), title: title.clone() };
    let head = heads::head(job.kind, &job.spec, &job.classical, &job.fit, &job.opts, Some(ckpt), Some(live));
    let trained = head.fit(&data, job.fit.seed, sink)?;
    let secs = t.elapsed().as_secs_f64();
    let bytes = crate::onnx::encode_model(&trained.model);
    fsutil::write_bytes_atomic(&job.run_dir.join(HEAD), &bytes)?;
    let history = &trained.history;
    history::write_csv(&job.run_dir.join(HISTORY_CSV), history)?;
    if history.len() > 1 {
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
        lr_auto: job.lr_auto.clone(),
        loss: crate::train::graph::Loss::for_classes(classes.len()),
        classes: classes.clone(),
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
