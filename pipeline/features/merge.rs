//! `tlearn-extract merge`: combine the caches of `--shard I/N` runs into what one run writes.

use super::{open_view, stem, write_cache, CacheMeta, CacheRows, FeatureInfo, FileRow, NpyRows, NpyWriter, Skipped};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::imageio::View;
use std::path::{Path, PathBuf};

/// The part folders `tlearn-extract --shard I/N` wrote under `out` (`shard-I-of-N/`), sorted.
pub fn shard_parts(out: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out)
        .at(out)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("shard-") && e.path().is_dir())
        .map(|e| e.path())
        .collect();
    v.sort();
    Ok(v)
}

/// Combine the caches of `tlearn-extract --shard I/N` runs (folders `parts`, all N of them) into
/// `out`: byte for byte the cache one unsharded run writes. Returns (stem, rows) per cache.
pub fn merge(parts: &[PathBuf], out: &Path) -> Result<Vec<(String, usize)>> {
    if parts.is_empty() {
        return Err(Error::BadData { path: out.into(), reason: "no parts to merge".into() });
    }
    // The merged cache may hold its parts (the default layout), never be one or lie inside one.
    let real_out = fsutil::real_path(out);
    if let Some(p) = parts.iter().find(|p| real_out.starts_with(fsutil::real_path(p))) {
        return Err(Error::BadData {
            path: out.into(),
            reason: format!("the output is or lies inside the part {} (outputs never overwrite inputs)", p.display()),
        });
    }
    let stems = caches_in_parts(parts)?;
    let _lock = crate::lock::dir(out)?;
    let mut done = vec![];
    for (split, view) in stems {
        let mut loaded: Vec<CacheRows> = parts.iter().map(|p| open_view(p, &split, view)).collect::<Result<_>>()?;
        check_parts(&loaded, parts, out)?;
        respell(&mut loaded);
        let n = write_merged(&mut loaded, &split, view, out)?;
        done.push((stem(&split, view), n));
    }
    Ok(done)
}

/// The (split, view) of every cache in the parts, in file-name order; every part must hold them
/// all (checked before anything is written).
fn caches_in_parts(parts: &[PathBuf]) -> Result<Vec<(String, View)>> {
    let listed: Vec<Vec<(String, View)>> = parts.iter().map(|p| caches_in(p)).collect::<Result<_>>()?;
    let mut all: Vec<(String, View)> = listed.iter().flatten().cloned().collect();
    all.sort_by_key(|(s, v)| stem(s, *v));
    all.dedup();
    for (p, has) in parts.iter().zip(&listed) {
        if let Some((s, v)) = all.iter().find(|c| !has.contains(c)) {
            return Err(Error::BadData {
                path: p.clone(),
                reason: format!(
                    "no `{}` cache, which other parts hold; rerun this shard's tlearn-extract, then merge",
                    stem(s, *v)
                ),
            });
        }
    }
    Ok(all)
}

/// The (split, view) of every cache in a part folder. A cache a killed run left pending is an
/// error: merging without it would leave its split out unsaid.
fn caches_in(part: &Path) -> Result<Vec<(String, View)>> {
    let mut stems: Vec<(String, View)> = vec![];
    for e in std::fs::read_dir(part).at(part)?.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".npy.json.pending") {
            return Err(Error::BadData {
                path: e.path(),
                reason: "this part's extraction was stopped before its cache was complete; rerun that shard's \
                         tlearn-extract, which finishes it, then merge"
                    .into(),
            });
        }
        if let Some(stem) = name.strip_suffix(".npy.json").filter(|s| !s.ends_with(".labels")) {
            let info: FeatureInfo = fsutil::read_json(&e.path())?;
            stems.push((info.split.clone(), info.view));
            debug_assert_eq!(stem, self::stem(&info.split, info.view));
        }
    }
    if stems.is_empty() {
        return Err(Error::BadData { path: part.into(), reason: "no feature caches in this part".into() });
    }
    Ok(stems)
}

/// The parts of one cache: every shard of one set, extracted with the same settings from the same
/// dataset, which is not where the merge writes.
fn check_parts(loaded: &[CacheRows], parts: &[PathBuf], out: &Path) -> Result<()> {
    let shards: Vec<_> = loaded.iter().map(|f| f.info.shard).collect();
    crate::shard::check_parts(&shards, parts, "sidecar", out)?;
    let i0 = &loaded[0].info;
    if let Some(d) = &i0.dataset_real {
        fsutil::check_output_apart(out, &[&fsutil::text_path(d)])?;
    }
    let settings = |i: &FeatureInfo| {
        (
            i.backbone_sha256.clone(),
            i.size,
            i.interpolation,
            i.preprocess.clone(),
            i.classes.clone(),
            i.device,
            i.precision,
        )
    };
    for (f, p) in loaded.iter().zip(parts) {
        let i = &f.info;
        if settings(i) != settings(i0) || i.shape[1..] != i0.shape[1..] {
            return Err(Error::BadData {
                path: p.clone(),
                reason: format!("extracted with other settings than {}", parts[0].display()),
            });
        }
        if i.dataset_real.is_none() || i.dataset_real != i0.dataset_real {
            return Err(Error::BadData {
                path: p.clone(),
                reason: format!(
                    "extracted from another dataset ({}) than {} ({})",
                    i.dataset_real.as_deref().unwrap_or("not recorded"),
                    parts[0].display(),
                    i0.dataset_real.as_deref().unwrap_or("not recorded")
                ),
            });
        }
    }
    Ok(())
}

/// Every row's path spelled as the first part spells the dataset folder.
fn respell(loaded: &mut [CacheRows]) {
    let d0 = loaded[0].info.dataset.clone();
    let respelled = |f: &CacheRows, path: &str| -> String {
        match (&f.info.dataset, &d0) {
            (Some(d), Some(d0)) if d != d0 => match fsutil::text_path(path).strip_prefix(fsutil::text_path(d)) {
                Ok(rest) => fsutil::path_text(&fsutil::text_path(d0).join(rest)),
                Err(_) => path.into(),
            },
            _ => path.into(),
        }
    };
    for f in loaded.iter_mut() {
        let fixed: Vec<String> = f.files.iter().map(|r| respelled(f, &r.path)).collect();
        let skipped: Vec<String> = f.info.skipped.iter().map(|s| respelled(f, &s.path)).collect();
        f.files.iter_mut().zip(fixed).for_each(|(r, p)| r.path = p);
        f.info.skipped.iter_mut().zip(skipped).for_each(|(s, p)| s.path = p);
    }
}

/// The parts' rows in path order (the order one run lists a split in), written as one cache
/// row by row (each part is read in its own order, so without seeking).
fn write_merged(loaded: &mut [CacheRows], split: &str, view: View, out: &Path) -> Result<usize> {
    let mut order: Vec<(PathBuf, usize, usize)> = loaded
        .iter()
        .enumerate()
        .flat_map(|(k, f)| f.files.iter().enumerate().map(move |(i, r)| (fsutil::text_path(&r.path), k, i)))
        .collect();
    order.sort();
    let skipped: Vec<Skipped> = loaded.iter().flat_map(|f| f.info.skipped.iter().cloned()).collect();
    let i0 = loaded[0].info.clone();
    let (files, mut readers): (Vec<&Vec<FileRow>>, Vec<&mut NpyRows>) =
        loaded.iter_mut().map(|c| (&c.files, &mut c.rows)).unzip();
    let keep: Vec<&FileRow> = order.iter().map(|&(_, k, i)| &files[k][i]).collect();
    let meta = CacheMeta {
        split,
        view,
        backbone: &i0.backbone,
        backbone_sha256: &i0.backbone_sha256,
        size: i0.size,
        interpolation: i0.interpolation,
        preprocess: &i0.preprocess,
        classes: &i0.classes,
        device: i0.device,
        precision: i0.precision,
        shard: None,
        dataset: i0.dataset.clone(),
        dataset_real: i0.dataset_real.clone(),
    };
    let rows = |w: &mut NpyWriter| order.iter().try_for_each(|&(_, k, i)| w.push(readers[k].row(i)?.view()));
    write_cache(out, &meta, &i0.shape[1..], &keep, skipped, rows)
}
