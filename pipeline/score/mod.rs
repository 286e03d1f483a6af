//! Batch scoring: folder trees, globs or lists of images through a deployable model
//! ([`crate::runs`]), into one scores file; shards merged into what one run writes.

use crate::batch::{run_images, LoadSpec};
use crate::error::{Error, IoContext, Result};
use crate::imageio::{Preprocess, PreprocessKind, View};
use crate::onnx::{self, cut};
use crate::runtime::{self, SessionOptions};
use crate::shard::Shard;
use sha2::Digest;
use std::path::{Path, PathBuf};

mod merge;
mod predict;
pub use merge::merge;
pub use predict::{predict, Predicted, Prediction, PredictionFormat};

use crate::runs::{meta, ModelMeta, INPUT, OUTPUT};

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// path, class, probability [, class_2, probability_2, …] [, p_<class> …]
    #[default]
    Csv,
    /// One JSON object per line: path, class, probability, top (k × {class, probability}), probs.
    Jsonl,
}

impl crate::params::Choice for Format {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (Format::Csv, "csv", "path, class, probability [, class_2, probability_2, …] [, p_<class> …]"),
        (
            Format::Jsonl,
            "jsonl",
            "One JSON object per line: path, class, probability, top (k × {class, probability}), probs",
        ),
    ];
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

/// Score `files` with the deployable `model` into `out` (atomically; a stream as it goes) and
/// the summary into `<out>.summary.json` (none beside a stream). `unreadable` are files the listing already failed on (reported too).
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
    sink: &dyn crate::progress::Sink,
) -> Result<ScoreSummary> {
    let model = ScoredModel::open(model_path)?;
    o.validate(model.meta.classes.len())?;
    // Shards own files by real path, so shards given differently spelled inputs agree.
    let reals: Vec<PathBuf> = files.iter().map(|p| crate::fsutil::real_path(p)).collect();
    check_output(out, &files, &reals, model_path)?;
    let unread_reals: Vec<PathBuf> =
        unreadable.iter().map(|(p, _)| crate::fsutil::real_path(&crate::fsutil::text_path(p))).collect();
    let inputs_sha256 = inputs_fingerprint(reals.iter().chain(&unread_reals));
    // A stream (`-`, a FIFO, a device) gets nothing beside it: no lock, no summary file, and its
    // journal lives in a temporary folder (a killed run starts over).
    let stream = crate::output::target(out)?.is_stream();
    let _lock = if stream { None } else { Some(crate::lock::file(out)?) };
    let tmp_journal = if stream { Some(tempfile::tempdir().at(Path::new("$TMPDIR"))?) } else { None };
    let journal_dir = tmp_journal.as_ref().map_or_else(|| crate::journal::dir_of(out), |t| t.path().join("journal"));
    let mut keep = reals.iter().map(|r| o.shard.is_none_or(|s| s.owns(r)));
    files.retain(|_| keep.next().expect("one per file"));
    drop(reals);
    let mut keep = unread_reals.iter().map(|r| o.shard.is_none_or(|s| s.owns(r)));
    unreadable.retain(|_| keep.next().expect("one per unreadable file"));
    let journal = crate::journal::Journal::open(
        &journal_dir,
        &ScoreManifest {
            model_sha256: &model.sha256,
            format: o.format,
            threshold: o.threshold,
            top_k: o.top_k,
            shard: o.shard,
            checkpoint_every: o.checkpoint_every,
            files_sha256: files_stamp(&files),
        },
    )?;
    let run = Scoring { model: &model, o, owned: &files, journal: &journal };
    run.score_missing(out, opts, sink)?;
    let mut summary = ScoreSummary {
        unreadable,
        model_sha256: model.sha256.clone(),
        format: o.format,
        threshold: o.threshold,
        top_k: o.top_k,
        shard: o.shard,
        inputs_sha256: Some(inputs_sha256),
        ..Default::default()
    };
    run.assemble(out, &mut summary)?;
    summary.sort_unreadable();
    if !stream {
        crate::fsutil::write_json(&summary_path(out), &summary)?;
    }
    journal.finish()?;
    Ok(summary)
}

/// The deployable model scored, checked against its sidecar when it has one.
struct ScoredModel<'p> {
    path: &'p Path,
    bytes: Vec<u8>,
    sha256: String,
    proto: onnx::proto::ModelProto,
    meta: ModelMeta,
}

impl<'p> ScoredModel<'p> {
    /// A model with a sidecar (runs/<run>/model.onnx.json, a fine-tune's model.onnx.json) must be
    /// the model its sidecar describes, and current ([`check_current`]).
    fn open(path: &'p Path) -> Result<ScoredModel<'p>> {
        let bytes = std::fs::read(path).at(path)?;
        let sha256 = crate::fsutil::sha256_bytes(&bytes);
        crate::runs::check_current_as(path, Some(&sha256))?;
        let proto = onnx::decode_model(&bytes, path)?;
        let meta = meta(&proto, path)?;
        Ok(ScoredModel { path, bytes, sha256, proto, meta })
    }

    /// Every file's class probabilities through the model, in order (`each(i, …)` for file i): one
    /// per class (a binary model's single output as [1 − p, p]), or why the file could not be
    /// read. The one inference loop behind scores files and [`predict`]'s lines.
    fn probabilities(
        &self,
        files: &[PathBuf],
        o: &ScoreOptions,
        opts: &SessionOptions,
        mut each: impl FnMut(usize, std::result::Result<Vec<f64>, &Error>) -> Result<()>,
    ) -> Result<()> {
        let (path, meta) = (self.path, &self.meta);
        let need = crate::memory::per_image_bytes_at(&self.proto, path, INPUT, cut::Layout::Nhwc, 3, meta.size);
        let batch = crate::memory::fit_batch(o.batch, need, meta.size, path)?;
        let mut s = runtime::open(&self.bytes, path, opts)?.session;
        let spec = LoadSpec {
            size: (meta.size, meta.size),
            interpolation: meta.interpolation,
            preprocess: Preprocess::of(PreprocessKind::Raw),
            max_pixels: o.max_pixels,
            view: View::Identity,
        };
        run_images(&mut s, INPUT, OUTPUT, files, &spec, batch, |i, r| match r {
            Ok(y) => {
                if y.len() != crate::metrics::output_width(meta.classes.len()) {
                    let y = y.to_owned().insert_axis(ndarray::Axis(0));
                    crate::metrics::check_width(&y, meta.classes.len(), path)?;
                }
                let y = y.into_dimensionality().map_err(|e| Error::Other(format!("model output: {e}")))?;
                each(i, Ok(crate::metrics::row_probs(y)))
            }
            Err(e) => each(i, Err(e)),
        })
    }
}

/// What is checked before any image is scored: neither the scores `out` nor their summary may
/// land on a list file, the model's sidecar or the run's head and records (the model itself and
/// the images are checked as they are read); with `explain`, its folder lies apart from every
/// input given (`inputs`, `lists`) and the model is one Grad-CAM can run on.
pub fn check_outputs(
    out: &Path,
    model: &Path,
    run_dir: &Path,
    (inputs, lists): (&[PathBuf], &[PathBuf]),
    explain: Option<&Path>,
) -> Result<()> {
    let head = run_dir.join(crate::runs::HEAD);
    let sidecar = crate::fsutil::sidecar_path;
    let record = run_dir.join(crate::runs::RECORD);
    let kept: Vec<PathBuf> =
        lists.iter().cloned().chain([sidecar(model), sidecar(&head), head.clone(), record]).collect();
    let kept: Vec<&Path> = kept.iter().map(|p| p.as_path()).collect();
    crate::fsutil::check_output_apart(out, &kept)?;
    crate::fsutil::check_output_apart(&crate::fsutil::with_suffix(out, ".summary.json"), &kept)?;
    if let Some(dir) = explain {
        let given: Vec<&Path> = inputs.iter().map(|p| p.as_path()).chain(kept.iter().copied()).collect();
        crate::fsutil::check_output_apart(dir, &given)?;
        crate::runs::check_differentiable(&onnx::load_model(model)?, model, "Grad-CAM (--explain)")?;
    }
    Ok(())
}

/// Outputs never overwrite inputs: neither an image scored nor the model.
fn check_output(out: &Path, files: &[PathBuf], reals: &[PathBuf], model_path: &Path) -> Result<()> {
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
    Ok(())
}

/// The inputs' fingerprint: the real paths of all of them (scored or not), in any order — a
/// lane-wise sum of their sha256s, so it needs no sorted copy of a long file list.
fn inputs_fingerprint<'a>(reals: impl Iterator<Item = &'a PathBuf>) -> String {
    let mut lanes = [0u64; 4];
    for r in reals {
        let h = sha2::Sha256::digest(r.as_os_str().as_encoded_bytes());
        for (k, lane) in lanes.iter_mut().enumerate() {
            *lane = lane.wrapping_add(u64::from_be_bytes(h[k * 8..k * 8 + 8].try_into().expect("8 bytes")));
        }
    }
    crate::fsutil::sha256_bytes(&lanes.iter().flat_map(|l| l.to_be_bytes()).collect::<Vec<u8>>())
}

/// Path, size and modification time of every file scored: a file changed while the run was down
/// voids the journal.
fn files_stamp(files: &[PathBuf]) -> String {
    let mut h = sha2::Sha256::new();
    for p in files {
        let stamp = std::fs::metadata(p)
            .map(|m| format!("{}:{:?}", m.len(), m.modified().ok()))
            .unwrap_or_else(|e| e.to_string());
        h.update(p.as_os_str().as_encoded_bytes());
        h.update([0u8]);
        h.update(stamp.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

/// One scoring run over the files it owns, journalled in chunks of `checkpoint_every` files.
struct Scoring<'a> {
    model: &'a ScoredModel<'a>,
    o: &'a ScoreOptions,
    owned: &'a [PathBuf],
    journal: &'a crate::journal::Journal,
}

fn chunk_name(k: usize) -> String {
    format!("{k:08}")
}

impl Scoring<'_> {
    fn n_chunks(&self) -> usize {
        self.owned.len().div_ceil(self.o.checkpoint_every)
    }

    /// Score the files of every chunk the journal does not hold yet.
    fn score_missing(&self, out: &Path, opts: &SessionOptions, sink: &dyn crate::progress::Sink) -> Result<()> {
        let (every, owned) = (self.o.checkpoint_every, self.owned);
        let done: std::collections::HashSet<usize> =
            (0..self.n_chunks()).filter(|&k| self.journal.get::<ChunkInfo>(&chunk_name(k)).is_some()).collect();
        // What is left to score (all of it, without a copy, on a fresh run).
        let todo_idx: Vec<usize> = (0..owned.len()).filter(|i| !done.contains(&(i / every))).collect();
        let todo: std::borrow::Cow<[PathBuf]> = if done.is_empty() {
            std::borrow::Cow::Borrowed(owned)
        } else {
            std::borrow::Cow::Owned(todo_idx.iter().map(|&i| owned[i].clone()).collect())
        };
        if !done.is_empty() {
            let (n, left) = (owned.len(), todo.len());
            sink.note(&format!("{}: resuming, {} of {n} images already scored", out.display(), n - left));
        }
        if todo.is_empty() {
            return Ok(());
        }
        let pb = sink.meter(todo.len() as u64, "img", "scoring");
        let mut rows: Vec<u8> = vec![];
        let mut info = ChunkInfo::default();
        self.model.probabilities(&todo, self.o, opts, |j, r| {
            pb.inc(1);
            let i = todo_idx[j];
            let path = crate::fsutil::path_text(&owned[i]);
            match r {
                Ok(p) => self.add_row(&p, &path, &mut rows, &mut info),
                Err(e) => {
                    tracing::warn!("{e} (skipped)");
                    info.unreadable.push((path, e.to_string()));
                }
            }
            if (i + 1).is_multiple_of(every) || i + 1 == owned.len() {
                self.journal.put(&chunk_name(i / every), &std::mem::take(&mut rows), std::mem::take(&mut info))?;
            }
            Ok(())
        })
    }

    /// One scored image's probabilities: ranked, written as a row and counted.
    fn add_row(&self, p: &[f64], path: &str, rows: &mut Vec<u8>, info: &mut ChunkInfo) {
        let (classes, o) = (&self.model.meta.classes, self.o);
        let ranked = rank(p, o.top_k, o.threshold.unwrap_or(0.5));
        rows.extend(row(o.format, path, classes, &ranked, p));
        *info.per_class.entry(classes[ranked[0].0].clone()).or_default() += 1;
        info.scored += 1;
    }

    /// The output: header + every chunk's rows, in order; the chunks' counts into `summary`.
    fn assemble(&self, out: &Path, summary: &mut ScoreSummary) -> Result<()> {
        crate::fsutil::write_atomic(out, |w| {
            w.write_all(&header(self.o.format, &self.model.meta.classes, self.o.top_k))?;
            for k in 0..self.n_chunks() {
                let (rows, info) = self.journal.get::<ChunkInfo>(&chunk_name(k)).ok_or_else(|| {
                    std::io::Error::other(format!("journal chunk {k} vanished from {}", self.journal.dir.display()))
                })?;
                w.write_all(&rows)?;
                summary.add(info.scored, info.per_class, info.unreadable);
            }
            Ok(())
        })
    }
}
