//! Backbone × head comparison: train every head on every feature folder, evaluate each on the test
//! split, time training and scoring, and write one table (Markdown + CSV) and a bar chart.

use crate::backbone::Backbone;
use crate::error::{Error, Result};
use crate::head::{self, HeadJob};
use crate::heads::{ClassicalSpec, HeadKind, HeadSpec};
use crate::params::{Checked, ParamGuard};
use crate::progress::Sink;
use crate::runtime::{self, SessionOptions};
use crate::train::FitConfig;
use crate::{features, fsutil, metrics};
use ndarray::Array4;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One trained (backbone, head) pair.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub backbone: String,
    pub size: u32,
    pub head: String,
    pub accuracy: f64,
    pub roc_auc: Option<f64>,
    pub macro_f1: f64,
    pub n_test: usize,
    pub train_seconds: f64,
    /// The head on cached features (its session opened and run over the test split), per test image.
    pub head_ms_per_image: f64,
    /// The backbone on one image at the features' size (batch 16), per image; the deployable
    /// model's cost per image is about backbone + head.
    pub backbone_ms_per_image: f64,
    pub run: String,
}

/// What to compare; the dense head trains with `fit`, the classical ones with `classical`.
pub struct Plan {
    pub features: Vec<PathBuf>,
    pub heads: Vec<HeadKind>,
    /// Pooling and the dense head's layers (its `standardize` is replaced per kind, below).
    pub spec: HeadSpec,
    /// Standardise for every head; None = each kind's default ([`HeadKind::standardizes_by_default`]).
    pub standardize: Option<bool>,
    pub classical: Checked<ClassicalSpec>,
    pub fit: Checked<FitConfig>,
    pub opts: SessionOptions,
    /// Runs go to `<runs>/<backbone>-<size>-<head>`.
    pub runs: PathBuf,
    /// Where backbones live (for timing them).
    pub onnx_dir: PathBuf,
}

/// Milliseconds per image of the backbone that made `info`, on a batch of 16 blank images
/// (after one warm-up run; the cost of a conv net does not depend on pixel values).
fn backbone_ms(onnx_dir: &Path, info: &features::FeatureInfo, opts: &SessionOptions) -> Result<f64> {
    let bb = Backbone::open(onnx_dir, &info.backbone)?;
    if bb.info.onnx_sha256 != info.backbone_sha256 {
        return Err(Error::BadData {
            path: bb.path.clone(),
            reason: "this backbone differs from the one the features were extracted with".into(),
        });
    }
    let open = runtime::open(&bb.bytes, &bb.path, opts)?;
    bb.warn_if_int8_overflows(open.device);
    let mut s = open.session;
    let n = 16;
    let x = Array4::<f32>::zeros((n, info.size as usize, info.size as usize, 3)).into_dyn();
    let mut time = || -> Result<f64> {
        let t = Instant::now();
        runtime::run_f32(&mut s, vec![("image", x.view())], &["features"])?;
        Ok(t.elapsed().as_secs_f64())
    };
    time()?;
    Ok(time()? * 1e3 / n as f64)
}

/// Train, evaluate and time every (feature folder, head) pair of the plan.
pub fn run(plan: &Plan, sink: &dyn Sink, mut on_row: impl FnMut(&Row)) -> Result<Vec<Row>> {
    if plan.features.is_empty() || plan.heads.is_empty() {
        return Err(Error::Other("compare needs at least one feature folder and one head".into()));
    }
    let mut rows = vec![];
    for fdir in &plan.features {
        let test = features::load(fdir, "test")?;
        let info = &test.info;
        let bb_ms = backbone_ms(&plan.onnx_dir, info, &plan.opts)?;
        for &kind in &plan.heads {
            let name = format!("{}-{}-{}", info.backbone, info.size, kind.name());
            let run_dir = plan.runs.join(&name);
            let standardize = plan.standardize.unwrap_or(kind.standardizes_by_default());
            let spec = HeadSpec { standardize, ..plan.spec.clone() }.check()?;
            let job = HeadJob {
                resume: Default::default(),
                features: fdir.clone(),
                run_dir: run_dir.clone(),
                kind,
                spec,
                classical: plan.classical.clone(),
                fit: plan.fit.clone(),
                opts: plan.opts.clone(),
                train_views: vec![],
                tta: vec![],
                lr_auto: None,
            };
            let (ri, trained) = head::train_head(&job, sink)?;
            // The test split is loaded (and checksummed) once per folder; the timing covers only
            // the head: opening its session and running it over the cached test features.
            let bytes = crate::onnx::encode_model(&trained.model);
            let t = Instant::now();
            let probs = crate::train::predict(&bytes, &run_dir.join(crate::runs::HEAD), &test.x, 256, &plan.opts)?;
            let head_ms = t.elapsed().as_secs_f64() * 1e3 / test.labels.len().max(1) as f64;
            metrics::check_width(&probs, ri.classes.len(), &run_dir.join(crate::runs::HEAD))?;
            let m = metrics::compute(&probs, &test.labels, &ri.classes);
            let row = Row {
                backbone: info.backbone.clone(),
                size: info.size,
                head: kind.name().into(),
                accuracy: m.accuracy,
                roc_auc: m.roc_auc,
                macro_f1: m.macro_f1,
                n_test: m.n_test,
                train_seconds: ri.train_seconds,
                head_ms_per_image: head_ms,
                backbone_ms_per_image: bb_ms,
                run: name,
            };
            on_row(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into())
}

/// The table as Markdown, best accuracy first (ties: the order of the plan).
pub fn markdown(rows: &[Row]) -> String {
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by(|a, b| b.accuracy.total_cmp(&a.accuracy));
    let mut s = String::from(
        "| backbone | size | head | test accuracy | ROC-AUC | macro-F1 | train s | head ms/img | backbone ms/img |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in sorted {
        s += &format!(
            "| {} | {} | {} | {:.4} | {} | {:.4} | {:.1} | {:.3} | {:.1} |\n",
            r.backbone,
            r.size,
            r.head,
            r.accuracy,
            opt(r.roc_auc),
            r.macro_f1,
            r.train_seconds,
            r.head_ms_per_image,
            r.backbone_ms_per_image
        );
    }
    s
}

/// `table.md`, `table.csv` and `accuracy.png` in `out` (each written atomically).
pub fn write(out: &Path, rows: &[Row], title: &str) -> Result<()> {
    let md = format!("# {title}\n\n{}", markdown(rows));
    fsutil::write_bytes_atomic(&out.join("table.md"), md.as_bytes())?;
    let table = out.join("table.csv");
    fsutil::write_bytes_atomic(&table, &fsutil::csv_bytes(&table, rows)?)?;
    let bars: Vec<(String, f64)> =
        rows.iter().map(|r| (format!("{}-{} {}", r.backbone, r.size, r.head), r.accuracy)).collect();
    crate::plot::bars(&out.join("accuracy.png"), &format!("{title}: test accuracy"), &bars)
}
