//! `tlearn fit --folds K`: K-fold cross-validation. Each fold is a fit of its own in
//! `runs/<name>/fold-<k>/` (its split made once, its phases resumable), tested on the images no
//! other fold tests; the table of their test numbers, with mean ± sd, is the recipe's estimate.

use super::job::{FitJob, Fitted};
use super::single::one;
use crate::dataset::{self, Item, LinkMode};
use crate::error::Result;
use crate::fsutil;
use crate::progress::Sink;
use crate::runs::fit::SPLIT;
use crate::runs::{FitRecord, FoldScore};
use std::path::{Path, PathBuf};

/// The fold table's file in the fit's report folder.
pub const TABLE: &str = "folds.md";

pub(super) fn run(job: &FitJob, bb: &crate::backbone::Backbone, k: usize, sink: &dyn Sink) -> Result<Fitted> {
    let t = std::time::Instant::now();
    let items = pooled(&job.settings.data)?;
    let mut scores = vec![];
    for fold in 1..=k {
        let name = format!("fold-{fold}");
        let dir = job.run_dir.join(&name);
        sink.note(&format!("fold {fold}/{k} → {}", dir.display()));
        let started = std::time::Instant::now();
        let split = fold_split(job, &items, (k, fold), &dir)?;
        let done = one(job, bb, &split, (&dir, &job.reports.join(&name)), started, sink)?;
        let Some(m) = done.metrics else { continue };
        scores.push(FoldScore {
            fold,
            accuracy: m.accuracy,
            macro_f1: m.macro_f1,
            roc_auc: m.roc_auc,
            test_images: m.n_test,
        });
    }
    let table = render(&scores);
    std::fs::create_dir_all(&job.reports).map_err(|e| crate::error::Error::Io { path: job.reports.clone(), err: e })?;
    fsutil::write_bytes_atomic(&job.reports.join(TABLE), table.as_bytes())?;
    let page = page(&crate::runs::name_of(&job.run_dir), k, &scores);
    fsutil::write_bytes_atomic(&job.reports.join("index.html"), page.as_bytes())?;
    sink.note(&table);
    let record = FitRecord {
        settings: (*job.settings).clone(),
        model_run: None,
        split: job.settings.data.clone(),
        balance: String::new(),
        best_epoch: None,
        folds: scores,
        plan: None,
        seconds: t.elapsed().as_secs_f64(),
        tlearn_version: env!("CARGO_PKG_VERSION").into(),
    };
    crate::runs::write_fit_record(&job.run_dir, &record)?;
    Ok(Fitted { record, metrics: None, model: None })
}

/// Every image of the data: all splits of a split dataset, or the whole raw folder.
fn pooled(data: &Path) -> Result<Vec<Item>> {
    if !data.join("train").is_dir() {
        return Ok(dataset::scan_source(data, false)?.0);
    }
    let mut items = vec![];
    for split in dataset::SPLITS {
        if data.join(split).is_dir() {
            items.extend(dataset::list_split(data, split)?.1);
        }
    }
    Ok(items)
}

/// Fold `fold` of `k` as a split dataset in `dir/data/` (made once).
fn fold_split(job: &FitJob, items: &[Item], (k, fold): (usize, usize), dir: &Path) -> Result<PathBuf> {
    let out = dir.join(SPLIT);
    let record = out.join(crate::split::RECORD);
    if record.is_file() {
        return Ok(out);
    }
    let s = &job.settings;
    let assigned = dataset::assign_fold(items, k, fold - 1, s.validation, s.seed)?;
    let (counts, skipped) = dataset::write_split(&assigned, &s.data, &out, LinkMode::Hardlink, true)?;
    fsutil::write_json(
        &record,
        &serde_json::json!({
            "input": fsutil::path_text(&s.data), "seed": s.seed, "folds": k, "fold": fold,
            "validation": s.validation, "counts": counts, "skipped": skipped,
        }),
    )?;
    Ok(out)
}

/// The folds' test numbers as a Markdown table, with their mean ± sample standard deviation.
pub fn render(scores: &[FoldScore]) -> String {
    let cell = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "—".into());
    let mut s = String::from("| fold | test images | accuracy | macro-F1 | ROC-AUC |\n|---:|---:|---:|---:|---:|\n");
    for f in scores {
        s += &format!(
            "| {} | {} | {:.4} | {:.4} | {} |\n",
            f.fold,
            f.test_images,
            f.accuracy,
            f.macro_f1,
            cell(f.roc_auc)
        );
    }
    let (n, [acc, f1, auc]) = summary(scores);
    s += &format!("| **mean ± sd** | {n} | {acc} | {f1} | {auc} |\n");
    s
}

/// The images tested, and accuracy, macro-F1 and ROC-AUC as mean ± sample sd across folds.
fn summary(scores: &[FoldScore]) -> (usize, [String; 3]) {
    let col = |get: &dyn Fn(&FoldScore) -> Option<f64>| {
        let v: Vec<f64> = scores.iter().filter_map(get).collect();
        mean_sd(&v).map(|(m, sd)| format!("{m:.4} ± {sd:.4}")).unwrap_or_else(|| "—".into())
    };
    let n = scores.iter().map(|f| f.test_images).sum();
    (n, [col(&|f| Some(f.accuracy)), col(&|f| Some(f.macro_f1)), col(&|f| f.roc_auc)])
}

/// The folds' table as the K-fold run's `index.html`, each fold linked to its own report.
fn page(name: &str, k: usize, scores: &[FoldScore]) -> String {
    use crate::report::Cell;
    let cell = |text: String| Cell { text, link: None };
    let num = |v: Option<f64>| cell(v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "—".into()));
    let mut rows: Vec<Vec<Cell>> = scores
        .iter()
        .map(|f| {
            let link = Some(format!("fold-{}/index.html", f.fold));
            vec![
                Cell { text: format!("fold {}", f.fold), link },
                cell(f.test_images.to_string()),
                num(Some(f.accuracy)),
                num(Some(f.macro_f1)),
                num(f.roc_auc),
            ]
        })
        .collect();
    let (n, [acc, f1, auc]) = summary(scores);
    rows.push(vec![cell("mean ± sd".into()), cell(n.to_string()), cell(acc), cell(f1), cell(auc)]);
    let intro = format!(
        "{k}-fold cross-validation: each fold's model trained and validated on the other folds' images and tested \
         on its own; every image tested once. The sd is the sample standard deviation across folds."
    );
    let header = ["fold", "test images", "accuracy", "macro-F1", "ROC-AUC"];
    crate::report::table_page(&format!("{name}: {k}-fold cross-validation"), &intro, &header, &rows)
}

/// Mean and sample standard deviation (0 for one value); None for none.
fn mean_sd(v: &[f64]) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = if v.len() > 1 { v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64 } else { 0.0 };
    Some((m, var.sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_ends_with_mean_and_sample_sd() {
        let f = |fold, accuracy| FoldScore { fold, accuracy, macro_f1: accuracy, roc_auc: None, test_images: 10 };
        let t = render(&[f(1, 0.8), f(2, 0.9), f(3, 1.0)]);
        assert!(t.contains("| **mean ± sd** | 30 | 0.9000 ± 0.1000 | 0.9000 ± 0.1000 | — |"), "{t}");
        assert_eq!(mean_sd(&[]), None);
        assert_eq!(mean_sd(&[2.0]), Some((2.0, 0.0)));
    }
}
