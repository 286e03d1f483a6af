//! The extract stage: run a backbone over every split of a dataset into the feature cache
//! ([`crate::features`]). Reruns reuse every row whose image content, backbone and preprocessing
//! are unchanged; computed rows are journalled, so a killed run resumes with what is missing.

use crate::backbone::Backbone;
use crate::batch::{run_images, LoadSpec};
use crate::dataset;
use crate::error::{Error, IoContext, Result};
use crate::features::{self, dataset_real, npy_bytes, write_cache, CacheMeta, Features, FileRow, Skipped};
use crate::fsutil;
use crate::imageio::{Interpolation, Preprocess, View};
use crate::journal::Journal;
use crate::progress::Sink;
use crate::runtime::{self, SessionOptions};
use crate::shard::Shard;
use ndarray::{ArrayD, ArrayViewD, Axis};
use ndarray_npy::ReadNpyExt;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Extraction settings.
#[derive(Clone, Debug)]
pub struct ExtractConfig {
    pub dataset: PathBuf,
    pub out: PathBuf,
    pub size: u32,
    pub interpolation: Interpolation,
    pub batch: usize,
    pub session: SessionOptions,
    pub max_pixels: u64,
    pub splits: Vec<String>,
    /// Extra views cached besides the plain images (`<split>.<view>.npy`).
    pub views: Vec<View>,
    /// Extract only this part of every split (by path hash); [`features::merge`] combines the parts.
    pub shard: Option<Shard>,
    /// Journal computed features every this many images (a killed run resumes from there).
    pub checkpoint_every: usize,
}

impl ExtractConfig {
    /// Does this run's shard own `path` (a file of the dataset)? Decided by the path relative to
    /// the dataset folder, so shards given the folder spelled differently still split it exactly.
    fn owns(&self, path: &Path) -> bool {
        self.shard.is_none_or(|s| s.owns(path.strip_prefix(&self.dataset).unwrap_or(path)))
    }

    /// Numbers in range, split names plain (they become file names in `out`).
    pub fn validate(&self) -> Result<()> {
        let bad =
            |name, value: usize| Err(Error::Param { name, value: value.to_string(), reason: "must be ≥ 1".into() });
        if self.checkpoint_every == 0 {
            return bad("checkpoint-every", 0);
        }
        if self.batch == 0 {
            return bad("batch", 0);
        }
        if self.max_pixels == 0 {
            return bad("max-pixels", 0);
        }
        crate::onnx::cut::check_size(self.size)?;
        for s in &self.splits {
            fsutil::check_name("split", s)?;
        }
        Ok(())
    }
}

/// What one split's extraction did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SplitReport {
    pub split: String,
    pub view: View,
    pub n: usize,
    pub reused: usize,
    pub computed: usize,
    pub skipped: usize,
    pub up_to_date: bool,
}

/// Extract every configured split; returns one report per split. The output folder is locked
/// meanwhile; computed features are journalled so a killed run resumes with what is missing.
pub fn extract(cfg: &ExtractConfig, bb: &Backbone, sink: &dyn Sink) -> Result<Vec<SplitReport>> {
    cfg.validate()?;
    fsutil::check_output_apart(&cfg.out, &[&cfg.dataset])?;
    let classes = dataset::training_classes(&cfg.dataset)?;
    let _lock = crate::lock::dir(&cfg.out)?;
    let mut runner = None;
    let mut reports = vec![];
    for split in &cfg.splits {
        if !cfg.dataset.join(split).is_dir() {
            tracing::warn!("{}: no such split folder, skipped", cfg.dataset.join(split).display());
            continue;
        }
        let (rows, unread) = split_rows(cfg, split, &classes)?;
        let mut views = vec![View::Identity];
        for v in &cfg.views {
            if !views.contains(v) {
                views.push(*v);
            }
        }
        for view in views {
            let job = SplitJob { cfg, bb, split, view, rows: &rows, unread: &unread, classes: &classes, sink };
            reports.push(job.run(&mut runner)?);
        }
    }
    Ok(reports)
}

/// The files of one split with their labels and content hashes (read once for all its views),
/// and the files that could not be read at all.
fn split_rows(cfg: &ExtractConfig, split: &str, classes: &[String]) -> Result<(Vec<FileRow>, Vec<Skipped>)> {
    let (_, items, report) = dataset::list_split(&cfg.dataset, split)?;
    for p in &report.skipped_non_images {
        tracing::warn!("{}: skipped (not an image file name)", p.display());
    }
    let mut unread: Vec<Skipped> = report
        .unreadable
        .iter()
        .cloned()
        .chain(report.skipped_non_images.iter().map(|p| {
            let t = fsutil::path_text(p);
            (t.clone(), format!("{t}: not an image file name"))
        }))
        .filter(|(p, _)| cfg.owns(&fsutil::text_path(p)))
        .map(|(path, reason)| Skipped { path, reason })
        .collect();
    let labels = dataset::labels(&items, classes, split)?;
    let mut rows = vec![];
    for (it, label) in items.iter().zip(labels).filter(|(it, _)| cfg.owns(&it.path)) {
        match std::fs::read(&it.path) {
            Ok(bytes) => rows.push(FileRow {
                index: 0,
                path: fsutil::path_text(&it.path),
                class: it.class.clone(),
                label,
                sha256: fsutil::sha256_bytes(&bytes),
            }),
            Err(e) => {
                let e = Error::Io { path: it.path.clone(), err: e };
                tracing::warn!("{e} (skipped)");
                unread.push(Skipped { path: fsutil::path_text(&it.path), reason: e.to_string() });
            }
        }
    }
    Ok((rows, unread))
}

/// What a split's extraction journal depends on.
#[derive(Serialize)]
struct JournalManifest<'a> {
    backbone_sha256: &'a str,
    size: u32,
    interpolation: Interpolation,
    view: View,
    preprocess: &'a Preprocess,
}

/// The backbone's session and the batch it runs, made on first use (a split with nothing to
/// compute needs neither): the batch is `--batch`, or fewer images when their estimated memory
/// would not fit ([`crate::memory`]).
struct Runner {
    open: runtime::OpenSession,
    batch: usize,
}

fn opened<'s>(runner: &'s mut Option<Runner>, bb: &Backbone, cfg: &ExtractConfig) -> Result<&'s mut Runner> {
    if runner.is_none() {
        let model = crate::onnx::decode_model(&bb.bytes, &bb.path)?;
        let need = crate::memory::per_image_bytes(&model, &bb.path, cfg.size);
        let batch = crate::memory::fit_batch(cfg.batch, need, cfg.size, &bb.path)?;
        *runner = Some(Runner { open: runtime::open(&bb.bytes, &bb.path, &cfg.session)?, batch });
    }
    Ok(runner.as_mut().expect("opened above"))
}

/// One view of one split: reuse the cache → resume the journal → compute the rest → assemble.
struct SplitJob<'a> {
    cfg: &'a ExtractConfig,
    bb: &'a Backbone,
    split: &'a str,
    view: View,
    rows: &'a [FileRow],
    unread: &'a [Skipped],
    classes: &'a [String],
    sink: &'a dyn Sink,
}

/// Rows computed in this run, and the files that failed.
struct Computed {
    rows: HashMap<usize, ArrayD<f32>>,
    skipped: Vec<Skipped>,
    device: runtime::Device,
}

impl SplitJob<'_> {
    fn run(&self, runner: &mut Option<Runner>) -> Result<SplitReport> {
        let npy = features::view_npy_path(&self.cfg.out, self.split, self.view);
        let previous = self.reusable_cache();
        let mut cached: HashMap<String, ArrayViewD<'_, f32>> = HashMap::new();
        if let Some(p) = &previous {
            for (i, f) in p.files.iter().enumerate() {
                cached.insert(f.sha256.clone(), p.x.index_axis(Axis(0), i));
            }
            if let Some(report) = self.up_to_date(p, &npy)? {
                return Ok(report);
            }
        }
        let journal = Journal::open(
            &crate::journal::dir_of(&npy),
            &JournalManifest {
                backbone_sha256: &self.bb.info.onnx_sha256,
                size: self.cfg.size,
                interpolation: self.cfg.interpolation,
                view: self.view,
                preprocess: &self.bb.info.preprocess,
            },
        )?;
        let (journalled, next_chunk) = read_journal(&journal)?;
        for (shas, a) in &journalled {
            for (i, sha) in shas.iter().enumerate() {
                cached.insert(sha.clone(), a.index_axis(Axis(0), i));
            }
        }
        let todo: Vec<usize> = (0..self.rows.len()).filter(|&i| !cached.contains_key(&self.rows[i].sha256)).collect();
        if !journalled.is_empty() {
            let (split, n) = (self.split, self.rows.len());
            tracing::info!("{split}: resuming, {} of {n} images already journalled", n - todo.len());
        }
        let device = previous.as_ref().map(|p| p.info.device).unwrap_or(runtime::Device::Cpu);
        let computed = self.compute(runner, (&journal, next_chunk), &todo, device)?;
        let report = self.assemble(runner, &cached, computed)?;
        journal.finish()?;
        Ok(report)
    }

    /// What an earlier run left that is still valid: rows keyed by content hash.
    fn reusable_cache(&self) -> Option<Features> {
        let (cfg, info) = (self.cfg, &self.bb.info);
        features::load_view(&cfg.out, self.split, self.view).ok().filter(|f| {
            f.info.backbone_sha256 == info.onnx_sha256
                && f.info.size == cfg.size
                && f.info.interpolation == cfg.interpolation
                && f.info.view == self.view
                && f.info.preprocess == info.preprocess
                && f.info.classes == self.classes
                && f.info.shard == cfg.shard
        })
    }

    /// `Some` when the earlier cache holds the same files with the same contents, and its bad
    /// files are still the same bad files: nothing to do.
    fn up_to_date(&self, p: &Features, npy: &Path) -> Result<Option<SplitReport>> {
        let prev_skipped: std::collections::HashSet<&str> = p.info.skipped.iter().map(|s| s.path.as_str()).collect();
        let live: Vec<&FileRow> = self.rows.iter().filter(|r| !prev_skipped.contains(r.path.as_str())).collect();
        let same_rows = p.files.len() == live.len()
            && p.files.iter().zip(&live).all(|(a, b)| a.path == b.path && a.sha256 == b.sha256 && a.label == b.label);
        let same_skips = prev_skipped.len() == self.rows.len() - live.len() + self.unread.len()
            && self.unread.iter().all(|u| prev_skipped.contains(u.path.as_str()));
        if !(same_rows && same_skips) {
            return Ok(None);
        }
        tracing::info!("{}: {} up to date ({} images)", self.split, npy.display(), live.len());
        // A run killed after writing the cache but before dropping its journal left one.
        let stale = crate::journal::dir_of(npy);
        if stale.exists() {
            std::fs::remove_dir_all(&stale).at(&stale)?;
        }
        Ok(Some(SplitReport {
            split: self.split.into(),
            view: self.view,
            n: live.len(),
            reused: live.len(),
            skipped: prev_skipped.len(),
            up_to_date: true,
            ..Default::default()
        }))
    }

    /// Run the backbone over the rows in `todo`, journalling every `checkpoint_every` rows as
    /// chunks numbered from `next_chunk`.
    fn compute(
        &self,
        runner: &mut Option<Runner>,
        (journal, mut next_chunk): (&Journal, usize),
        todo: &[usize],
        device: runtime::Device,
    ) -> Result<Computed> {
        let mut out = Computed { rows: HashMap::new(), skipped: self.unread.to_vec(), device };
        if todo.is_empty() {
            return Ok(out);
        }
        let (cfg, rows) = (self.cfg, self.rows);
        let runner = opened(runner, self.bb, cfg)?;
        let (s, batch) = (&mut runner.open, runner.batch);
        out.device = s.device;
        let spec = LoadSpec {
            size: (cfg.size, cfg.size),
            interpolation: cfg.interpolation,
            preprocess: self.bb.info.preprocess.clone(),
            max_pixels: cfg.max_pixels,
            view: self.view,
        };
        let message = match self.view {
            View::Identity => format!("{} ({})", self.split, self.bb.name),
            v => format!("{} {} ({})", self.split, v.name(), self.bb.name),
        };
        let pb = self.sink.meter(todo.len() as u64, "img", &message);
        let todo_paths: Vec<PathBuf> = todo.iter().map(|&i| fsutil::text_path(&rows[i].path)).collect();
        let mut pending: Vec<usize> = vec![];
        run_images(
            &mut s.session,
            crate::onnx::cut::IMAGE,
            crate::onnx::cut::FEATURES,
            &todo_paths,
            &spec,
            batch,
            |i, r| {
                match r {
                    Ok(y) => {
                        out.rows.insert(todo[i], y.to_owned());
                        pending.push(todo[i]);
                    }
                    Err(e) => {
                        tracing::warn!("{e} (skipped)");
                        out.skipped.push(Skipped { path: rows[todo[i]].path.clone(), reason: e.to_string() });
                    }
                }
                pb.inc(1);
                if pending.len() >= cfg.checkpoint_every || (i + 1 == todo.len() && !pending.is_empty()) {
                    let views: Vec<_> = pending.iter().map(|k| out.rows[k].view()).collect();
                    let a = ndarray::stack(Axis(0), &views).map_err(|e| Error::Other(e.to_string()))?;
                    let shas: Vec<String> = pending.iter().map(|&k| rows[k].sha256.clone()).collect();
                    journal.put(&format!("{next_chunk:08}"), &npy_bytes(&a)?, shas)?;
                    next_chunk += 1;
                    pending.clear();
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// The split's rows in file order (computed or reused), written as its cache.
    fn assemble(
        &self,
        runner: &mut Option<Runner>,
        cached: &HashMap<String, ArrayViewD<'_, f32>>,
        computed: Computed,
    ) -> Result<SplitReport> {
        let cfg = self.cfg;
        let skipped_paths: std::collections::HashSet<&str> = computed.skipped.iter().map(|s| s.path.as_str()).collect();
        let mut keep = vec![];
        let mut views = vec![];
        for (i, r) in self.rows.iter().enumerate() {
            if skipped_paths.contains(r.path.as_str()) {
                continue;
            }
            views.push(computed.rows.get(&i).map(|a| a.view()).unwrap_or_else(|| cached[&r.sha256].clone()));
            keep.push(r.clone());
        }
        let x = if views.is_empty() {
            self.empty_part(runner)?
        } else {
            ndarray::stack(Axis(0), &views).map_err(|e| Error::Other(e.to_string()))?
        };
        let n_computed = computed.rows.len();
        let meta = CacheMeta {
            split: self.split,
            view: self.view,
            backbone: &self.bb.name,
            backbone_sha256: &self.bb.info.onnx_sha256,
            size: cfg.size,
            interpolation: cfg.interpolation,
            preprocess: &self.bb.info.preprocess,
            classes: self.classes,
            device: computed.device,
            shard: cfg.shard,
            dataset: Some(fsutil::path_text(&cfg.dataset)),
            dataset_real: dataset_real(&cfg.dataset),
        };
        let n = write_cache(&cfg.out, &meta, x.view(), keep, computed.skipped)?;
        Ok(SplitReport {
            split: self.split.into(),
            view: self.view,
            n,
            reused: n - n_computed.min(n),
            computed: n_computed,
            skipped: self.rows.len() + self.unread.len() - n,
            up_to_date: false,
        })
    }

    /// A shard may own no readable image of a split: an empty part, shaped as the others (the
    /// shape measured by one run of the backbone). Without shards that is an error.
    fn empty_part(&self, runner: &mut Option<Runner>) -> Result<ArrayD<f32>> {
        let cfg = self.cfg;
        if cfg.shard.is_none() {
            return Err(Error::BadData { path: cfg.dataset.join(self.split), reason: "no readable images".into() });
        }
        let s = &mut opened(runner, self.bb, cfg)?.open;
        let probe = ndarray::Array4::<f32>::zeros((1, cfg.size as usize, cfg.size as usize, 3));
        let y = runtime::run_f32(
            &mut s.session,
            vec![(crate::onnx::cut::IMAGE, probe.view().into_dyn())],
            &[crate::onnx::cut::FEATURES],
        )?
        .remove(0);
        let mut shape = y.shape().to_vec();
        shape[0] = 0;
        Ok(ArrayD::zeros(ndarray::IxDyn(&shape)))
    }
}

/// A journalled chunk: the content hashes of its rows and the rows' features.
type Chunk = (Vec<String>, ArrayD<f32>);

/// The chunks a killed run journalled (a chunk that does not parse is recomputed), and the number
/// the next chunk written takes.
fn read_journal(journal: &Journal) -> Result<(Vec<Chunk>, usize)> {
    let mut journalled = vec![];
    let names = journal.names()?;
    for name in &names {
        if let Some((bytes, shas)) = journal.get::<Vec<String>>(name) {
            match ArrayD::<f32>::read_npy(&bytes[..]) {
                Ok(a) if a.shape().first() == Some(&shas.len()) => journalled.push((shas, a)),
                _ => tracing::warn!("{}: journal chunk {name} does not parse; recomputing it", journal.dir.display()),
            }
        }
    }
    Ok((journalled, names.len()))
}
