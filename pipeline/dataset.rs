//! Datasets on disk: scan a raw dump (class folders or Kaggle `cat.123.jpg` names), split it
//! stratified and seeded into `train/validation/test/<class>/`, and list split folders.

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::imageio::is_image_path;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const SPLITS: [&str; 3] = ["train", "validation", "test"];

/// One labelled image.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Item {
    pub class: String,
    pub path: PathBuf,
}

/// What a scan found besides images.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ScanReport {
    pub skipped_non_images: Vec<PathBuf>,
    pub empty_classes: Vec<String>,
    /// Entries the walk could not read (unreadable folders, symlink loops): (path, reason).
    pub unreadable: Vec<(String, String)>,
}

/// Scan `root`: sub-folders are classes if any exist, else file names `class.N.ext` give the class.
pub fn scan(root: &Path) -> Result<(Vec<Item>, ScanReport)> {
    if !root.is_dir() {
        return Err(Error::BadData {
            path: root.into(),
            reason: "input folder does not exist or is not a folder".into(),
        });
    }
    let mut report = ScanReport::default();
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(root).at(root)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    let dirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    let mut items = vec![];
    if !dirs.is_empty() {
        for d in dirs {
            // Class names go into models' metadata (JSON) and reports: they must be text.
            let Some(class) = d.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                let p = crate::fsutil::path_text(d);
                tracing::warn!("{p}: class folder name is not UTF-8 (skipped; rename it)");
                report.unreadable.push((p.clone(), format!("{p}: class folder name is not UTF-8; rename it")));
                continue;
            };
            let before = items.len();
            scan_class(d, &class, &mut items, &mut report);
            if items.len() == before {
                report.empty_classes.push(class);
            }
        }
    } else {
        scan_named(entries, &mut items, &mut report);
    }
    if items.is_empty() {
        return Err(Error::BadData {
            path: root.into(),
            reason: "no images found (expected class folders or files named class.N.jpg)".into(),
        });
    }
    Ok((items, report))
}

/// The images under the class folder `d` (walked, links not followed: a link to an image is an
/// image, resolved now so dangling ones and loops are reported, not split).
fn scan_class(d: &Path, class: &str, items: &mut Vec<Item>, report: &mut ScanReport) {
    fn unreadable(report: &mut ScanReport, p: String, why: String) {
        tracing::warn!("{p}: {why} (skipped)");
        report.unreadable.push((p.clone(), format!("{p}: {why}")));
    }
    let mut non_images = vec![];
    for e in walkdir::WalkDir::new(d).follow_links(false).sort_by_file_name() {
        let e = match e {
            Ok(e) => e,
            Err(e) => {
                let p = crate::fsutil::path_text(e.path().unwrap_or(d));
                tracing::warn!("{p}: {e} (skipped)");
                report.unreadable.push((p, e.to_string()));
                continue;
            }
        };
        let (kind, path) = (e.file_type(), e.path());
        if !kind.is_file() && !kind.is_symlink() {
            if e.depth() > 0 && is_image_path(path) {
                let what = if kind.is_dir() { "a folder" } else { "not a regular file" };
                unreadable(report, crate::fsutil::path_text(path), format!("{what} named like an image"));
            }
        } else if !is_image_path(path) {
            non_images.push(path.to_path_buf());
        } else if kind.is_symlink() && !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
            let why = std::fs::metadata(path).err().map(|x| x.to_string()).unwrap_or_else(|| "not a file".into());
            unreadable(report, crate::fsutil::path_text(path), why);
        } else {
            items.push(Item { class: class.to_string(), path: path.to_path_buf() });
        }
    }
    report.skipped_non_images.extend(non_images);
}

/// Kaggle's layout: the images of `root` itself, named `class.N.ext`.
fn scan_named(entries: Vec<PathBuf>, items: &mut Vec<Item>, report: &mut ScanReport) {
    for p in entries {
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            let t = crate::fsutil::path_text(&p);
            report.unreadable.push((t.clone(), format!("{t}: the name (its class) is not UTF-8; rename it")));
            continue;
        };
        match (is_image_path(&p), name.split_once('.')) {
            (true, Some((class, rest))) if !class.is_empty() && rest.contains('.') => {
                items.push(Item { class: class.to_string(), path: p })
            }
            _ => report.skipped_non_images.push(p),
        }
    }
}

/// [`scan`] of a raw dump that is about to be split: images whose real path lies outside `root`
/// (a class folder or file linked to `/etc`, say) are skipped and reported unless
/// `follow_outside`, so a split never pulls in files from elsewhere by accident.
pub fn scan_source(root: &Path, follow_outside: bool) -> Result<(Vec<Item>, ScanReport)> {
    let (items, mut report) = scan(root)?;
    if follow_outside {
        return Ok((items, report));
    }
    let real_root = std::fs::canonicalize(root).at(root)?;
    let mut kept = vec![];
    for it in items {
        match std::fs::canonicalize(&it.path) {
            Ok(real) if !real.starts_with(&real_root) => {
                let p = crate::fsutil::path_text(&it.path);
                let why = format!(
                    "{p}: links outside the input folder (to {}); skipped (--follow-outside includes it)",
                    crate::fsutil::path_text(&real)
                );
                tracing::warn!("{why}");
                report.unreadable.push((p, why));
            }
            _ => kept.push(it),
        }
    }
    if kept.is_empty() {
        return Err(Error::BadData {
            path: root.into(),
            reason: "no images inside the input folder (those reached through links to elsewhere were skipped; \
                     --follow-outside includes them)"
                .into(),
        });
    }
    Ok((kept, report))
}

/// How many images of each class go to each split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SplitSpec {
    /// `test` of each class to test, then `validation` of the rest to validation (Keras'
    /// `validation_split` semantics), the remainder to train.
    Fractions { test: f64, validation: f64 },
    /// Fixed counts per class: train, validation, test (the rest is unused).
    Counts { train: usize, validation: usize, test: usize },
}

impl SplitSpec {
    /// `--counts TRAIN,VALIDATION,TEST`: exactly three numbers, some images for training.
    pub fn from_counts(c: &[usize]) -> Result<SplitSpec> {
        let bad = |reason: &str| Error::Param {
            name: "counts",
            value: c.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","),
            reason: reason.into(),
        };
        match *c {
            [0, ..] => Err(bad("the training count must be ≥ 1")),
            [train, validation, test] => Ok(SplitSpec::Counts { train, validation, test }),
            _ => Err(bad("expected three numbers TRAIN,VALIDATION,TEST")),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if let SplitSpec::Fractions { test, validation } = self {
            for (name, v) in [("test", *test), ("validation", *validation)] {
                if !(0.0..1.0).contains(&v) {
                    return Err(Error::Param {
                        name: if name == "test" { "test" } else { "validation" },
                        value: v.to_string(),
                        reason: "must be in [0, 1)".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// (train, validation, test) counts for a class of `n` images.
    pub fn counts(&self, n: usize, class: &str) -> Result<[usize; 3]> {
        match *self {
            SplitSpec::Fractions { test, validation } => {
                let t = (n as f64 * test).round() as usize;
                let v = ((n - t) as f64 * validation).round() as usize;
                Ok([n - t - v, v, t])
            }
            SplitSpec::Counts { train, validation, test } => {
                let total = train.checked_add(validation).and_then(|s| s.checked_add(test));
                if total.is_none_or(|t| t > n) {
                    return Err(Error::Param {
                        name: "counts",
                        value: format!("{train},{validation},{test}"),
                        reason: format!("class `{class}` has {n} images, fewer than requested"),
                    });
                }
                Ok([train, validation, test])
            }
        }
    }
}

/// How files get into the split folders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkMode {
    Copy,
    Hardlink,
    Symlink,
}

impl crate::params::Choice for LinkMode {
    const ALL: &'static [(Self, &'static str, &'static str)] =
        &[(LinkMode::Copy, "copy", ""), (LinkMode::Hardlink, "hardlink", ""), (LinkMode::Symlink, "symlink", "")];
}

/// One row of the split manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ManifestRow {
    pub split: String,
    pub class: String,
    pub file: String,
    pub source: String,
}

/// Assign items to splits, stratified per class, deterministic for a seed.
pub fn assign(items: &[Item], spec: &SplitSpec, seed: u64) -> Result<Vec<(usize, Item)>> {
    spec.validate()?;
    let mut by_class: BTreeMap<&str, Vec<&Item>> = BTreeMap::new();
    for it in items {
        by_class.entry(&it.class).or_default().push(it);
    }
    let mut out = vec![];
    for (ci, (class, mut v)) in by_class.into_iter().enumerate() {
        v.sort();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (ci as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        v.shuffle(&mut rng);
        let [tr, va, te] = spec.counts(v.len(), class)?;
        for (i, it) in v.into_iter().enumerate() {
            let split = if i < te {
                2
            } else if i < te + va {
                1
            } else if i < te + va + tr {
                0
            } else {
                continue;
            };
            out.push((split, it.clone()));
        }
    }
    out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Ok(out)
}

/// K-fold cross-validation's split number `fold` (0-based) of `k`: each class's images, shuffled
/// as `seed` says (the same order for every fold), cut into `k` near-equal runs; run `fold` is
/// test, and `validation` of the rest (shuffled again per fold) validation. Over the `k` folds
/// every image is tested exactly once.
pub fn assign_fold(items: &[Item], k: usize, fold: usize, validation: f64, seed: u64) -> Result<Vec<(usize, Item)>> {
    if k < 2 || fold >= k {
        return Err(Error::Param {
            name: "folds",
            value: format!("{fold} of {k}"),
            reason: "need 0 ≤ fold < K, K ≥ 2".into(),
        });
    }
    SplitSpec::Fractions { test: 0.0, validation }.validate()?;
    let mut by_class: BTreeMap<&str, Vec<&Item>> = BTreeMap::new();
    for it in items {
        by_class.entry(&it.class).or_default().push(it);
    }
    let mut out = vec![];
    for (ci, (_, mut v)) in by_class.into_iter().enumerate() {
        v.sort();
        let salt = (ci as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        v.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ salt));
        let n = v.len();
        let (lo, hi) = (fold * n / k, (fold + 1) * n / k);
        let mut rest: Vec<&Item> = v[..lo].iter().chain(&v[hi..]).copied().collect();
        rest.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ salt ^ (fold as u64 + 1)));
        let n_val = (rest.len() as f64 * validation).round() as usize;
        out.extend(v[lo..hi].iter().map(|it| (2, (*it).clone())));
        out.extend(rest.iter().enumerate().map(|(i, it)| (if i < n_val { 1 } else { 0 }, (*it).clone())));
    }
    out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Ok(out)
}

/// Per-split, per-class counts.
pub type Counts = BTreeMap<String, [usize; 3]>;

/// Materialise a split into `out` (created atomically: built in a temp sibling, then renamed).
/// Files that cannot be resolved or copied (dangling links, link loops, unreadable files) are
/// skipped and returned as (path, reason); the split goes on without them.
pub fn write_split(
    assigned: &[(usize, Item)],
    input: &Path,
    out: &Path,
    mode: LinkMode,
    force: bool,
) -> Result<(Counts, Vec<(String, String)>)> {
    // The input and every folder an image comes from (a linked class folder is input too).
    let folders: std::collections::BTreeSet<&Path> =
        assigned.iter().map(|(_, it)| fsutil::parent_dir(&it.path)).collect();
    let sources: Vec<&Path> = std::iter::once(input).chain(folders).collect();
    fsutil::check_output_apart(out, &sources)?;
    if out.exists() && !force {
        return Err(Error::BadData {
            path: out.into(),
            reason: "output folder exists (use --force to replace it)".into(),
        });
    }
    if out.exists() && !is_own_split(out) {
        return Err(Error::BadData {
            path: out.into(),
            reason: "--force replaces only a split tlearn made (a folder with its manifest.csv); this one is not: \
                     give a new output folder"
                .into(),
        });
    }
    let parent = fsutil::parent_dir(out);
    std::fs::create_dir_all(parent).at(parent)?;
    let tmp = tempfile::Builder::new().prefix(".split-").tempdir_in(parent).at(parent)?;
    let mut rows = vec![];
    let mut counts: Counts = BTreeMap::new();
    let mut skipped = vec![];
    for (split, it) in assigned {
        let split_name = SPLITS[*split];
        let name = fsutil::path_text(Path::new(it.path.file_name().unwrap_or_default()));
        let dir = fsutil::safe_join(&tmp.path().join(split_name), &it.class)?;
        std::fs::create_dir_all(&dir).at(&dir)?;
        // The file's own name, bytes and all (the manifest holds its escaped text).
        let dest = dir.join(it.path.file_name().unwrap_or_default());
        if dest.exists() {
            return Err(Error::BadData {
                path: it.path.clone(),
                reason: format!("two images of class `{}` share the file name {name}", it.class),
            });
        }
        let src = match place(&it.path, &dest, mode) {
            Ok(src) => src,
            Err(e) => {
                let _ = std::fs::remove_file(&dest);
                let e = Error::Io { path: it.path.clone(), err: e };
                tracing::warn!("{e} (skipped)");
                skipped.push((fsutil::path_text(&it.path), e.to_string()));
                continue;
            }
        };
        counts.entry(it.class.clone()).or_default()[*split] += 1;
        rows.push(ManifestRow {
            split: split_name.into(),
            class: it.class.clone(),
            file: fsutil::path_text(
                &Path::new(split_name).join(&it.class).join(it.path.file_name().unwrap_or_default()),
            ),
            source: fsutil::path_text(&src),
        });
    }
    write_manifest(&tmp.path().join("manifest.csv"), &rows)?;
    let tmp = tmp.keep();
    if out.exists() {
        std::fs::remove_dir_all(out).at(out)?;
    }
    std::fs::rename(&tmp, out).at(out)?;
    Ok((counts, skipped))
}

/// Is `dir` a split tlearn wrote (its `manifest.csv` starts with tlearn's header)?
fn is_own_split(dir: &Path) -> bool {
    fsutil::starts_with_line(&dir.join("manifest.csv"), "split,class,file,source")
}

/// Put the image at `path` at `dest` as `mode` says; returns its resolved source path.
fn place(path: &Path, dest: &Path, mode: LinkMode) -> std::io::Result<PathBuf> {
    let src = std::fs::canonicalize(path)?;
    if !src.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    match mode {
        LinkMode::Copy => std::fs::copy(&src, dest).map(|_| ()),
        LinkMode::Hardlink => std::fs::hard_link(&src, dest).or_else(|_| std::fs::copy(&src, dest).map(|_| ())),
        LinkMode::Symlink => std::fs::File::open(&src).and_then(|_| std::os::unix::fs::symlink(&src, dest)),
    }?;
    Ok(src)
}

/// `manifest.csv`; a spreadsheet opens this file too, so text cells are neutralised
/// ([`fsutil::csv_cell`]).
fn write_manifest(path: &Path, rows: &[ManifestRow]) -> Result<()> {
    let cell = |s: &str| fsutil::csv_cell(s).into_owned();
    let rows = rows.iter().map(|r| ManifestRow {
        split: r.split.clone(),
        class: cell(&r.class),
        file: cell(&r.file),
        source: cell(&r.source),
    });
    std::fs::write(path, fsutil::csv_bytes(path, rows)?).at(path)
}

/// The counts as a table: one row per class, columns train/validation/test/total.
pub fn counts_table(c: &Counts) -> String {
    let w = c.keys().map(|k| k.len()).max().unwrap_or(5).max(5);
    let mut s = format!("{:<w$} {:>7} {:>10} {:>6} {:>7}\n", "class", "train", "validation", "test", "total");
    let mut tot = [0usize; 3];
    for (k, v) in c {
        s += &format!("{:<w$} {:>7} {:>10} {:>6} {:>7}\n", k, v[0], v[1], v[2], v.iter().sum::<usize>());
        for i in 0..3 {
            tot[i] += v[i];
        }
    }
    s += &format!("{:<w$} {:>7} {:>10} {:>6} {:>7}\n", "total", tot[0], tot[1], tot[2], tot.iter().sum::<usize>());
    s
}

/// The images of one split folder (`root/<split>/<class>/...`), classes sorted by name.
/// The classes of `root/train` (sorted folder names); an empty class folder is an error.
pub fn training_classes(root: &Path) -> Result<Vec<String>> {
    let (classes, _, report) = list_split(root, "train")?;
    if !report.empty_classes.is_empty() {
        return Err(Error::BadData {
            path: root.join("train"),
            reason: format!("empty class folder(s): {}", report.empty_classes.join(", ")),
        });
    }
    check_classes(&classes, &root.join("train"))?;
    Ok(classes)
}

/// A classifier learns to tell classes apart: training needs at least two. Checked when every
/// training stage starts (`from` is what the classes were read from), so one-class data is one
/// clear message, never a failure after training.
pub fn check_classes(classes: &[String], from: &Path) -> Result<()> {
    if classes.len() >= 2 {
        return Ok(());
    }
    Err(Error::BadData {
        path: from.into(),
        reason: format!(
            "only {} class ({}): a classifier needs at least two; add a folder of images of another class \
             (for a yes/no question, the images that are not `{}`) and split again",
            classes.len(),
            if classes.is_empty() { "none".into() } else { format!("`{}`", classes.join(", ")) },
            classes.first().map(String::as_str).unwrap_or("it"),
        ),
    })
}

/// The training-class index of each item of `split`; a class without training images is an
/// error naming the file.
pub fn labels(items: &[Item], classes: &[String], split: &str) -> Result<Vec<usize>> {
    items
        .iter()
        .map(|it| {
            classes.iter().position(|c| c == &it.class).ok_or_else(|| Error::BadData {
                path: it.path.clone(),
                reason: format!(
                    "class `{}` of split `{split}` has no training images (training classes: {})",
                    it.class,
                    classes.join(", ")
                ),
            })
        })
        .collect()
}

/// Does the folder hold no file named like an image, at any depth (links followed)?
pub fn holds_no_image(dir: &Path) -> bool {
    !walkdir::WalkDir::new(dir)
        .follow_links(true)
        .into_iter()
        .filter_map(|e| e.ok())
        .any(|e| e.file_type().is_file() && is_image_path(e.path()))
}

pub fn list_split(root: &Path, split: &str) -> Result<(Vec<String>, Vec<Item>, ScanReport)> {
    let dir = root.join(split);
    if !dir.is_dir() {
        return Err(missing_split(root, split));
    }
    let (items, report) = scan(&dir)?;
    let mut classes: Vec<String> = items.iter().map(|i| i.class.clone()).collect();
    classes.sort();
    classes.dedup();
    Ok((classes, items, report))
}

/// Why `root` has no (or an empty) `split` folder, said with what to give instead: the dataset
/// rather than one of its splits, a folder rather than a file, and for raw class folders how to
/// split them.
pub fn missing_split(root: &Path, split: &str) -> Error {
    let bad = |reason: String| Error::BadData { path: root.into(), reason };
    let wanted = "give a split dataset (train/[validation/][test/]<class>/, as `tlearn-data split` makes)";
    if !root.exists() {
        return bad(format!("no such folder; {wanted}"));
    }
    if !root.is_dir() {
        return bad(format!("a file, not a folder; {wanted}"));
    }
    let parent = fsutil::parent_dir(root);
    let name = fsutil::real_path(root).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if SPLITS.contains(&name.as_str()) && parent.join("train").is_dir() {
        let parent = parent.display();
        return bad(format!("the `{name}` part of the split dataset {parent}: give the dataset itself, {parent}"));
    }
    if !root.join("train").is_dir() && !holds_no_image(root) {
        let r = root.display();
        return bad(format!(
            "not split (no train/ folder): split it with `tlearn-data split {r} data/{name}` or use `tlearn fit {r} --run {name}`"
        ));
    }
    let dir = root.join(split);
    let reason = if dir.is_dir() { "no images in this split" } else { "no such split folder" };
    Error::BadData { path: dir, reason: reason.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_image_is_tested_once_over_the_folds() {
        let items: Vec<Item> = (0..23)
            .map(|i| Item { class: if i % 3 == 0 { "a" } else { "b" }.into(), path: format!("{i}.png").into() })
            .collect();
        let mut tested = std::collections::BTreeMap::new();
        for fold in 0..4 {
            let a = assign_fold(&items, 4, fold, 0.25, 7).unwrap();
            assert_eq!(a.len(), items.len());
            assert_eq!(a, assign_fold(&items, 4, fold, 0.25, 7).unwrap(), "seeded");
            for (split, it) in &a {
                if *split == 2 {
                    *tested.entry(it.path.clone()).or_insert(0) += 1;
                }
            }
            let val = a.iter().filter(|(s, _)| *s == 1).count();
            assert!((3..=6).contains(&val), "validation {val}");
        }
        assert_eq!(tested.len(), items.len());
        assert!(tested.values().all(|&n| n == 1));
        assert!(assign_fold(&items, 1, 0, 0.2, 7).is_err());
    }
}
