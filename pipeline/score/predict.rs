//! Predictions to read rather than keep: each image's class and probability under a deployable
//! model, rendered as an aligned table, CSV or JSON lines (`tlearn-predict`). The same inference
//! and ranking as a scores file ([`super::score`]), with no journal, lock or file beside it.

use super::{csv_line, rank, ScoreOptions, ScoredModel, Unreadable};
use crate::error::Result;
use crate::fsutil::{csv_cell, path_text};
use crate::progress::Sink;
use crate::runtime::SessionOptions;
use std::path::{Path, PathBuf};

/// One image's predicted class and its probability.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// The path as given ([`crate::fsutil::path_text`], as in a scores file).
    pub path: String,
    pub class: String,
    pub probability: f64,
}

/// What [`predict`] found: a row per readable image (in the order given), and the rest with why.
#[derive(Debug, Default)]
pub struct Predicted {
    pub rows: Vec<Prediction>,
    pub unreadable: Vec<Unreadable>,
}

/// How predictions are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredictionFormat {
    /// Aligned columns under a header, for a person at a terminal.
    Table,
    /// `path,class,probability` under that header (a scores file's first three columns).
    Csv,
    /// One JSON object per line: path, class, probability.
    Jsonl,
}

impl crate::params::Choice for PredictionFormat {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (PredictionFormat::Table, "table", "aligned columns under a header, for a person at a terminal"),
        (PredictionFormat::Csv, "csv", "path,class,probability under that header"),
        (PredictionFormat::Jsonl, "jsonl", "one JSON object per line: path, class, probability"),
    ];
}

/// Predict the class of each of `files` with the deployable model at `model_path` (checked as
/// [`super::score`] checks it). `o`'s batch, pixel limit and threshold apply; unreadable files are
/// returned with why, never fatal.
pub fn predict(
    model_path: &Path,
    files: &[PathBuf],
    o: &ScoreOptions,
    opts: &SessionOptions,
    sink: &dyn Sink,
) -> Result<Predicted> {
    let model = ScoredModel::open(model_path)?;
    let classes = &model.meta.classes;
    o.validate(classes.len())?;
    let mut out = Predicted::default();
    if files.is_empty() {
        return Ok(out);
    }
    let pb = sink.meter(files.len() as u64, "img", "predicting");
    model.probabilities(files, o, opts, |i, r| {
        pb.inc(1);
        let path = path_text(&files[i]);
        match r {
            Ok(p) => {
                let (c, probability) = rank(&p, 1, o.threshold.unwrap_or(0.5))[0];
                out.rows.push(Prediction { path, class: classes[c].clone(), probability });
            }
            Err(e) => out.unreadable.push((path, e.to_string())),
        }
        Ok(())
    })?;
    Ok(out)
}

impl PredictionFormat {
    /// The rows as this format's bytes (CSV: with its header and 6 decimals, as a scores file).
    pub fn render(self, rows: &[Prediction]) -> Vec<u8> {
        match self {
            PredictionFormat::Csv => {
                let mut out = csv_line(["path", "class", "probability"]);
                for r in rows {
                    let (path, class, p) = (csv_cell(&r.path), csv_cell(&r.class), format!("{:.6}", r.probability));
                    out.extend(csv_line([path.as_bytes(), class.as_bytes(), p.as_bytes()]));
                }
                out
            }
            PredictionFormat::Jsonl => {
                rows.iter().flat_map(|r| format!("{}\n", serde_json::json!(r)).into_bytes()).collect()
            }
            PredictionFormat::Table => table(rows).into_bytes(),
        }
    }
}

/// Aligned columns: path and class left-aligned, the probability (4 decimals) right-aligned.
fn table(rows: &[Prediction]) -> String {
    let width = |head: &str, cell: fn(&Prediction) -> &str| {
        rows.iter().map(|r| cell(r).chars().count()).chain([head.chars().count()]).max().unwrap_or(0)
    };
    let (wp, wc) = (width("path", |r| &r.path), width("class", |r| &r.class));
    let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())));
    let mut out = format!("{}  {}  probability\n", pad("path", wp), pad("class", wc));
    for r in rows {
        out.push_str(&format!("{}  {}  {:>11.4}\n", pad(&r.path, wp), pad(&r.class, wc), r.probability));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Prediction> {
        vec![
            Prediction { path: "a/long-name.png".into(), class: "cat".into(), probability: 0.91234567 },
            Prediction { path: "b,c.png".into(), class: "hedgehog".into(), probability: 0.5 },
        ]
    }

    #[test]
    fn each_format_renders_every_row() {
        let csv = String::from_utf8(PredictionFormat::Csv.render(&rows())).unwrap();
        assert_eq!(csv, "path,class,probability\na/long-name.png,cat,0.912346\n\"b,c.png\",hedgehog,0.500000\n");
        let jsonl = String::from_utf8(PredictionFormat::Jsonl.render(&rows())).unwrap();
        let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
        assert_eq!(first["probability"], 0.91234567);
        assert_eq!(jsonl.lines().count(), 2);
        let table = String::from_utf8(PredictionFormat::Table.render(&rows())).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "path             class     probability");
        assert_eq!(lines[1], "a/long-name.png  cat            0.9123");
        assert_eq!(lines[2], "b,c.png          hedgehog       0.5000");
    }
}
