//! One fit of a split dataset: the phases in order, the test report, the record.

use super::budget;
use super::job::{FitJob, Fitted};
use super::phases::{self, Tune};
use crate::backbone::Backbone;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::progress::Sink;
use crate::runs::fit::{FINAL_RUN, TUNE_RUN};
use crate::runs::{FitRecord, PredictOptions, Run};
use std::path::Path;

/// One fit of the split dataset `split` into `dir`, its report into `reports`.
/// `t` is when the fit (or fold) started: its budget counts from there.
pub(super) fn one(
    job: &FitJob,
    bb: &Backbone,
    split: &Path,
    (dir, reports): (&Path, &Path),
    t: std::time::Instant,
    sink: &dyn Sink,
) -> Result<Fitted> {
    let s = &job.settings;
    let counts = train_counts(split)?;
    let (cw, balance) = s.balance.decide(&counts);
    sink.note(&balance);
    let features = phases::features(job, bb, split, dir, sink)?;
    let warm = phases::head(job, &features, dir, &cw, sink)?;
    let on = (warm.as_path(), split, dir);
    let (model_run, best, plan) = match s.final_epochs {
        Some(epochs) => fixed_length(job, on, &cw, epochs, t, sink)?,
        None => validated(job, on, &cw, t, sink)?,
    };
    let model_dir = dir.join(model_run);
    let model = phases::ship(&model_dir, dir)?;
    let record = FitRecord {
        settings: (**s).clone(),
        model_run: Some(model_run.into()),
        split: split.to_path_buf(),
        balance,
        best_epoch: best,
        folds: vec![],
        plan,
        seconds: t.elapsed().as_secs_f64(),
        tlearn_version: env!("CARGO_PKG_VERSION").into(),
    };
    let metrics = evaluate(job, (&record, dir), split, reports, sink)?;
    crate::runs::write_fit_record(dir, &record)?;
    Ok(Fitted { record, metrics, model: Some(model) })
}

/// What the fine-tunes left: the model's phase folder, the validated best epoch, any plan.
type Tuned = (&'static str, Option<usize>, Option<budget::Plan>);

/// The fine-tunes of the validated recipe: validation chooses the length, then the final fit on
/// train + validation for it (unless `--no-final-fit`).
fn validated(
    job: &FitJob,
    on: (&Path, &Path, &Path),
    cw: &Option<crate::train::ClassWeight>,
    t: std::time::Instant,
    sink: &dyn Sink,
) -> Result<Tuned> {
    let (s, (_, split, dir)) = (&job.settings, on);
    let validated = Tune::Validated { epochs: s.epochs };
    let cfg = phases::auto_lr(phases::tune_config(job, on, cw, validated)?, job, sink)?;
    let (cfg, plan) = budget::planned(job, cfg, (split, dir), t, sink)?;
    let validated = Tune::Validated { epochs: cfg.fit.epochs };
    let tuned = phases::tune(&cfg, validated, sink)?;
    let best = phases::best_epoch(&tuned)?;
    if !s.final_fit {
        return Ok((TUNE_RUN, Some(best), plan));
    }
    let (epochs, plan) = budget::final_fit(plan, &tuned, best, (dir, t), sink)?;
    if epochs == 0 {
        return Ok((TUNE_RUN, Some(best), plan));
    }
    let last = Tune::Final { epochs };
    let cfg = phases::same_lr(phases::tune_config(job, on, cw, last)?, &tuned)?;
    phases::tune(&cfg, last, sink)?;
    Ok((FINAL_RUN, Some(best), plan))
}

/// `--final-epochs`: the final fit alone, on train + validation for a length chosen before
/// (`--budget` may plan fewer epochs; `--lr auto` sweeps on the warm start as the validated
/// fine-tune would).
fn fixed_length(
    job: &FitJob,
    on: (&Path, &Path, &Path),
    cw: &Option<crate::train::ClassWeight>,
    epochs: usize,
    t: std::time::Instant,
    sink: &dyn Sink,
) -> Result<Tuned> {
    let (_, split, dir) = on;
    let cfg = phases::auto_lr(phases::tune_config(job, on, cw, Tune::Final { epochs })?, job, sink)?;
    let (cfg, plan) = budget::planned(job, cfg, (split, dir), t, sink)?;
    phases::tune(&cfg, Tune::Final { epochs: cfg.fit.epochs }, sink)?;
    Ok((FINAL_RUN, None, plan))
}

/// Images per class in the split's `train/` (which must hold two classes or more, with
/// validation images beside them to choose the length on).
fn train_counts(split: &Path) -> Result<Vec<usize>> {
    let val = split.join("validation");
    if !val.is_dir() || crate::dataset::holds_no_image(&val) {
        return Err(Error::BadData {
            path: val,
            reason: "no validation images: tlearn fit chooses the fine-tune's length on them (with --final-epochs, \
                     trains on them); add a validation/ folder of class folders, or give the unsplit images (tlearn \
                     fit splits them)"
                .into(),
        });
    }
    let (classes, items, _) = crate::dataset::list_split(split, "train")?;
    if classes.len() < 2 {
        return Err(Error::BadData {
            path: split.join("train"),
            reason: format!("{} class(es); a classifier needs at least two: one folder per class", classes.len()),
        });
    }
    Ok(classes.iter().map(|c| items.iter().filter(|it| &it.class == c).count()).collect())
}

/// The model run evaluated on the split's test images (None when there are none), under the
/// fit's name; an evaluation of the same model already written is read back.
fn evaluate(
    job: &FitJob,
    (record, dir): (&FitRecord, &Path),
    split: &Path,
    reports: &Path,
    sink: &dyn Sink,
) -> Result<Option<Metrics>> {
    let model_dir = &record.model_dir(dir)?;
    let test = split.join("test");
    if !test.is_dir() || crate::dataset::holds_no_image(&test) {
        sink.note(&format!("no test images in {}: nothing to evaluate", split.display()));
        return Ok(None);
    }
    let mut run = Run::open(model_dir)?;
    run.name = crate::runs::name_of(dir);
    run.fit = Some(record.clone());
    if let Some(m) = evaluated(&run, reports).filter(|_| same_images(reports, split)) {
        return Ok(Some(m));
    }
    let explain = (job.explain > 0).then(|| crate::evaluate::Explain {
        model: model_dir.join(crate::runs::MODEL),
        mistakes: job.explain,
        session: job.session.clone(),
    });
    let opts = PredictOptions { session: job.session.clone(), max_memory: job.max_memory };
    let e = crate::evaluate::run(&run, ("test", None), reports, &opts, explain.as_ref(), sink)?;
    Ok(Some(e.metrics))
}

/// Does the report in `reports` list exactly the images now in the split's `test/`?
fn same_images(reports: &Path, split: &Path) -> bool {
    let Ok((_, items, _)) = crate::dataset::list_split(split, "test") else { return false };
    let Ok(mut r) = csv::Reader::from_path(reports.join("predictions.csv")) else { return false };
    let mut listed: Vec<String> = r
        .records()
        .filter_map(|rec| rec.ok().and_then(|rec| rec.get(0).map(|p| crate::fsutil::csv_uncell(p).to_string())))
        .collect();
    let mut now: Vec<String> = items.iter().map(|it| crate::fsutil::path_text(&it.path)).collect();
    listed.sort();
    now.sort();
    listed == now
}

/// The metrics of a finished report in `reports` of exactly this run's model on test.
fn evaluated(run: &Run, reports: &Path) -> Option<Metrics> {
    let crate::runs::Record::Finetune(f) = &run.record else { return None };
    let (json, html) = (reports.join("metrics.json"), reports.join("index.html"));
    let v: serde_json::Value = crate::fsutil::read_json(&json).ok()?;
    let same = v.get("model_sha256").and_then(|s| s.as_str()) == Some(f.model_sha256.as_str())
        && v.get("split").and_then(|s| s.as_str()) == Some("test")
        && v.get("run").and_then(|s| s.as_str()) == Some(run.name.as_str());
    // The page is written after metrics.json: an older page means the report was cut short.
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let whole = matches!((modified(&json), modified(&html)), (Some(j), Some(h)) if h >= j);
    (same && whole).then(|| serde_json::from_value(v).ok()).flatten()
}
