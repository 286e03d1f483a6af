//! The split stage (`tlearn-data split`): a raw image dump — class folders, or Kaggle-style
//! `cat.123.jpg` names — into `OUTPUT/{train,validation,test}/<class>/`, stratified and seeded,
//! with `manifest.csv` and `split.json` (what was split, how, and what was left out).

use crate::dataset::{self, Counts, LinkMode, SplitSpec};
use crate::error::Result;
use crate::fsutil;
use std::path::PathBuf;

/// What to split, and how.
pub struct SplitJob {
    pub input: PathBuf,
    pub output: PathBuf,
    pub spec: SplitSpec,
    pub seed: u64,
    pub mode: LinkMode,
    /// Replace an existing split of tlearn's (never one that is, holds or lies inside the input).
    pub force: bool,
    /// Also split images whose real path lies outside the input (links to other folders).
    pub follow_outside: bool,
}

/// What the split did: images per split and class, and what it left out.
pub struct Split {
    pub counts: Counts,
    /// Files named as images that could not be read or linked: (path, why).
    pub unreadable: Vec<(String, String)>,
    pub non_images: Vec<PathBuf>,
    pub empty_classes: Vec<String>,
}

/// File name of the split's record.
pub const RECORD: &str = "split.json";

/// Split `job.input` into `job.output`; `split.json` is written last.
pub fn run(job: &SplitJob) -> Result<Split> {
    let (items, report) = dataset::scan_source(&job.input, job.follow_outside)?;
    for p in &report.skipped_non_images {
        tracing::warn!("{}: skipped (not an image)", p.display());
    }
    for c in &report.empty_classes {
        tracing::warn!("{}: empty class folder, left out of the split", job.input.join(c).display());
    }
    let found: std::collections::BTreeSet<&str> = items.iter().map(|it| it.class.as_str()).collect();
    if found.len() < 2 {
        tracing::warn!(
            "{}: {} class(es) found; training needs at least two (add a folder per class)",
            job.input.display(),
            found.len()
        );
    }
    let assigned = dataset::assign(&items, &job.spec, job.seed)?;
    let (counts, mut unreadable) = dataset::write_split(&assigned, &job.input, &job.output, job.mode, job.force)?;
    unreadable.extend(report.unreadable.iter().cloned());
    unreadable.sort();
    fsutil::write_json(
        &job.output.join(RECORD),
        &serde_json::json!({
            "input": fsutil::path_text(&job.input), "seed": job.seed, "spec": format!("{:?}", job.spec),
            "counts": counts, "skipped": unreadable, "empty_classes": report.empty_classes,
            "non_images": report.skipped_non_images.iter().map(|p| fsutil::path_text(p)).collect::<Vec<_>>(),
        }),
    )?;
    Ok(Split { counts, unreadable, non_images: report.skipped_non_images, empty_classes: report.empty_classes })
}
