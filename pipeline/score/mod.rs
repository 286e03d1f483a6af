//! Deployable models and batch scoring: fuse preprocessing + backbone + head into ONE ONNX graph
//! (input: RGB 0..255 images (N,H,W,3); output: class probabilities), then score folder trees.

use crate::batch::{run_images, LoadSpec};
use crate::error::{Error, IoContext, Result};
use crate::imageio::{Interpolation, Preprocess, PreprocessKind, View};
use crate::onnx::builder::A;
use crate::onnx::proto::*;
use crate::onnx::{self, cut, Dim, GraphBuilder};
use crate::runtime::{self, SessionOptions};
use crate::shard::Shard;
use sha2::Digest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod merge;
pub use merge::merge;

pub const INPUT: &str = "image";
pub const OUTPUT: &str = "probs";

/// Rename every tensor of `g` with `prefix`, except those in `keep` (mapped as given).
fn rename(g: &GraphProto, prefix: &str, keep: &HashMap<String, String>) -> GraphProto {
    let map = |s: &String| -> String {
        if s.is_empty() {
            return s.clone();
        }
        keep.get(s).cloned().unwrap_or_else(|| format!("{prefix}{s}"))
    };
    let mut out = g.clone();
    for n in out.node.iter_mut() {
        n.input = n.input.iter().map(map).collect();
        n.output = n.output.iter().map(map).collect();
        n.name = format!("{prefix}{}", n.name);
    }
    for t in out.initializer.iter_mut() {
        t.name = map(&t.name);
    }
    out
}

/// One graph: raw RGB → preprocessing → backbone → head. `classes` and the input settings are
/// recorded in the model's metadata. With `tta` views the graph also runs those flips of every
/// image and returns the mean probability over the plain image and its views (as `tlearn-evaluate`
/// does with the cached views).
pub fn fuse(
    backbone: &ModelProto,
    head: &ModelProto,
    pre: &Preprocess,
    size: u32,
    interpolation: Interpolation,
    classes: &[String],
    tta: &[View],
) -> Result<ModelProto> {
    let mut b = GraphBuilder::new("tlearn_classifier").with_prefix("pre/");
    b.input(INPUT, &[Dim::named("N"), Dim::Fixed(size as i64), Dim::Fixed(size as i64), Dim::Fixed(3)]);
    let mut x = INPUT.to_string();
    if pre.bgr {
        let idx = b.const_i64("bgr", &[2, 1, 0]);
        x = b.op("Gather", &[&x, &idx], vec![("axis", A::I(3))]);
    }
    if pre.scale != 1.0 {
        let s = b.const_f32("scale", pre.scale);
        x = b.op("Mul", &[&x, &s], vec![]);
    }
    if pre.mean != [0.0; 3] {
        let m = b.const_vec_f32("mean", &pre.mean);
        x = b.op("Sub", &[&x, &m], vec![]);
    }
    if pre.std != [1.0; 3] {
        let s = b.const_vec_f32("std", &pre.std);
        x = b.op("Div", &[&x, &s], vec![]);
    }
    let views: Vec<View> = tta.iter().copied().filter(|v| *v != View::Identity).collect();
    if !views.is_empty() {
        // Stack the views along the batch axis: (V·N, H, W, 3), view-major.
        let mut parts = vec![x.clone()];
        for v in &views {
            let (rows, cols) = v.flips();
            let axes: Vec<i64> = [(rows, 1), (cols, 2)].iter().filter(|f| f.0).map(|f| f.1).collect();
            let k = axes.len();
            let st = b.const_i64("flip_starts", &vec![-1; k]);
            let en = b.const_i64("flip_ends", &vec![i64::MIN; k]);
            let ax = b.const_i64("flip_axes", &axes);
            let sp = b.const_i64("flip_steps", &vec![-1; k]);
            parts.push(b.op("Slice", &[&x, &st, &en, &ax, &sp], vec![]));
        }
        let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
        x = b.op("Concat", &refs, vec![("axis", A::I(0))]);
    }
    let bg = onnx::graph(backbone);
    let hg = onnx::graph(head);
    let head_in = onnx::real_inputs(hg)
        .first()
        .map(|i| i.name.clone())
        .ok_or_else(|| Error::Other("head has no input".into()))?;
    let head_out =
        hg.output.first().map(|o| o.name.clone()).ok_or_else(|| Error::Other("head has no output".into()))?;
    let k = crate::metrics::output_width(classes.len());
    if let Some(Some(got)) = hg.output.first().and_then(|o| onnx::vi_shape(o).1.last().copied()) {
        if got != k as i64 {
            return Err(Error::Shape {
                what: format!(
                    "head outputs per image for {} classes (the head does not match its class list)",
                    classes.len()
                ),
                expected: vec![k],
                got: vec![got.max(0) as usize],
            });
        }
    }
    let head_probs = if views.is_empty() { OUTPUT.to_string() } else { "tta/probs_all".to_string() };
    let bb = rename(bg, "backbone/", &HashMap::from([(cut::IMAGE.to_string(), x.clone())]));
    let hh = rename(
        hg,
        "head/",
        &HashMap::from([(head_in, format!("backbone/{}", cut::FEATURES)), (head_out, head_probs.clone())]),
    );
    for g in [bb, hh] {
        b.graph.node.extend(g.node);
        b.graph.initializer.extend(g.initializer);
    }
    if !views.is_empty() {
        // (V·N, k) → (V, N·k) → mean over V as a (1, V) MatMul → (N, k).
        let nv = views.len() + 1;
        let s1 = b.const_i64("tta_shape", &[nv as i64, -1]);
        let r = b.op("Reshape", &[&head_probs, &s1], vec![]);
        let w = b.init_f32("tta/mean", &ndarray::Array2::from_elem((1, nv), 1.0 / nv as f32).into_dyn());
        let m = b.op("MatMul", &[&w, &r], vec![]);
        let s2 = b.const_i64("tta_rows", &[-1, k as i64]);
        b.node("Reshape", &[&m, &s2], &[OUTPUT], vec![]);
    }
    b.output(OUTPUT, &[Dim::named("N"), Dim::Fixed(k as i64)]);
    finish(b, &[backbone, head], size, interpolation, classes, &views)
}

/// The graph `b` as a deployable model: opset of the parts, metadata that `score` reads.
fn finish(
    b: GraphBuilder,
    parts: &[&ModelProto],
    size: u32,
    interpolation: Interpolation,
    classes: &[String],
    tta: &[View],
) -> Result<ModelProto> {
    let mut m = onnx::model(b.finish(), "tlearn");
    let opset = parts
        .iter()
        .flat_map(|m| m.opset_import.iter())
        .filter(|o| o.domain.is_empty())
        .map(|o| o.version)
        .max()
        .unwrap_or(onnx::OPSET);
    for o in m.opset_import.iter_mut().filter(|o| o.domain.is_empty()) {
        o.version = opset;
    }
    m.metadata_props = vec![
        StringStringEntryProto { key: "tlearn.classes".into(), value: serde_json::to_string(classes).expect("json") },
        StringStringEntryProto { key: "tlearn.size".into(), value: size.to_string() },
        StringStringEntryProto {
            key: "tlearn.interpolation".into(),
            value: serde_json::to_string(&interpolation).expect("json"),
        },
        StringStringEntryProto { key: "tlearn.tta".into(), value: serde_json::to_string(tta).expect("json") },
        StringStringEntryProto {
            key: "tlearn.input".into(),
            value: "RGB 0..255 float32 (N,H,W,3); preprocessing is in the graph".into(),
        },
    ];
    Ok(m)
}

/// A deployable model from a whole classifier `net` that takes (N,H,W,C) images scaled by
/// `scale` (C = 1: gray, ITU-R 601 luma): raw RGB 0..255 in, probabilities out.
pub fn deployable(
    net: &ModelProto,
    size: u32,
    channels: usize,
    scale: f32,
    interpolation: Interpolation,
    classes: &[String],
) -> Result<ModelProto> {
    let mut b = GraphBuilder::new("tlearn_classifier").with_prefix("pre/");
    b.input(INPUT, &[Dim::named("N"), Dim::Fixed(size as i64), Dim::Fixed(size as i64), Dim::Fixed(3)]);
    let mut x = INPUT.to_string();
    if channels == 1 {
        let w = b.init_f32(
            "pre/luma",
            &ndarray::Array2::from_shape_vec((3, 1), crate::imageio::LUMA.to_vec()).expect("3×1").into_dyn(),
        );
        let l = b.op("MatMul", &[&x, &w], vec![]);
        // Rounded like the 8-bit gray images training saw (PIL "L").
        x = b.op("Round", &[&l], vec![]);
    }
    if scale != 1.0 {
        let s = b.const_f32("scale", scale);
        x = b.op("Mul", &[&x, &s], vec![]);
    }
    let g = onnx::graph(net);
    let net_in = onnx::real_inputs(g)
        .first()
        .map(|i| i.name.clone())
        .ok_or_else(|| Error::Other("model has no input".into()))?;
    let net_out = g.output.first().map(|o| o.name.clone()).ok_or_else(|| Error::Other("model has no output".into()))?;
    let k = crate::metrics::output_width(classes.len());
    let r = rename(g, "net/", &HashMap::from([(net_in, x), (net_out, OUTPUT.to_string())]));
    b.graph.node.extend(r.node);
    b.graph.initializer.extend(r.initializer);
    b.output(OUTPUT, &[Dim::named("N"), Dim::Fixed(k as i64)]);
    finish(b, &[net], size, interpolation, classes, &[])
}

/// What a deployable model needs to be fed.
#[derive(Clone, Debug)]
pub struct ModelMeta {
    pub classes: Vec<String>,
    pub size: u32,
    pub interpolation: Interpolation,
}

pub fn meta(m: &ModelProto, path: &Path) -> Result<ModelMeta> {
    let get = |k: &str| m.metadata_props.iter().find(|p| p.key == k).map(|p| p.value.clone());
    let bad = |what: &str| Error::BadModel {
        path: path.into(),
        reason: format!("not a tlearn classifier: metadata {what} missing or invalid"),
    };
    let classes: Vec<String> =
        get("tlearn.classes").and_then(|v| serde_json::from_str(&v).ok()).ok_or_else(|| bad("tlearn.classes"))?;
    let size: u32 = get("tlearn.size")
        .and_then(|v| v.parse().ok())
        .filter(|s| (1..=cut::MAX_SIDE as u32).contains(s))
        .ok_or_else(|| bad("tlearn.size"))?;
    if classes.is_empty() {
        return Err(bad("tlearn.classes"));
    }
    let interpolation = get("tlearn.interpolation").and_then(|v| serde_json::from_str(&v).ok()).unwrap_or_default();
    Ok(ModelMeta { classes, size, interpolation })
}

pub use crate::inputs::Unreadable;

/// Result of a scoring run (also written next to the output as `<out>.summary.json`). Unreadable
/// files are sorted by path, so a merge of shard outputs writes exactly what one run writes.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ScoreSummary {
    pub scored: usize,
    pub unreadable: Vec<Unreadable>,
    pub per_class: std::collections::BTreeMap<String, usize>,
    pub model_sha256: String,
    pub format: Format,
    pub threshold: Option<f64>,
    pub top_k: usize,
    /// The part of the inputs this output covers (`tlearn-score merge` combines all parts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// sha256 over the real paths of all the inputs (before sharding): parts of one scoring job
    /// share it however their inputs were spelled; a merge of parts of other inputs is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs_sha256: Option<String>,
}

impl ScoreSummary {
    /// Count in a part of the images (a journal chunk, a shard's summary).
    fn add(
        &mut self,
        scored: usize,
        per_class: std::collections::BTreeMap<String, usize>,
        unreadable: Vec<Unreadable>,
    ) {
        self.scored += scored;
        for (c, n) in per_class {
            *self.per_class.entry(c).or_default() += n;
        }
        self.unreadable.extend(unreadable);
    }

    /// Unreadable files in path order (the order one run lists files in), so a merge of shard
    /// summaries equals one run's.
    fn sort_unreadable(&mut self) {
        self.unreadable.sort_by(|a, b| Path::new(&a.0).cmp(Path::new(&b.0)).then_with(|| a.1.cmp(&b.1)));
    }
}

/// How rows are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// path, class, probability [, class_2, probability_2, …] [, p_<class> …]
    #[default]
    Csv,
    /// One JSON object per line: path, class, probability, top (k × {class, probability}), probs.
    Jsonl,
}

impl Format {
    /// JSON lines for `.jsonl`/`.ndjson` outputs, else CSV.
    pub fn of(out: &Path) -> Format {
        match out.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "ndjson") => Format::Jsonl,
            _ => Format::Csv,
        }
    }
}

/// Scoring settings, validated by [`ScoreOptions::validate`] against the model's classes.
#[derive(Clone, Debug)]
pub struct ScoreOptions {
    pub batch: usize,
    pub max_pixels: u64,
    /// Binary models: the positive class (index 1) when its probability ≥ threshold (default 0.5).
    pub threshold: Option<f64>,
    /// Multi-class models: also report the k most probable classes (default 1).
    pub top_k: usize,
    pub format: Format,
    /// Score only this part of the inputs (by path hash); merge the parts with [`merge`].
    pub shard: Option<Shard>,
    /// Journal progress every this many images, so a killed run resumes where it stopped.
    pub checkpoint_every: usize,
}

impl ScoreOptions {
    fn validate(&self, classes: usize) -> Result<()> {
        let bad = |name, value: String, reason: String| Err(Error::Param { name, value, reason });
        if let Some(t) = self.threshold {
            if classes != 2 {
                return bad(
                    "threshold",
                    t.to_string(),
                    format!("only for binary models; this one has {classes} classes"),
                );
            }
            if !(0.0..=1.0).contains(&t) {
                return bad("threshold", t.to_string(), "must be in [0, 1]".into());
            }
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint-every", "0".into(), "must be ≥ 1".into());
        }
        if self.batch == 0 {
            return bad("batch", "0".into(), "must be ≥ 1".into());
        }
        if self.max_pixels == 0 {
            return bad("max-pixels", "0".into(), "must be ≥ 1".into());
        }
        if self.top_k == 0 || self.top_k > classes {
            return bad("top-k", self.top_k.to_string(), format!("must be in 1..={classes} (the model's classes)"));
        }
        Ok(())
    }
}

/// The CSV header line (JSON lines have none).
fn header(format: Format, classes: &[String], top_k: usize) -> Vec<u8> {
    if format == Format::Jsonl {
        return vec![];
    }
    let mut h = vec!["path".to_string(), "class".into(), "probability".into()];
    for k in 2..=top_k {
        h.extend([format!("class_{k}"), format!("probability_{k}")]);
    }
    if classes.len() > 2 {
        h.extend(classes.iter().map(|c| format!("p_{c}")));
    }
    csv_line(&h)
}

/// One CSV record as bytes (the csv crate's quoting).
fn csv_line<I: AsRef<[u8]>>(fields: impl IntoIterator<Item = I>) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(vec![]);
    w.write_record(fields).expect("in-memory write");
    w.into_inner().expect("in-memory write")
}

/// One image's row: `ranked` = (class index, probability), predicted class first.
fn row(format: Format, path: &str, classes: &[String], ranked: &[(usize, f64)], probs: &[f64]) -> Vec<u8> {
    match format {
        Format::Csv => {
            let mut row = vec![crate::fsutil::csv_cell(path).into_owned()];
            for &(c, p) in ranked {
                row.extend([crate::fsutil::csv_cell(&classes[c]).into_owned(), format!("{p:.6}")]);
            }
            if classes.len() > 2 {
                row.extend(probs.iter().map(|v| format!("{v:.6}")));
            }
            csv_line(&row)
        }
        Format::Jsonl => {
            let top: Vec<_> =
                ranked.iter().map(|&(c, p)| serde_json::json!({"class": classes[c], "probability": p})).collect();
            let all: serde_json::Map<String, serde_json::Value> =
                classes.iter().zip(probs).map(|(c, p)| (c.clone(), serde_json::json!(p))).collect();
            let v = serde_json::json!({
                "path": path, "class": classes[ranked[0].0], "probability": ranked[0].1, "top": top, "probs": all,
            });
            format!("{v}\n").into_bytes()
        }
    }
}

/// The predicted class first, then the next most probable ones: `k` (class, probability) pairs.
/// Binary: the positive class (1) when p₁ ≥ `threshold`, else class 0.
pub fn rank(probs: &[f64], k: usize, threshold: f64) -> Vec<(usize, f64)> {
    if probs.len() == 2 {
        let c = (probs[1] >= threshold) as usize;
        return [(c, probs[c]), (1 - c, probs[1 - c])][..k.min(2)].to_vec();
    }
    let mut order: Vec<usize> = (0..probs.len()).collect();
    // Stable: ties keep the lower class index first (as `metrics::predicted_class`).
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    order.into_iter().take(k).map(|c| (c, probs[c])).collect()
}

/// What a scoring journal depends on: a journal made for other inputs or settings is discarded.
#[derive(serde::Serialize)]
struct ScoreManifest<'a> {
    model_sha256: &'a str,
    format: Format,
    threshold: Option<f64>,
    top_k: usize,
    shard: Option<Shard>,
    checkpoint_every: usize,
    /// sha256 over the file list (paths, sizes and modification times, in order).
    files_sha256: String,
}

/// What one journal chunk of scores holds besides its rows.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct ChunkInfo {
    scored: usize,
    per_class: std::collections::BTreeMap<String, usize>,
    unreadable: Vec<Unreadable>,
}

fn summary_path(out: &Path) -> PathBuf {
    crate::fsutil::with_suffix(out, ".summary.json")
}

/// Score `files` with the deployable `model` into `out` (atomically) and the summary into
/// `<out>.summary.json`. `unreadable` are files the listing already failed on (reported too).
/// With `o.shard`, only that part of the files is scored. Progress is journalled in
/// `<out>.partial/` every `o.checkpoint_every` images: a rerun after a kill scores only the
/// missing images and writes the same bytes as an uninterrupted run. `out` is locked meanwhile.
pub fn score(
    model_path: &Path,
    mut files: Vec<PathBuf>,
    mut unreadable: Vec<Unreadable>,
    out: &Path,
    o: &ScoreOptions,
    opts: &SessionOptions,
) -> Result<ScoreSummary> {
    let model_bytes = std::fs::read(model_path).at(model_path)?;
    let model_sha256 = crate::fsutil::sha256_bytes(&model_bytes);
    // A model with a sidecar (runs/<run>/model.onnx.json, a fine-tune's model.onnx.json) must be
    // the model its sidecar describes.
    let side = crate::fsutil::sidecar_path(model_path);
    if let Ok(v) = crate::fsutil::read_json::<serde_json::Value>(&side) {
        if let Some(recorded) = v.get("model_sha256").and_then(|s| s.as_str()) {
            if recorded != model_sha256 {
                return Err(Error::Checksum { path: model_path.into(), expected: recorded.into(), got: model_sha256 });
            }
        }
    }
    let m = onnx::decode_model(&model_bytes, model_path)?;
    let meta = meta(&m, model_path)?;
    o.validate(meta.classes.len())?;
    // Shards own files by real path, so shards given differently spelled inputs agree.
    let reals: Vec<PathBuf> = files.iter().map(|p| crate::fsutil::real_path(p)).collect();
    let out_real = crate::fsutil::real_path(out);
    if let Some(i) = reals.iter().position(|r| *r == out_real) {
        return Err(Error::BadData {
            path: out.into(),
            reason: format!("the output is an input image ({}); outputs never overwrite inputs", files[i].display()),
        });
    }
    for written in [out, &summary_path(out)] {
        crate::fsutil::check_output_apart(written, &[model_path])?;
    }
    // The inputs' fingerprint: the real paths of all of them (scored or not), in any order — a
    // lane-wise sum of their sha256s, so it needs no sorted copy of a long file list.
    let mut lanes = [0u64; 4];
    let unread_reals: Vec<PathBuf> =
        unreadable.iter().map(|(p, _)| crate::fsutil::real_path(&crate::fsutil::text_path(p))).collect();
    for r in reals.iter().chain(&unread_reals) {
        let h = sha2::Sha256::digest(r.as_os_str().as_encoded_bytes());
        for (k, lane) in lanes.iter_mut().enumerate() {
            *lane = lane.wrapping_add(u64::from_be_bytes(h[k * 8..k * 8 + 8].try_into().expect("8 bytes")));
        }
    }
    let inputs_sha256 = crate::fsutil::sha256_bytes(&lanes.iter().flat_map(|l| l.to_be_bytes()).collect::<Vec<u8>>());
    let _lock = crate::lock::file(out)?;
    let mut keep = reals.iter().map(|r| o.shard.is_none_or(|s| s.owns(r)));
    files.retain(|_| keep.next().expect("one per file"));
    drop(reals);
    let owned = files;
    let mut keep = unread_reals.iter().map(|r| o.shard.is_none_or(|s| s.owns(r)));
    unreadable.retain(|_| keep.next().expect("one per unreadable file"));
    let mut list_hash = sha2::Sha256::new();
    for p in &owned {
        // Path, size and modification time: a file changed while the run was down voids the journal.
        let stamp = std::fs::metadata(p)
            .map(|m| format!("{}:{:?}", m.len(), m.modified().ok()))
            .unwrap_or_else(|e| e.to_string());
        list_hash.update(p.as_os_str().as_encoded_bytes());
        list_hash.update([0u8]);
        list_hash.update(stamp.as_bytes());
        list_hash.update([0u8]);
    }

    let journal = crate::journal::Journal::open(
        &crate::journal::dir_of(out),
        &ScoreManifest {
            model_sha256: &model_sha256,
            format: o.format,
            threshold: o.threshold,
            top_k: o.top_k,
            shard: o.shard,
            checkpoint_every: o.checkpoint_every,
            files_sha256: hex::encode(list_hash.finalize()),
        },
    )?;
    let every = o.checkpoint_every;
    let chunk_name = |k: usize| format!("{k:08}");
    let n_chunks = owned.len().div_ceil(every);
    let done: std::collections::HashSet<usize> =
        (0..n_chunks).filter(|&k| journal.get::<ChunkInfo>(&chunk_name(k)).is_some()).collect();
    // What is left to score (all of it, without a copy, on a fresh run).
    let todo_idx: Vec<usize> = (0..owned.len()).filter(|i| !done.contains(&(i / every))).collect();
    let todo: std::borrow::Cow<[PathBuf]> = if done.is_empty() {
        std::borrow::Cow::Borrowed(&owned)
    } else {
        std::borrow::Cow::Owned(todo_idx.iter().map(|&i| owned[i].clone()).collect())
    };
    if !done.is_empty() {
        tracing::info!(
            "{}: resuming, {} of {} images already scored",
            out.display(),
            owned.len() - todo.len(),
            owned.len()
        );
    }
    if !todo.is_empty() {
        let need = crate::memory::per_image_bytes_at(&m, model_path, INPUT, cut::Layout::Nhwc, 3, meta.size);
        let batch = crate::memory::fit_batch(o.batch, need, meta.size, model_path)?;
        let mut s = runtime::open(&model_bytes, model_path, opts)?.session;
        let spec = LoadSpec {
            size: (meta.size, meta.size),
            interpolation: meta.interpolation,
            preprocess: Preprocess::of(PreprocessKind::Raw),
            max_pixels: o.max_pixels,
            view: View::Identity,
        };
        let threshold = o.threshold.unwrap_or(0.5);
        let pb = crate::cli::progress(todo.len() as u64, "img");
        pb.set_message("scoring");
        let mut rows: Vec<u8> = vec![];
        let mut info = ChunkInfo::default();
        run_images(&mut s, INPUT, OUTPUT, &todo, &spec, batch, |j, r| {
            pb.inc(1);
            let i = todo_idx[j];
            let path = crate::fsutil::path_text(&owned[i]);
            match r {
                Ok(y) => {
                    if y.len() != crate::metrics::output_width(meta.classes.len()) {
                        let y = y.to_owned().insert_axis(ndarray::Axis(0));
                        crate::metrics::check_width(&y, meta.classes.len(), model_path)?;
                    }
                    let y = y.into_dimensionality().map_err(|e| Error::Other(format!("model output: {e}")))?;
                    let p = crate::metrics::row_probs(y);
                    let ranked = rank(&p, o.top_k, threshold);
                    rows.extend(row(o.format, &path, &meta.classes, &ranked, &p));
                    *info.per_class.entry(meta.classes[ranked[0].0].clone()).or_default() += 1;
                    info.scored += 1;
                }
                Err(e) => {
                    tracing::warn!("{e} (skipped)");
                    info.unreadable.push((path, e.to_string()));
                }
            }
            if (i + 1).is_multiple_of(every) || i + 1 == owned.len() {
                journal.put(&chunk_name(i / every), &std::mem::take(&mut rows), std::mem::take(&mut info))?;
            }
            Ok(())
        })?;
        pb.finish_and_clear();
    }
    // Assemble: header + every chunk's rows, in order.
    let mut summary = ScoreSummary {
        unreadable,
        model_sha256,
        format: o.format,
        threshold: o.threshold,
        top_k: o.top_k,
        shard: o.shard,
        inputs_sha256: Some(inputs_sha256),
        ..Default::default()
    };
    crate::fsutil::write_atomic(out, |w| {
        w.write_all(&header(o.format, &meta.classes, o.top_k))?;
        for k in 0..n_chunks {
            let (rows, info) = journal.get::<ChunkInfo>(&chunk_name(k)).ok_or_else(|| {
                std::io::Error::other(format!("journal chunk {k} vanished from {}", journal.dir.display()))
            })?;
            w.write_all(&rows)?;
            summary.add(info.scored, info.per_class, info.unreadable);
        }
        Ok(())
    })?;
    summary.sort_unreadable();
    crate::fsutil::write_json(&summary_path(out), &summary)?;
    journal.finish()?;
    Ok(summary)
}
