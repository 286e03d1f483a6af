//! The phases of one fit, each a file target in the fit's folder: done phases are skipped, an
//! interrupted one continues from its own checkpoint, so a killed fit rerun with the same command
//! ends with the same models as one that was never killed.

use super::job::FitJob;
use crate::backbone::Backbone;
use crate::dataset::{LinkMode, SplitSpec};
use crate::error::{Error, Result};
use crate::finetune::{self, FinetuneConfig, Finetuned};
use crate::fsutil;
use crate::head::{self, HeadJob};
use crate::heads::{ClassicalSpec, HeadKind, HeadSpec, Pool};
use crate::imageio::{Interpolation, View};
use crate::params::ParamGuard;
use crate::progress::Sink;
use crate::runs::fit::{FEATURES, FINAL_RUN, HEAD_RUN, SPLIT, TUNE_RUN};
use crate::runs::{FinetuneRecord, Record, Run};
use crate::train::checkpoint::Resume;
use crate::train::optim::{Optimizer, Schedule};
use crate::train::{ClassWeight, FitConfig};
use std::path::{Path, PathBuf};

/// The images the fit trains on as a split dataset: the data itself when it has `train/`, else
/// the fit's own split of it (`data/`, hard links, made once).
pub(super) fn split(job: &FitJob, dir: &Path, sink: &dyn Sink) -> Result<PathBuf> {
    let s = &job.settings;
    if s.data.join("train").is_dir() {
        return Ok(s.data.clone());
    }
    let out = dir.join(SPLIT);
    if out.join(crate::split::RECORD).is_file() {
        return Ok(out);
    }
    let job = crate::split::SplitJob {
        input: s.data.clone(),
        output: out.clone(),
        spec: SplitSpec::Fractions { test: s.test, validation: s.validation },
        seed: s.seed,
        mode: LinkMode::Hardlink,
        // Only a split of the fit's own (the folder holds tlearn's manifest) is replaced: one
        // left unfinished by a killed fit.
        force: true,
        follow_outside: false,
    };
    let done = crate::split::run(&job)?;
    sink.note(&format!(
        "split {} → {}:\n{}",
        s.data.display(),
        out.display(),
        crate::dataset::counts_table(&done.counts)
    ));
    Ok(out)
}

/// The backbone, fetched from the catalog the first time.
pub(super) fn backbone(job: &FitJob, sink: &dyn Sink) -> Result<Backbone> {
    let name = &job.settings.backbone;
    match Backbone::open(&job.onnx_dir, name) {
        Err(Error::BadData { .. }) if !job.onnx_dir.join(format!("{name}.onnx")).exists() => {
            let cat = crate::catalog::Catalog::load(&job.onnx_dir)?;
            let src = crate::backbone::Sources { sink, ..Default::default() };
            let info = crate::backbone::fetch(&cat, name, &src)?;
            sink.note(&format!("fetched {name}: {} parameters, features {:?}", info.params, info.features));
            Backbone::open(&job.onnx_dir, name)
        }
        r => r,
    }
}

/// The backbone's features of the training and validation images, cached in `features/`.
pub(super) fn features(job: &FitJob, bb: &Backbone, split: &Path, dir: &Path, sink: &dyn Sink) -> Result<PathBuf> {
    let out = dir.join(FEATURES);
    let cfg = crate::extract::ExtractConfig {
        dataset: split.to_path_buf(),
        out: out.clone(),
        size: job.settings.size,
        interpolation: Interpolation::Nearest,
        batch: 20,
        session: job.session.clone(),
        max_pixels: crate::imageio::DEFAULT_MAX_PIXELS,
        splits: vec!["train".into(), "validation".into()],
        views: vec![],
        shard: None,
        checkpoint_every: 500,
    };
    crate::extract::extract(&cfg, bb, sink)?;
    Ok(out)
}

/// The warm start: a small dense head on average-pooled features (not the flattened map's
/// millions of parameters), fused with the backbone into a deployable model.
pub(super) fn head(
    job: &FitJob,
    features: &Path,
    dir: &Path,
    cw: &Option<ClassWeight>,
    sink: &dyn Sink,
) -> Result<PathBuf> {
    let s = &job.settings;
    let run_dir = dir.join(HEAD_RUN);
    let hj = HeadJob {
        features: features.to_path_buf(),
        run_dir: run_dir.clone(),
        kind: HeadKind::Dense,
        spec: HeadSpec { pool: Pool::Avg, target: s.target, ..HeadSpec::default() }.check()?,
        classical: ClassicalSpec::default().check()?,
        fit: FitConfig {
            epochs: s.head_epochs,
            batch: 20,
            seed: s.seed,
            optimizer: Optimizer::rmsprop(crate::heads::DEFAULT_LR),
            schedule: Schedule::Constant,
            warmup_epochs: 0,
            weight_decay: 0.0,
            label_smoothing: 0.0,
            class_weight: cw.clone(),
            sampling: s.balance.sampling(),
        }
        .check()?,
        opts: job.session.clone(),
        train_views: vec![],
        tta: vec![],
        resume: head::RESUME,
        lr_auto: None,
    };
    if !head_done(&hj)? {
        sink.note(&format!("warm start: a dense head on pooled {} features → {}", s.backbone, run_dir.display()));
        head::train_head(&hj, sink)?;
    }
    Run::open(&run_dir)?.deployable(&job.onnx_dir, sink)
}

/// A head run of these settings on these features finished already.
fn head_done(hj: &HeadJob) -> Result<bool> {
    let Some((Record::Head(h), _)) = crate::runs::find_record(&hj.run_dir)? else { return Ok(false) };
    let feats = crate::features::open_view(&hj.features, "train", View::Identity)?.info;
    Ok(h.kind == hj.kind && h.head == *hj.spec && h.fit == *hj.fit && h.features.npy_sha256 == feats.npy_sha256)
}

/// Which fine-tune: the validated one (up to `epochs`, patience on validation loss) or the final
/// fit on train + validation (exactly `epochs`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Tune {
    Validated { epochs: usize },
    Final { epochs: usize },
}

/// The fine-tune's settings: the whole net from `model`, the fit's recipe.
pub(super) fn tune_config(
    job: &FitJob,
    (model, split, dir): (&Path, &Path, &Path),
    cw: &Option<ClassWeight>,
    which: Tune,
) -> Result<FinetuneConfig> {
    let s = &job.settings;
    let views = [View::Hflip, View::Vflip, View::Rot180];
    let augment =
        s.flips.then(|| crate::augment::Augment { horizontal_flip: true, vertical_flip: true, ..Default::default() });
    let (epochs, run, is_final) = match which {
        Tune::Validated { epochs } => (epochs, TUNE_RUN, false),
        Tune::Final { epochs } => (epochs, FINAL_RUN, true),
    };
    Ok(FinetuneConfig {
        model: model.to_path_buf(),
        data: split.to_path_buf(),
        run_dir: dir.join(run),
        fit: FitConfig {
            epochs,
            batch: s.batch,
            seed: s.seed,
            optimizer: Optimizer::adam(s.lr),
            schedule: Schedule::Cosine { alpha: 0.0 },
            warmup_epochs: 0,
            weight_decay: 0.0,
            label_smoothing: 0.0,
            class_weight: cw.clone(),
            sampling: s.balance.sampling(),
        }
        .check()?,
        trainable: vec![],
        freeze_stride: s.freeze_stride,
        lr_base: None,
        lr_auto: None,
        relabel: false,
        patience: (!is_final).then_some(s.patience),
        include_validation: is_final,
        cache_trunk: false,
        progressive: s.progressive,
        rescale: finetune::rescale_for(None, model)?,
        interpolation: Interpolation::Nearest,
        augment,
        tta: if s.flips { views.to_vec() } else { vec![] },
        max_pixels: crate::imageio::DEFAULT_MAX_PIXELS,
        max_memory: job.max_memory,
        session: job.session.clone(),
        precision: s.precision,
        resume: Resume::Keep,
    })
}

/// `--lr auto` on the validated fine-tune: `cfg` at the rate the range test on the warm start
/// suggests (its first start's choice when it continues).
pub(super) fn auto_lr(cfg: FinetuneConfig, job: &FitJob, sink: &dyn Sink) -> Result<FinetuneConfig> {
    if !job.settings.lr_auto {
        return Ok(cfg);
    }
    let sweep = crate::train::lr_find::Sweep::default().check()?;
    finetune::choose_lr(&cfg, &sweep, sink)
}

/// The final fit at the rate the validated fine-tune trained at.
pub(super) fn same_lr(mut cfg: FinetuneConfig, tuned: &FinetuneRecord) -> Result<FinetuneConfig> {
    let mut fit = (*cfg.fit).clone();
    fit.optimizer = crate::train::lr_find::with_lr(&fit.optimizer, tuned.config.fit.optimizer.lr());
    cfg.fit = fit.check()?;
    Ok(cfg)
}

/// The fine-tune `cfg` describes, unless one of exactly these settings finished already.
pub(super) fn tune(cfg: &FinetuneConfig, which: Tune, sink: &dyn Sink) -> Result<FinetuneRecord> {
    if let Some(done) = tune_done(cfg)? {
        return Ok(done);
    }
    let what = match which {
        Tune::Final { epochs } => format!("final fit: train + validation for {epochs} epochs"),
        Tune::Validated { epochs } => format!(
            "fine-tuning the whole net, validated, up to {epochs} epochs (patience {})",
            cfg.patience.unwrap_or(0)
        ),
    };
    sink.note(&format!("{what} → {}", cfg.run_dir.display()));
    let Finetuned { info, .. } = finetune::run(cfg, sink)?;
    Ok(info)
}

/// The record of a fine-tune of exactly these settings that finished already.
fn tune_done(cfg: &FinetuneConfig) -> Result<Option<FinetuneRecord>> {
    let Some((Record::Finetune(f), _)) = crate::runs::find_record(&cfg.run_dir)? else { return Ok(None) };
    let same = serde_json::to_value(&f.config).ok() == serde_json::to_value(cfg).ok();
    Ok(same.then_some(f))
}

/// The best epoch of a validated fine-tune: the final fit's length.
pub(super) fn best_epoch(r: &FinetuneRecord) -> Result<usize> {
    r.best_epoch.as_ref().map(|e| e.epoch).filter(|&e| e > 0).ok_or_else(|| Error::BadData {
        path: r.config.run_dir.clone(),
        reason: "the validated fine-tune recorded no best epoch".into(),
    })
}

/// The model run's deployable model copied to the fit's own `model.onnx` (with its sidecar).
pub(super) fn ship(model_dir: &Path, dir: &Path) -> Result<PathBuf> {
    let from = model_dir.join(crate::runs::MODEL);
    let info: crate::runs::ModelInfo = fsutil::read_json(&fsutil::sidecar_path(&from))?;
    let bytes = fsutil::read_verified(&from, &info.model_sha256)?;
    let to = dir.join(crate::runs::MODEL);
    fsutil::write_bytes_atomic(&to, &bytes)?;
    fsutil::write_json(&fsutil::sidecar_path(&to), &info)?;
    Ok(to)
}
