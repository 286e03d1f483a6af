//! The quantize stage: a fetched backbone → `onnx/<name>-int8.onnx`, its activations' ranges
//! measured on calibration images (every tensor [`crate::onnx::qdq::plan`] picks, one run per
//! batch with them all as outputs), written in the QDQ form ORT fuses into integer kernels. The
//! sidecar is a backbone's (so the int8 model is a backbone name everywhere) plus what the ranges
//! came from; the quantized features are compared with fp32 on the calibration images.

use crate::backbone::{Backbone, BackboneInfo, Quantization};
use crate::batch::{run_batches, LoadSpec};
use crate::calibrate::{Method, Stats};
use crate::dataset;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::imageio::{self, Interpolation};
use crate::onnx::{self, cut, proto::ModelProto, qdq, Dim};
use crate::progress::Sink;
use crate::runtime::{self, SessionOptions};
use crate::spill::{self, Rows};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Quantization settings.
#[derive(Clone, Debug)]
pub struct QuantizeConfig {
    /// A dataset (its `train/` split) or a folder of images.
    pub calibrate: PathBuf,
    /// How many of its images calibrate (evenly spaced in path order).
    pub images: usize,
    pub method: Method,
    /// Image size for calibration (default: the backbone's).
    pub size: Option<u32>,
    pub interpolation: Interpolation,
    pub batch: usize,
    /// Convolutions kept in float32 at each end of the graph.
    pub float: qdq::FloatEnds,
    /// The int8 weights' range; `None`: [`default_weight_range`].
    pub weights: Option<qdq::WeightRange>,
    pub session: SessionOptions,
}

/// 7-bit weights where full-range ones can overflow ORT's integer kernels (x86-64 without VNNI),
/// full range elsewhere: the CPU that quantizes is taken for the one that will run the model.
pub fn default_weight_range() -> qdq::WeightRange {
    if runtime::int8_gemm_may_overflow() {
        qdq::WeightRange::Reduced
    } else {
        qdq::WeightRange::Full
    }
}

/// Quantize backbone `name` (fetched in `onnx_dir`); writes `<name>-int8.onnx` + sidecar.
pub fn quantize(onnx_dir: &Path, name: &str, cfg: &QuantizeConfig, sink: &dyn Sink) -> Result<BackboneInfo> {
    if cfg.images == 0 || cfg.batch == 0 {
        let (name, value) = if cfg.images == 0 { ("images", 0) } else { ("batch", 0) };
        return Err(Error::Param { name, value: value.to_string(), reason: "must be ≥ 1".into() });
    }
    let bb = Backbone::open(onnx_dir, name)?;
    let size = cfg.size.unwrap_or(bb.info.size);
    cut::check_size(size)?;
    bb.check_input_size(size)?;
    let model = onnx::decode_model(&bb.bytes, &bb.path)?;
    let plan = qdq::plan(&model, cfg.float);
    let tensors = plan.calibrated();
    if tensors.is_empty() {
        let reason = match plan.float_convs.len() {
            0 => "no Conv with a constant weight to quantize".to_string(),
            n => format!(
                "all {n} Convs are kept in float (--float-first {} --float-last {}): nothing left to quantize",
                cfg.float.first, cfg.float.last
            ),
        };
        return Err(Error::BadModel { path: bb.path.clone(), reason });
    }
    // The same estimate-and-refuse guard as extraction: a size no image fits at is refused before
    // anything runs, and batches shrink to what memory holds.
    // Calibration keeps every measured tensor as an output: each up to the largest one, on top
    // of what a plain run needs (three times the largest).
    let need =
        crate::memory::per_image_bytes(&model, &bb.path, size).map(|b| b.saturating_mul(3 + tensors.len() as u64) / 3);
    let batch = crate::memory::fit_batch(cfg.batch, need, size, &bb.path)?;
    let (paths, calibration_sha256) = calibration_images(&cfg.calibrate, cfg.images)?;
    let calib = Calibration { cfg, bb: &bb, size, batch, paths: &paths, sink };
    let (ranges, fp32) = calib.ranges(&model, &tensors)?;
    let out = onnx_dir.join(format!("{}-int8.onnx", bb.name));
    let weights = cfg.weights.unwrap_or_else(default_weight_range);
    let q = qdq::quantize(&model, &plan, &ranges, weights, &out)?;
    let encoded = onnx::encode_model(&q);
    let features = crate::backbone::feature_shape(&encoded, &out, bb.info.size)?;
    let (correlation, max_error) = calib.compare(&encoded, fp32)?;
    fsutil::write_bytes_atomic(&out, &encoded)?;
    let info = BackboneInfo {
        name: format!("{}-int8", bb.name),
        source: format!("{} quantized to int8 (QDQ)", bb.name),
        source_sha256: bb.info.onnx_sha256.clone(),
        onnx_sha256: fsutil::sha256_bytes(&encoded),
        features,
        quantization: Some(Quantization {
            of: bb.name.clone(),
            of_sha256: bb.info.onnx_sha256.clone(),
            method: cfg.method,
            images: paths.len(),
            size,
            calibration_sha256,
            ranges,
            correlation,
            max_error,
            float_convs: plan.float_convs.iter().cloned().collect(),
            weights,
        }),
        tlearn_version: env!("CARGO_PKG_VERSION").into(),
        ..bb.info.clone()
    };
    fsutil::write_json(&fsutil::sidecar_path(&out), &info)?;
    Ok(info)
}

/// Up to `n` images of a dataset's `train/` split (or of any folder, walked), evenly spaced in
/// path order, and a hash of their contents.
fn calibration_images(root: &Path, n: usize) -> Result<(Vec<PathBuf>, String)> {
    let mut all: Vec<PathBuf> = if root.join("train").is_dir() {
        dataset::list_split(root, "train")?.1.into_iter().map(|i| i.path).collect()
    } else {
        crate::inputs::list_images(root)?.files
    };
    all.sort();
    if all.is_empty() {
        return Err(Error::BadData { path: root.into(), reason: "no images to calibrate with".into() });
    }
    let k = n.min(all.len());
    let picked: Vec<PathBuf> = (0..k).map(|i| all[i * all.len() / k].clone()).collect();
    let mut sums = String::new();
    for p in &picked {
        sums.push_str(&fsutil::sha256_file(p)?);
    }
    Ok((picked, fsutil::sha256_bytes(sums.as_bytes())))
}

/// Calibrated (min, max) per tensor.
type Ranges = BTreeMap<String, (f32, f32)>;

/// Calibration images run through a model, a batch at a time.
struct Calibration<'a> {
    cfg: &'a QuantizeConfig,
    bb: &'a Backbone,
    size: u32,
    batch: usize,
    paths: &'a [PathBuf],
    sink: &'a dyn Sink,
}

impl Calibration<'_> {
    /// Run `model` over the images, handing each batch's `outputs` to `each`. Unreadable images
    /// are skipped (logged); none readable is an error.
    fn run(
        &self,
        model: &[u8],
        outputs: &[&str],
        message: &str,
        mut each: impl FnMut(Vec<ndarray::ArrayD<f32>>),
    ) -> Result<()> {
        let mut s = runtime::open(model, &self.bb.path, &self.cfg.session)?.session;
        let pb = self.sink.meter(self.paths.len() as u64, "img", message);
        let spec = LoadSpec {
            size: (self.size, self.size),
            interpolation: self.cfg.interpolation,
            preprocess: self.bb.info.preprocess.clone(),
            max_pixels: imageio::DEFAULT_MAX_PIXELS,
            view: imageio::View::Identity,
        };
        let mut read = 0;
        run_batches(&mut s, cut::IMAGE, outputs, self.paths, &spec, self.batch, |b| {
            for e in b.decoded.iter().filter_map(|r| r.as_ref().err()) {
                tracing::warn!("{e} (skipped)");
            }
            pb.inc(b.decoded.len() as u64);
            if let Some(ys) = b.outputs {
                read += b.decoded.iter().filter(|r| r.is_ok()).count();
                each(ys);
            }
            Ok(())
        })?;
        if read == 0 {
            return Err(Error::BadData {
                path: self.cfg.calibrate.clone(),
                reason: "no calibration image could be read".into(),
            });
        }
        Ok(())
    }

    /// The calibrated range of every tensor: min/max on a first pass, then (percentile,
    /// entropy) a histogram over that range on a second; and the fp32 features of the images,
    /// streamed to an unnamed temporary file (memory stays one batch whatever the image count).
    fn ranges(&self, model: &ModelProto, tensors: &[String]) -> Result<(Ranges, Rows<f32>)> {
        let mut m = model.clone();
        let g = m.graph.as_mut().expect("a model has a graph");
        for t in tensors.iter().filter(|t| **t != cut::FEATURES) {
            g.output.push(onnx::value_info(t, onnx::proto::dtype::FLOAT, &[Dim::named("N")]));
            // Measured whatever its rank: the declared shape only names the output.
            if let Some(tt) = g.output.last_mut().and_then(|o| o.r#type.as_mut()).and_then(|t| t.tensor_type.as_mut()) {
                tt.shape = None;
            }
        }
        let bytes = onnx::encode_model(&m);
        let names: Vec<&str> = std::iter::once(cut::FEATURES).chain(tensors.iter().map(String::as_str)).collect();
        let mut stats: Vec<Stats> = vec![Stats::default(); tensors.len()];
        // The features kept within an eighth of the available memory, the rest in an unlinked file.
        let budget = spill::Budget::new(crate::memory::available_bytes().unwrap_or(0) / 8, &std::env::temp_dir());
        let mut fp32: Option<spill::RowWriter<f32>> = None;
        let mut written: Result<()> = Ok(());
        self.run(&bytes, &names, "calibrating (ranges)", |ys| {
            if written.is_ok() {
                written = keep_rows(&mut fp32, &budget, self.paths.len(), &ys[0]);
            }
            stats.iter_mut().zip(&ys[1..]).for_each(|(s, y)| s.observe_range(&values(y)))
        })?;
        written?;
        let fp32 = fp32.expect("a run reads at least one image").finish()?;
        if self.cfg.method.needs_histogram() {
            self.run(&bytes, &names, "calibrating (histograms)", |ys| {
                stats.iter_mut().zip(&ys[1..]).for_each(|(s, y)| s.observe_histogram(&values(y)))
            })?;
        }
        let ranges = tensors.iter().cloned().zip(stats.iter().map(|s| s.range(self.cfg.method))).collect();
        Ok((ranges, fp32))
    }

    /// int8 vs fp32 features on the calibration images: (correlation, max error / max |fp32|),
    /// the fp32 rows read back a batch at a time.
    fn compare(&self, int8: &[u8], fp: Rows<f32>) -> Result<(f64, f64)> {
        let (mut acc, mut next, mut failed) = (Agreement::default(), 0, None);
        self.run(int8, &[cut::FEATURES], "checking (int8)", |ys| {
            let n = ys[0].shape().first().copied().unwrap_or(0);
            let idx: Vec<usize> = (next..next + n).collect();
            next += n;
            if failed.is_some() || next > fp.len() {
                return;
            }
            match fp.select(&idx) {
                Ok(a) => acc.add(&values(&a), &values(&ys[0])),
                Err(e) => failed = Some(e),
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if next != fp.len() {
            return Err(Error::Shape {
                what: "int8 vs fp32 features (images)".into(),
                expected: vec![fp.len()],
                got: vec![next],
            });
        }
        Ok(acc.result())
    }
}

/// Append the rows of `y` (a batch's features) to `rows`, made at the first batch for
/// `capacity` rows of its shape.
fn keep_rows(
    rows: &mut Option<spill::RowWriter<f32>>,
    budget: &spill::Budget,
    capacity: usize,
    y: &ndarray::ArrayD<f32>,
) -> Result<()> {
    let n = y.shape().first().copied().unwrap_or(0);
    if rows.is_none() {
        *rows = Some(spill::RowWriter::new(budget, "calibration features", capacity, &y.shape()[1..])?);
    }
    rows.as_mut().expect("made above").push(n, &values(y))
}

/// Running sums for the correlation and the largest error of int8 against fp32 values.
#[derive(Default)]
struct Agreement {
    n: f64,
    shift: (f64, f64),
    sums: [f64; 5],
    max_err: f64,
    max_abs: f64,
}

impl Agreement {
    fn add(&mut self, fp: &[f32], q: &[f32]) {
        for (&a, &b) in fp.iter().zip(q) {
            let (a, b) = (a as f64, b as f64);
            if self.n == 0.0 {
                self.shift = (a, b);
            }
            self.max_err = self.max_err.max((a - b).abs());
            self.max_abs = self.max_abs.max(a.abs());
            // Sums about the first values, so a large mean does not swamp the variances.
            let (a, b) = (a - self.shift.0, b - self.shift.1);
            self.n += 1.0;
            for (s, v) in self.sums.iter_mut().zip([a, b, a * a, b * b, a * b]) {
                *s += v;
            }
        }
    }

    /// (correlation, max error / max |fp32|).
    fn result(&self) -> (f64, f64) {
        let n = self.n.max(1.0);
        let [sa, sb, saa, sbb, sab] = self.sums;
        let (cov, va, vb) = (sab - sa * sb / n, saa - sa * sa / n, sbb - sb * sb / n);
        // Both constant: they agree; one constant: it tells nothing of the other.
        let corr = match (va > 0.0, vb > 0.0) {
            (true, true) => (cov / (va * vb).sqrt()).clamp(-1.0, 1.0),
            (false, false) => 1.0,
            _ => 0.0,
        };
        (corr, if self.max_abs > 0.0 { self.max_err / self.max_abs } else { 0.0 })
    }
}

fn values(y: &ndarray::ArrayD<f32>) -> std::borrow::Cow<'_, [f32]> {
    match y.as_slice() {
        Some(s) => s.into(),
        None => y.iter().copied().collect::<Vec<_>>().into(),
    }
}
