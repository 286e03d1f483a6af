//! The evaluation report a person reads: `reports/<run>/index.html`, one self-contained file
//! (every picture a `data:` URI, no script, no external resource) with the metrics, the confusion
//! matrix, ROC curves, the training curves and the most confidently misclassified test images.
//! This module renders the page; the stage that evaluates draws the charts and writes the files.

use crate::metrics::{class_probs, predicted, Metrics};
use base64::Engine as _;
use ndarray::ArrayD;
use std::path::Path;

/// Misclassified images shown, most confident first.
pub const MISCLASSIFIED: usize = 16;
/// Thumbnails fit in this many pixels per side.
const THUMB: u32 = 160;

/// Everything the page shows.
pub struct Page<'a> {
    pub title: &'a str,
    pub context: &'a serde_json::Value,
    pub metrics: &'a Metrics,
    pub classes: &'a [String],
    pub probs: &'a ArrayD<f32>,
    /// Each test row's (image path, true class index).
    pub files: &'a [(String, usize)],
    /// The charts as PNG bytes, each when it could be drawn.
    pub confusion_png: Option<Vec<u8>>,
    pub roc_png: Option<Vec<u8>>,
    /// The run's training curves, when it has them.
    pub history_png: Option<Vec<u8>>,
    /// Images larger than this are not decoded for thumbnails.
    pub max_pixels: u64,
    /// Grad-CAM overlays, when the evaluation made them (else the section says why not).
    pub heatmaps: Result<Vec<Heatmap>, String>,
}

/// One image's Grad-CAM overlay (PNG) and what the model said of it.
pub struct Heatmap {
    pub path: String,
    pub truth: usize,
    pub predicted: usize,
    pub probability: f32,
    pub png: Vec<u8>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn data_uri(png: &[u8]) -> String {
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png))
}

fn img(png: &[u8], alt: &str) -> String {
    format!("<img src=\"{}\" alt=\"{}\">", data_uri(png), esc(alt))
}

/// A PNG thumbnail of the image at `path`, or why there is none.
fn thumbnail(path: &Path, max_pixels: u64) -> std::result::Result<Vec<u8>, String> {
    let im = crate::imageio::decode(path, max_pixels).map_err(|e| e.to_string())?;
    let t = im.thumbnail(THUMB, THUMB).to_rgb8();
    let mut out = std::io::Cursor::new(vec![]);
    t.write_to(&mut out, image::ImageFormat::Png).map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

/// Indices of misclassified rows, most confident (probability of the wrong class) first; `p` and
/// `pred` are [`class_probs`] and [`predicted`] of the model outputs.
pub fn most_confident_mistakes(p: &[Vec<f64>], pred: &[usize], labels: &[usize], n: usize) -> Vec<usize> {
    most_confident(p, pred, labels, n, false)
}

/// Like [`most_confident_mistakes`], for the rows classified `right` or wrong.
pub fn most_confident(p: &[Vec<f64>], pred: &[usize], labels: &[usize], n: usize, right: bool) -> Vec<usize> {
    let mut rows: Vec<usize> = (0..labels.len()).filter(|&i| (pred[i] == labels[i]) == right).collect();
    rows.sort_by(|&a, &b| p[b][pred[b]].total_cmp(&p[a][pred[a]]).then(a.cmp(&b)));
    rows.truncate(n);
    rows
}

/// The bytes of the PNG file at `path`, if it is one.
pub fn png_file(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok().filter(|b| b.starts_with(b"\x89PNG"))
}

/// The page's HTML.
pub fn render(page: &Page) -> String {
    let mut h = head(page.title);
    h += &metrics_section(page);
    let sections = [
        ("confusion", "Confusion matrix", "confusion matrix", &page.confusion_png, "(not drawn)"),
        ("roc", "ROC curve", "ROC curve", &page.roc_png, "(needs both classes in the test split)"),
        ("curves", "Training curves", "training curves", &page.history_png, "(this run has no per-epoch history)"),
    ];
    for (id, title, alt, png, missing) in sections {
        let body = match png {
            Some(b) => img(b, alt),
            None => format!("<p>{missing}</p>"),
        };
        h += &format!("<section id=\"{id}\"><h2>{title}</h2>\n{body}</section>\n");
    }
    h += &mistakes_section(page);
    h += &heatmap_section(page);
    h + "</body></html>\n"
}

/// A table cell: its text, and the page it links to (relative), if any.
pub struct Cell {
    pub text: String,
    pub link: Option<String>,
}

/// A self-contained page of one table under `title`, `intro` above it (plain text).
pub fn table_page(title: &str, intro: &str, header: &[&str], rows: &[Vec<Cell>]) -> String {
    let mut h = head(title);
    h += &format!("<p>{}</p>\n<table>\n<tr>", esc(intro));
    for c in header {
        h += &format!("<th>{}</th>", esc(c));
    }
    h += "</tr>\n";
    for row in rows {
        h += "<tr>";
        for c in row {
            h += &match &c.link {
                Some(l) => format!("<td><a href=\"{}\">{}</a></td>", esc(l), esc(&c.text)),
                None => format!("<td>{}</td>", esc(&c.text)),
            };
        }
        h += "</tr>\n";
    }
    h + "</table>\n</body></html>\n"
}

fn head(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>\
         body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}th{{background:#eee}}\
         td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}\
         .grid{{display:flex;flex-wrap:wrap;gap:12px}}.tile{{width:{w}px;font-size:13px}}\
         .tile img{{display:block;margin-bottom:4px}}.path{{word-break:break-all;color:#555}}.missing{{width:{w}px;height:{w}px;background:#eee}}\
         </style></head><body>\n<h1>{t}</h1>\n",
        t = esc(title),
        w = THUMB
    )
}

fn metrics_section(page: &Page) -> String {
    let m = page.metrics;
    let mut h = String::new();
    h += "<section id=\"metrics\"><h2>Metrics</h2>\n<table>\n";
    let auc = m.roc_auc.map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into());
    for (k, v) in [
        ("test images", m.n_test.to_string()),
        ("accuracy", format!("{:.4}", m.accuracy)),
        ("loss (cross-entropy)", format!("{:.4}", m.loss)),
        ("macro-F1", format!("{:.4}", m.macro_f1)),
        ("ROC-AUC", auc),
    ] {
        h += &format!("<tr><th>{k}</th><td>{}</td></tr>\n", esc(&v));
    }
    h += "</table>\n<h3>Per class</h3>\n<table class=\"per-class\"><tr><th>class</th><th>precision</th>\
          <th>recall</th><th>F1</th><th>support</th></tr>\n";
    for c in &m.per_class {
        h += &format!(
            "<tr><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td></tr>\n",
            esc(&c.class),
            c.precision,
            c.recall,
            c.f1,
            c.support
        );
    }
    h += "</table>\n";
    h += &normalized_confusion(page);
    h += "<details><summary>Run settings</summary><pre>";
    h += &esc(&serde_json::to_string_pretty(page.context).unwrap_or_default());
    h += "</pre></details></section>\n";
    h
}

/// The confusion matrix by row share: of each true class's images, the share predicted as each
/// class (recall on the diagonal), so a rare class's mistakes are as visible as a common one's.
fn normalized_confusion(page: &Page) -> String {
    let m = page.metrics;
    let mut h = "<h3>Confusion, normalised by true class</h3>\n<table class=\"confusion-normalized\"><tr>\
                 <th>true \\ predicted</th>"
        .to_string();
    for c in page.classes {
        h += &format!("<th>{}</th>", esc(c));
    }
    h += "<th>images</th></tr>\n";
    for (i, ((c, row), counts)) in page.classes.iter().zip(m.confusion_normalized()).zip(&m.confusion).enumerate() {
        h += &format!("<tr><td>{}</td>", esc(c));
        for (j, v) in row.iter().enumerate() {
            let cell = format!("{:.1} %", 100.0 * v);
            h += &if i == j { format!("<td><b>{cell}</b></td>") } else { format!("<td>{cell}</td>") };
        }
        h += &format!("<td>{}</td></tr>\n", counts.iter().sum::<usize>());
    }
    h + "</table>\n"
}

fn tile(pic: &str, path: &str, truth: &str, predicted: &str, p: f64) -> String {
    format!(
        "<div class=\"tile\">{pic}<div class=\"path\" title=\"{}\">{}</div><div>true: <b>{}</b></div>\
         <div>predicted: <b>{}</b> ({p:.4})</div></div>\n",
        esc(path),
        esc(&Path::new(path).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()),
        esc(truth),
        esc(predicted),
    )
}

fn heatmap_section(page: &Page) -> String {
    let mut h = "<section id=\"gradcam\"><h2>Where the model looks (Grad-CAM)</h2>\n".to_string();
    match &page.heatmaps {
        Err(why) => h += &format!("<p>(not drawn: {})</p>", esc(why)),
        Ok(maps) => {
            h += "<p>Red: the regions whose features raise the predicted class's score the most (the \
                  most confident mistakes first, then the most confident right answers).</p>\n<div class=\"grid\">\n";
            for m in maps {
                let (t, q) = (&page.classes[m.truth], &page.classes[m.predicted]);
                h += &tile(&img(&m.png, &m.path), &m.path, t, q, m.probability as f64);
            }
            h += "</div>";
        }
    }
    h + "</section>\n"
}

fn mistakes_section(page: &Page) -> String {
    let labels: Vec<usize> = page.files.iter().map(|f| f.1).collect();
    let p = class_probs(page.probs);
    let mut h = String::new();
    // The most confident mistakes.
    let pred = predicted(page.probs);
    let wrong = most_confident_mistakes(&p, &pred, &labels, MISCLASSIFIED);
    h += &format!(
        "<section id=\"misclassified\"><h2>Most confidently misclassified ({} of {} errors)</h2>\n<div class=\"grid\">\n",
        wrong.len(),
        labels.iter().zip(&pred).filter(|(a, b)| a != b).count()
    );
    for &i in &wrong {
        let (path, t) = &page.files[i];
        let q = pred[i];
        let pic = match thumbnail(&crate::fsutil::text_path(path), page.max_pixels) {
            Ok(b) => img(&b, path),
            Err(e) => format!("<div class=\"missing\" title=\"{}\"></div>", esc(&e)),
        };
        h += &tile(&pic, path, &page.classes[*t], &page.classes[q], p[i][q]);
    }
    h + "</div></section>\n"
}
