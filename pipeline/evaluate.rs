//! The evaluate stage: a trained model's predictions on a split, its metrics, and the report a
//! person reads — `metrics.json` (the run's settings plus the metrics), `predictions.csv`,
//! `confusion.png`, `roc.png` and `index.html` in `reports/<run>/`.

use crate::error::Result;
use crate::fsutil;
use crate::metrics::{self, Metrics};
use crate::progress::Sink;
use crate::runs::{PredictOptions, Run};
use crate::runtime::SessionOptions;
use ndarray::ArrayD;
use std::path::{Path, PathBuf};

/// Grad-CAM overlays in a report: made with the deployable `model` (a TTA model's plain view) for
/// the `mistakes` most confident mistakes, then the `mistakes / 2` most confident right answers
/// (at least one), written to `gradcam/` beside the report.
pub struct Explain {
    pub model: PathBuf,
    pub mistakes: usize,
    pub session: SessionOptions,
}

/// What an evaluation found: the metrics, and the images of the split that could not be read
/// (listed in `metrics.json`).
pub struct Evaluation {
    pub metrics: Metrics,
    pub skipped: usize,
}

/// Evaluate `run` — any kind — on `split` of `source` (default: what the run trained on) into
/// `out`: the report, with Grad-CAM overlays when `explain` asks for them.
pub fn run(
    run: &Run,
    (split, source): (&str, Option<&Path>),
    out: &Path,
    opts: &PredictOptions,
    explain: Option<&Explain>,
    sink: &dyn Sink,
) -> Result<Evaluation> {
    let p = run.predict(split, source, opts, sink)?;
    let context = run.context(split, &p);
    let history = run.history_png();
    let metrics = write_report(out, context, &p.probs, &p.files, run.classes(), Some(&history), explain)?;
    Ok(Evaluation { metrics, skipped: p.skipped.len() })
}

/// One line on an evaluation already written in `out` (its `metrics.json`): the run, the split,
/// accuracy, loss, ROC-AUC and macro-F1 where there are, the number of images, and the training
/// time a fine-tune recorded — what a make target prints when the evaluation is up to date.
pub fn summary(out: &Path) -> Result<String> {
    let path = out.join("metrics.json");
    if !path.is_file() {
        return Err(crate::error::Error::BadData {
            path,
            reason: "no evaluation here yet; run tlearn-evaluate --run NAME (or train the run) first".into(),
        });
    }
    let m: serde_json::Value = fsutil::read_json(&path)?;
    let text = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
    let mut line = format!("{} on {}:", text("run"), text("split"));
    for (key, label) in [("accuracy", "accuracy"), ("loss", "loss"), ("roc_auc", "ROC-AUC"), ("macro_f1", "macro-F1")] {
        if let Some(v) = m.get(key).and_then(|v| v.as_f64()) {
            line += &format!(" {label} {v:.4},");
        }
    }
    line += &format!(" n {}", m.get("n_test").and_then(|v| v.as_u64()).unwrap_or(0));
    if let Some(s) = m.get("train_seconds").and_then(|v| v.as_f64()) {
        line += &format!(", {s:.0} s training");
    }
    Ok(line)
}

/// A human summary of the metrics.
pub fn render(m: &Metrics) -> String {
    let mut s = format!("accuracy {:.4}  loss {:.4}  macro-F1 {:.4}", m.accuracy, m.loss, m.macro_f1);
    if let Some(a) = m.roc_auc {
        s += &format!("  ROC-AUC {a:.4}");
    }
    s += &format!("  (n = {})\n", m.n_test);
    s += &format!("{:<14} {:>9} {:>9} {:>9} {:>8}\n", "class", "precision", "recall", "f1", "support");
    for c in &m.per_class {
        s += &format!("{:<14} {:>9.4} {:>9.4} {:>9.4} {:>8}\n", c.class, c.precision, c.recall, c.f1, c.support);
    }
    s
}

/// Write an evaluation into `out/`: `metrics.json` (the `context` fields plus the metrics),
/// `predictions.csv` (path, true, predicted, probability), `confusion.png`, `roc.png` and the
/// self-contained `index.html` ([`crate::report`]). `files` holds each row's (path, true label
/// index); `history_png` is the run's training curves, if any. The folder is locked meanwhile.
pub fn write_report(
    out: &Path,
    context: serde_json::Value,
    probs: &ArrayD<f32>,
    files: &[(String, usize)],
    classes: &[String],
    history_png: Option<&Path>,
    explain: Option<&Explain>,
) -> Result<Metrics> {
    let _lock = crate::lock::dir(out)?;
    let labels: Vec<usize> = files.iter().map(|f| f.1).collect();
    let m = metrics::compute(probs, &labels, classes);
    let mut report = match &context {
        serde_json::Value::Object(o) => o.clone(),
        _ => serde_json::Map::new(),
    };
    report.insert("classes".into(), serde_json::json!(classes));
    if let serde_json::Value::Object(o) = serde_json::to_value(&m).expect("metrics serialise") {
        report.extend(o);
    }
    report.insert("confusion_normalized".into(), serde_json::json!(m.confusion_normalized()));
    fsutil::write_json(&out.join("metrics.json"), &report)?;
    write_predictions(&out.join("predictions.csv"), probs, files, classes)?;
    let confusion = out.join("confusion.png");
    if let Err(e) = crate::plot::confusion(&confusion, classes, &m.confusion) {
        tracing::warn!("confusion plot not written: {e}");
    }
    let curves = metrics::roc_curves(probs, &labels, classes);
    let roc = out.join("roc.png");
    let roc_png = if curves.is_empty() { None } else { crate::plot::roc(&roc, &curves).ok().and(Some(())) };
    let field = |k: &str| context.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
    let title = format!("{} — {} split", field("run"), field("split"));
    let page = crate::report::Page {
        title: &title,
        context: &context,
        metrics: &m,
        classes,
        probs,
        files,
        confusion_png: crate::report::png_file(&confusion),
        roc_png: roc_png.and_then(|_| crate::report::png_file(&roc)),
        history_png: history_png.and_then(crate::report::png_file),
        max_pixels: crate::imageio::DEFAULT_MAX_PIXELS,
        heatmaps: match explain {
            Some(ex) => heatmaps(out, ex, probs, files).map_err(|e| {
                tracing::warn!("Grad-CAM overlays not drawn: {e}");
                e.to_string()
            }),
            None => Err("not asked for".into()),
        },
    };
    let html = crate::report::render(&page);
    fsutil::write_bytes_atomic(&out.join("index.html"), html.as_bytes())?;
    Ok(m)
}

/// Grad-CAM overlays of the rows `ex` asks for, as PNGs in `out/gradcam/` (an image that cannot be
/// read is left out with a warning).
fn heatmaps(
    out: &Path,
    ex: &Explain,
    probs: &ArrayD<f32>,
    files: &[(String, usize)],
) -> Result<Vec<crate::report::Heatmap>> {
    let labels: Vec<usize> = files.iter().map(|f| f.1).collect();
    let (p, pred) = (metrics::class_probs(probs), metrics::predicted(probs));
    let mut rows = crate::report::most_confident(&p, &pred, &labels, ex.mistakes, false);
    rows.extend(crate::report::most_confident(&p, &pred, &labels, (ex.mistakes / 2).max(1), true));
    let (mut cam, meta) = crate::explain::grad_cam(&ex.model, &ex.session)?;
    let dir = out.join("gradcam");
    // The overlays an earlier evaluation listed go (a smaller --explain leaves none behind), and
    // nothing else: the folder must be tlearn's own (or one only ever filled with its overlays).
    let only_overlays = |d: &Path| {
        std::fs::read_dir(d).is_ok_and(|r| {
            r.filter_map(|e| e.ok()).all(|e| e.file_name().to_str().is_some_and(crate::output::is_overlay_name))
        })
    };
    crate::output::claim_dir(&dir, "the report's Grad-CAM overlays", only_overlays)?;
    let index = dir.join(crate::explain::INDEX);
    crate::explain::remove_listed(&index)?;
    let mut listed = vec![];
    let mut maps = vec![];
    for (n, &i) in rows.iter().enumerate() {
        let (path, truth) = (&files[i].0, files[i].1);
        let png = crate::explain::png_path(&dir, n, path);
        // The class the report shows for the row (TTA-averaged for a head run).
        let max = crate::imageio::DEFAULT_MAX_PIXELS;
        match crate::explain::file(&mut cam, &fsutil::text_path(path), Some(pred[i]), max, &png) {
            Ok((e, bytes)) => {
                let name = png.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let class = meta.classes.get(e.class).cloned().unwrap_or_default();
                listed.push((path.clone(), name, class, e.probs[e.class]));
                maps.push(crate::report::Heatmap {
                    path: path.clone(),
                    truth,
                    predicted: e.class,
                    probability: e.probs[e.class],
                    png: bytes,
                })
            }
            Err(e) => tracing::warn!("{path}: no Grad-CAM overlay: {e}"),
        }
    }
    crate::explain::write_overlay_index(&index, listed)?;
    Ok(maps)
}

/// `predictions.csv`: path, true class, predicted class, its probability (cells CSV-safe).
fn write_predictions(path: &Path, probs: &ArrayD<f32>, files: &[(String, usize)], classes: &[String]) -> Result<()> {
    let cell = |s: &str| fsutil::csv_cell(s).into_owned();
    let header = ["path", "true", "predicted", "probability"].map(String::from);
    let rows = files
        .iter()
        .zip(metrics::class_probs(probs))
        .zip(metrics::predicted(probs))
        .map(|((f, p), q)| [cell(&f.0), cell(&classes[f.1]), cell(&classes[q]), format!("{:.6}", p[q])]);
    fsutil::write_bytes_atomic(path, &fsutil::csv_bytes(path, std::iter::once(header).chain(rows))?)
}
