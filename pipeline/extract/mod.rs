//! The extract stage: run a backbone over every split of a dataset into the feature cache
//! ([`crate::features`]). Reruns reuse every row whose image content, backbone and preprocessing
//! are unchanged; computed rows are journalled, so a killed run resumes with what is missing.

use crate::backbone::Backbone;
use crate::batch::{run_images, LoadSpec};
use crate::dataset;
use crate::error::{Error, IoContext, Result};
use crate::features::{
    self, dataset_real, npy_bytes, sha256_raw, write_cache, CacheMeta, CacheRows, CompactRow, Skipped,
};
use crate::fsutil;
use crate::imageio::{Interpolation, Preprocess, View};
use crate::journal::Journal;
use crate::onnx::cut::{FEATURES, IMAGE};
use crate::progress::Sink;
use crate::runtime::{self, SessionOptions};
use crate::shard::Shard;
use ndarray::{ArrayD, Axis};
use serde::Serialize;
use sources::{read_journal, Sources};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod sources;

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
    bb.check_input_size(cfg.size)?;
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
fn split_rows(cfg: &ExtractConfig, split: &str, classes: &[String]) -> Result<(Vec<CompactRow>, Vec<Skipped>)> {
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
    // Items are consumed as they become rows: a split of 100,000 files is never held twice.
    for (it, label) in items.into_iter().zip(labels).filter(|(it, _)| cfg.owns(&it.path)) {
        match std::fs::read(&it.path) {
            Ok(bytes) => {
                use sha2::Digest;
                let path = fsutil::path_text(&it.path).into_boxed_str();
                rows.push(CompactRow { path, label: label as u32, sha256: sha2::Sha256::digest(&bytes).into() })
            }
            Err(e) => {
                let e = Error::Io { path: it.path.clone(), err: e };
                tracing::warn!("{e} (skipped)");
                unread.push(Skipped { path: fsutil::path_text(&it.path), reason: e.to_string() });
            }
        }
    }
    rows.shrink_to_fit();
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
    #[serde(skip_serializing_if = "Option::is_none")]
    precision: Option<runtime::Precision>,
}

/// Rows computed and not yet journalled.
struct Pending {
    rows: Vec<(usize, ArrayD<f32>)>,
    next_chunk: usize,
}

impl Pending {
    /// Journal the pending rows as the next chunk; returns how many.
    fn flush(&mut self, sources: &mut Sources<'_>, rows: &[CompactRow]) -> Result<usize> {
        if self.rows.is_empty() {
            return Ok(0);
        }
        let views: Vec<_> = self.rows.iter().map(|(_, y)| y.view()).collect();
        let a = ndarray::stack(Axis(0), &views).map_err(|e| Error::Other(e.to_string()))?;
        let shas: Vec<String> = self.rows.iter().map(|&(k, _)| hex::encode(rows[k].sha256)).collect();
        let name = format!("{:08}", self.next_chunk);
        sources.journal.put(&name, &npy_bytes(&a)?, &shas)?;
        sources.add_chunk(name, &shas);
        self.next_chunk += 1;
        let n = self.rows.len();
        self.rows.clear();
        Ok(n)
    }
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
        let open = runtime::open(&bb.bytes, &bb.path, &cfg.session)?;
        bb.warn_if_int8_overflows(open.device);
        *runner = Some(Runner { open, batch });
    }
    Ok(runner.as_mut().expect("opened above"))
}

/// One view of one split: reuse the cache → resume the journal → compute the rest → assemble.
struct SplitJob<'a> {
    cfg: &'a ExtractConfig,
    bb: &'a Backbone,
    split: &'a str,
    view: View,
    rows: &'a [CompactRow],
    unread: &'a [Skipped],
    classes: &'a [String],
    sink: &'a dyn Sink,
}

/// What this run computed (every row of it journalled), and the files that failed.
struct Computed {
    n: usize,
    skipped: Vec<Skipped>,
    device: runtime::Device,
}

impl SplitJob<'_> {
    fn run(&self, runner: &mut Option<Runner>) -> Result<SplitReport> {
        let npy = features::view_npy_path(&self.cfg.out, self.split, self.view);
        let previous = self.reusable_cache();
        if let Some(p) = &previous {
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
                precision: self.cfg.session.precision_used().filter(|p| *p != runtime::Precision::F32),
            },
        )?;
        let mut sources = Sources::new(self.rows, &journal);
        let device = previous.as_ref().map(|p| p.info.device).unwrap_or(runtime::Device::Cpu);
        if let Some(p) = previous {
            let shas = p.files.iter().map(|f| sha256_raw(&f.sha256).unwrap_or_default());
            sources.add_previous(shas, p.rows);
        }
        let next_chunk = read_journal(&mut sources)?;
        // One computation per distinct content: copies of a file reuse its row.
        let todo: Vec<usize> = (0..self.rows.len())
            .filter(|&k| sources.is_first(k, &self.rows[k].sha256) && !sources.has(&self.rows[k].sha256))
            .collect();
        if next_chunk > 0 {
            let (split, n) = (self.split, self.rows.len());
            self.sink
                .note(&format!("{split}: resuming, {} of {n} images already journalled or cached", n - todo.len()));
        }
        let computed = self.compute(runner, (&mut sources, next_chunk), &todo, device)?;
        let report = self.assemble(runner, &mut sources, computed)?;
        drop(sources);
        journal.finish()?;
        Ok(report)
    }

    /// What an earlier run left that is still valid: rows keyed by content hash.
    fn reusable_cache(&self) -> Option<CacheRows> {
        let (cfg, info) = (self.cfg, &self.bb.info);
        match features::recover_pending(&cfg.out, self.split, self.view) {
            Ok(true) => {
                let npy = features::view_npy_path(&cfg.out, self.split, self.view);
                self.sink.note(&format!(
                    "{}: complete when the last run stopped; its sidecar is now in place",
                    npy.display()
                ))
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("{e}"),
        }
        features::open_view(&cfg.out, self.split, self.view).ok().filter(|f| {
            f.info.backbone_sha256 == info.onnx_sha256
                && f.info.size == cfg.size
                && f.info.interpolation == cfg.interpolation
                && f.info.view == self.view
                && f.info.preprocess == info.preprocess
                && f.info.classes == self.classes
                && f.info.shard == cfg.shard
                && runtime::same_precision(f.info.precision, cfg.session.precision_used())
        })
    }

    /// `Some` when the earlier cache holds the same files with the same contents, and its bad
    /// files are still the same bad files: nothing to do.
    fn up_to_date(&self, p: &CacheRows, npy: &Path) -> Result<Option<SplitReport>> {
        let prev_skipped: std::collections::HashSet<&str> = p.info.skipped.iter().map(|s| s.path.as_str()).collect();
        let live: Vec<&CompactRow> = self.rows.iter().filter(|r| !prev_skipped.contains(&*r.path)).collect();
        let same_rows = p.files.len() == live.len()
            && p.files.iter().zip(&live).all(|(a, b)| {
                *a.path == *b.path && sha256_raw(&a.sha256) == Some(b.sha256) && a.label == b.label as usize
            });
        let same_skips = prev_skipped.len() == self.rows.len() - live.len() + self.unread.len()
            && self.unread.iter().all(|u| prev_skipped.contains(u.path.as_str()));
        if !(same_rows && same_skips) {
            return Ok(None);
        }
        self.sink.note(&format!("{}: {} up to date ({} images)", self.split, npy.display(), live.len()));
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
        (sources, next_chunk): (&mut Sources<'_>, usize),
        todo: &[usize],
        device: runtime::Device,
    ) -> Result<Computed> {
        let mut out = Computed { n: 0, skipped: self.unread.to_vec(), device };
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
        let mut pending = Pending { rows: vec![], next_chunk };
        let n_unread = out.skipped.len();
        // Paths are made a block at a time: one list of 100,000 would copy every path.
        for block in todo.chunks(8192) {
            let paths: Vec<PathBuf> = block.iter().map(|&k| fsutil::text_path(&rows[k].path)).collect();
            run_images(&mut s.session, IMAGE, FEATURES, &paths, &spec, batch, |i, r| {
                match r {
                    Ok(y) => pending.rows.push((block[i], y.to_owned())),
                    Err(e) => {
                        tracing::warn!("{e} (skipped)");
                        out.skipped.push(Skipped { path: rows[block[i]].path.to_string(), reason: e.to_string() });
                    }
                }
                pb.inc(1);
                if pending.rows.len() >= cfg.checkpoint_every {
                    out.n += pending.flush(sources, rows)?;
                }
                Ok(())
            })?;
        }
        out.n += pending.flush(sources, rows)?;
        self.skip_copies(&mut out.skipped, n_unread);
        Ok(out)
    }

    /// Copies of a file that failed (computed once, see `run`) fail with it: `skipped[from..]`
    /// are the files this run failed on.
    fn skip_copies(&self, skipped: &mut Vec<Skipped>, from: usize) {
        if skipped.len() == from {
            return;
        }
        let rows = self.rows;
        let failed_paths: HashMap<&str, &Skipped> = skipped[from..].iter().map(|s| (s.path.as_str(), s)).collect();
        let failed: HashMap<[u8; 32], &Skipped> =
            rows.iter().filter_map(|r| failed_paths.get(&*r.path).map(|s| (r.sha256, *s))).collect();
        let copies: Vec<Skipped> = rows
            .iter()
            .filter(|r| !failed_paths.contains_key(&*r.path))
            .filter_map(|r| {
                let orig = failed.get(&r.sha256)?;
                let reason = format!("same bytes as {}, which failed: {}", orig.path, orig.reason);
                Some(Skipped { path: r.path.to_string(), reason })
            })
            .collect();
        copies.iter().for_each(|c| tracing::warn!("{}: {} (skipped)", c.path, c.reason));
        skipped.extend(copies);
    }

    /// The split's rows in file order (computed or reused), streamed into its cache.
    fn assemble(
        &self,
        runner: &mut Option<Runner>,
        sources: &mut Sources<'_>,
        computed: Computed,
    ) -> Result<SplitReport> {
        let cfg = self.cfg;
        let skipped_paths: std::collections::HashSet<&str> = computed.skipped.iter().map(|s| s.path.as_str()).collect();
        let keep: Vec<&CompactRow> = self.rows.iter().filter(|r| !skipped_paths.contains(&*r.path)).collect();
        drop(skipped_paths);
        let row_shape = match keep.first() {
            Some(r) => sources.row(&r.sha256)?.shape().to_vec(),
            None => self.empty_shape(runner)?,
        };
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
            precision: self.cfg.session.precision_used(),
            shard: cfg.shard,
            dataset: Some(fsutil::path_text(&cfg.dataset)),
            dataset_real: dataset_real(&cfg.dataset),
        };
        let fill = |w: &mut features::NpyWriter| keep.iter().try_for_each(|r| w.push(sources.row(&r.sha256)?.view()));
        let n = write_cache(&cfg.out, &meta, &row_shape, &keep, computed.skipped, fill)?;
        Ok(SplitReport {
            split: self.split.into(),
            view: self.view,
            n,
            reused: n - computed.n.min(n),
            computed: computed.n,
            skipped: self.rows.len() + self.unread.len() - n,
            up_to_date: false,
        })
    }

    /// A shard may own no readable image of a split: an empty part, shaped as the others (the
    /// row shape measured by one run of the backbone). Without shards that is an error.
    fn empty_shape(&self, runner: &mut Option<Runner>) -> Result<Vec<usize>> {
        let cfg = self.cfg;
        if cfg.shard.is_none() {
            return Err(Error::BadData { path: cfg.dataset.join(self.split), reason: "no readable images".into() });
        }
        let s = &mut opened(runner, self.bb, cfg)?.open;
        let probe = ndarray::Array4::<f32>::zeros((1, cfg.size as usize, cfg.size as usize, 3));
        let y = runtime::run_f32(&mut s.session, vec![(IMAGE, probe.view().into_dyn())], &[FEATURES])?.remove(0);
        Ok(y.shape()[1..].to_vec())
    }
}
