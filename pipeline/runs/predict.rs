//! What a run predicts on a split, whatever its kind: a head on cached features, a fine-tune's
//! best epoch on images, an ensemble's members each as they predict, averaged.

use super::ensemble::EnsembleRecord;
use super::record::Record;
use super::run::{PredictOptions, Predictions, Run};
use super::{finetune, head, FinetuneConfig};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::progress::Sink;
use std::collections::HashMap;
use std::path::Path;

impl Run {
    /// The run's probabilities on `split` of `source` (a feature folder for a head run, a class-
    /// folder dataset for a fine-tune; default: the run's own), as the run's own evaluation
    /// computes them: the head on cached features, or the best epoch's net on the images loaded as
    /// training loaded them; averaged over the run's TTA views. An ensemble's are its members'
    /// (each on `source`, or its own), averaged.
    pub fn predict(
        &self,
        split: &str,
        source: Option<&Path>,
        opts: &PredictOptions,
        sink: &dyn Sink,
    ) -> Result<Predictions> {
        match &self.record {
            Record::Ensemble(e) => predict_ensemble(e, &self.dir, (split, source), opts, sink),
            Record::Head(h) => {
                let source = source.unwrap_or(&h.features_dir);
                let (probs, f) = head::predict_split(&self.dir, h, source, split, &opts.session)?;
                let files = f.files.iter().map(|r| (r.path.clone(), r.label)).collect();
                Ok(Predictions { probs, files, skipped: vec![], source_sha256: Some(f.info.npy_sha256.clone()) })
            }
            Record::Finetune(f) => {
                let (session, max_memory) = (opts.session.clone(), opts.max_memory);
                let data = source.unwrap_or(&f.config.data).to_path_buf();
                let cfg = FinetuneConfig { run_dir: self.dir.clone(), data, session, max_memory, ..f.config.clone() };
                let best = self.dir.join(crate::train::learner::BEST);
                let bytes = match &f.best_sha256 {
                    Some(sha) => fsutil::read_verified(&best, sha)?,
                    None => std::fs::read(&best).at(&best)?,
                };
                let (probs, set) = finetune::predict_split((&bytes, &best), &cfg, split, &f.classes, sink)?;
                let files = set.files.iter().zip(&set.labels).map(|(p, &l)| (fsutil::path_text(p), l)).collect();
                let skipped = set.skipped.iter().map(|(p, why)| (fsutil::path_text(p), why.clone())).collect();
                Ok(Predictions { probs, files, skipped, source_sha256: None })
            }
        }
    }
}

/// The members' probabilities on `split`, averaged row by row (rows matched by image path).
fn predict_ensemble(
    e: &EnsembleRecord,
    dir: &Path,
    (split, source): (&str, Option<&Path>),
    opts: &PredictOptions,
    sink: &dyn Sink,
) -> Result<Predictions> {
    let members = open_members(e, dir)?;
    let labels = e.labels();
    let mut each = Vec::with_capacity(members.len());
    for (m, label) in members.iter().zip(&labels) {
        sink.note(&format!("member {label}: predicting {split}"));
        each.push(m.predict(split, source, opts, sink)?);
    }
    mean_predictions(&each, &labels, dir)
}

/// The members of the ensemble in `ensemble_dir` opened, each checked to hold the deployable model
/// it had when fused.
fn open_members(e: &EnsembleRecord, ensemble_dir: &Path) -> Result<Vec<Run>> {
    e.members
        .iter()
        .zip(e.labels())
        .map(|(m, label)| {
            let run = Run::open(&m.resolve(ensemble_dir))?;
            let model = run.dir.join(super::MODEL);
            super::check_current(&model)?;
            let now = fsutil::read_json::<super::ModelInfo>(&fsutil::sidecar_path(&model))
                .map(|i| i.model_sha256)
                .unwrap_or_default();
            if now != m.model_sha256 {
                return Err(Error::BadData {
                    path: model,
                    reason: format!(
                        "member `{label}` changed since the ensemble {} was made (its deployable model is another); \
                             make the ensemble again with `tlearn ensemble`",
                        ensemble_dir.display()
                    ),
                });
            }
            Ok(run)
        })
        .collect()
}

/// The mean of `each` member's predictions, in the first member's row order; every member must
/// have predicted the same images with the same true classes.
fn mean_predictions(each: &[Predictions], members: &[String], dir: &Path) -> Result<Predictions> {
    let first = &each[0];
    let mut probs = first.probs.clone();
    for (p, m) in each.iter().zip(members).skip(1) {
        let row: HashMap<&(String, usize), usize> = p.files.iter().enumerate().map(|(i, f)| (f, i)).collect();
        let missing = first.files.iter().find(|f| !row.contains_key(f)).map(|f| f.0.clone());
        if row.len() != first.files.len() || missing.is_some() {
            return Err(Error::BadData {
                path: dir.into(),
                reason: format!(
                    "member `{m}` predicted other images than `{}` ({} vs {}{}): evaluate an ensemble on data \
                     every member reads the same way (give --data DIR)",
                    members[0],
                    p.files.len(),
                    first.files.len(),
                    missing.map(|f| format!("; e.g. not {f}")).unwrap_or_default()
                ),
            });
        }
        for (r, f) in first.files.iter().enumerate() {
            let mut to = probs.index_axis_mut(ndarray::Axis(0), r);
            to += &p.probs.index_axis(ndarray::Axis(0), row[f]);
        }
    }
    probs.mapv_inplace(|v| v / each.len() as f32);
    let mut skipped: Vec<(String, String)> = each.iter().flat_map(|p| p.skipped.iter().cloned()).collect();
    skipped.sort();
    skipped.dedup();
    Ok(Predictions { probs, files: first.files.clone(), skipped, source_sha256: None })
}
