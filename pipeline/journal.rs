//! Work journals: what a long batch stage (extract, score) has finished so far, kept in
//! `<output>.partial/` so a run killed at any point resumes with only the missing work.
//!
//! A journal holds a manifest (the settings the work depends on; a journal made with other
//! settings is discarded) and chunks: `<name>.bin` (the chunk's data) written before
//! `<name>.json` (its metadata and the sha256 of the data), both atomically. A chunk counts only
//! when its metadata exists and the data's checksum matches, so a torn or corrupt chunk is
//! recomputed, never used.

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const MANIFEST: &str = "manifest.json";

#[derive(Serialize, Deserialize)]
struct ChunkMeta<T> {
    data_sha256: String,
    meta: T,
}

/// An open journal folder.
#[derive(Debug)]
pub struct Journal {
    pub dir: PathBuf,
}

/// The journal folder of an output: `<out>.partial`.
pub fn dir_of(out: &Path) -> PathBuf {
    fsutil::with_suffix(out, ".partial")
}

impl Journal {
    /// Open (or start) the journal in `dir` for work described by `manifest`; an existing
    /// journal with another manifest is discarded.
    pub fn open<M: Serialize>(dir: &Path, manifest: &M) -> Result<Journal> {
        let want = serde_json::to_value(manifest)
            .map_err(|e| Error::BadData { path: dir.into(), reason: format!("journal manifest: {e}") })?;
        let mp = dir.join(MANIFEST);
        if dir.exists() && !mp.exists() && has_foreign_files(dir)? {
            return Err(Error::BadData {
                path: dir.into(),
                reason: "tlearn keeps its work journal here, but this folder holds files tlearn did not write; \
                         move it away or choose another output"
                    .into(),
            });
        }
        if dir.exists() {
            let same = fsutil::read_json::<serde_json::Value>(&mp).map(|v| v == want).unwrap_or(false);
            if !same {
                tracing::warn!("{}: left by a run with other settings; starting over", dir.display());
                remove(dir)?;
            }
        }
        if !mp.exists() {
            std::fs::create_dir_all(dir).at(dir)?;
            fsutil::write_json(&mp, &want)?;
        }
        Ok(Journal { dir: dir.into() })
    }

    fn paths(&self, name: &str) -> (PathBuf, PathBuf) {
        (self.dir.join(format!("{name}.bin")), self.dir.join(format!("{name}.json")))
    }

    /// Where a chunk's data lies.
    pub fn data_path(&self, name: &str) -> PathBuf {
        self.paths(name).0
    }

    /// Record a finished chunk.
    pub fn put<T: Serialize>(&self, name: &str, data: &[u8], meta: T) -> Result<()> {
        let (bin, json) = self.paths(name);
        fsutil::write_bytes_atomic(&bin, data)?;
        fsutil::write_json(&json, &ChunkMeta { data_sha256: fsutil::sha256_bytes(data), meta })
    }

    /// A finished chunk's data and metadata; None when absent, torn or corrupt (logged).
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Option<(Vec<u8>, T)> {
        let (bin, json) = self.paths(name);
        if !json.exists() {
            return None;
        }
        let checked = (|| -> Result<(Vec<u8>, T)> {
            let m: ChunkMeta<T> = fsutil::read_json(&json)?;
            let data = std::fs::read(&bin).at(&bin)?;
            let got = fsutil::sha256_bytes(&data);
            if got != m.data_sha256 {
                return Err(Error::Checksum { path: bin.clone(), expected: m.data_sha256, got });
            }
            Ok((data, m.meta))
        })();
        match checked {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!("{e}: journal chunk ignored, recomputing it");
                None
            }
        }
    }

    /// Names of the chunks whose metadata exists, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .at(&self.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).map(String::from))
            .filter(|n| n != "manifest")
            .collect();
        v.sort();
        Ok(v)
    }

    /// The work is done and its output written: drop the journal.
    pub fn finish(self) -> Result<()> {
        // The output is written: a journal that cannot go is worth a warning, not a failed run.
        if let Err(e) = remove(&self.dir) {
            tracing::warn!("{e}");
        }
        Ok(())
    }
}

/// Does `dir` hold anything but a killed writer's temporary files and journal chunks (what a
/// removal killed before its manifest went leaves)?
fn has_foreign_files(dir: &Path) -> Result<bool> {
    let chunk_meta = |json: &Path| {
        fsutil::read_json::<serde_json::Value>(json).is_ok_and(|v| v.get("data_sha256").is_some_and(|s| s.is_string()))
    };
    let ours = |n: &str| {
        (n.starts_with('.') && n.ends_with(".tmp"))
            || n.strip_suffix(".json").is_some_and(|_| chunk_meta(&dir.join(n)))
            || n.strip_suffix(".bin").is_some_and(|stem| chunk_meta(&dir.join(format!("{stem}.json"))))
    };
    Ok(std::fs::read_dir(dir).at(dir)?.filter_map(|e| e.ok()).any(|e| !e.file_name().to_str().is_some_and(ours)))
}

/// Remove a journal folder: the files a journal writes (its manifest, `<chunk>.bin`/`.json`, a
/// killed writer's `.<name>.tmp`), then the folder. Anything else in it is not tlearn's: the
/// folder is then kept and named, with what to do.
fn remove(dir: &Path) -> Result<()> {
    // The manifest goes last: it is what says the folder is a journal, so a removal killed half
    // way leaves a journal the next run recognises, never chunks that look like a stranger's.
    let ours = |n: &str| {
        n != MANIFEST && (n.ends_with(".bin") || n.ends_with(".json") || (n.starts_with('.') && n.ends_with(".tmp")))
    };
    crate::output::remove_files_named(dir, ours)?;
    crate::output::remove_files_named(dir, |n| n == MANIFEST)?;
    std::fs::remove_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::DirectoryNotEmpty => Error::BadData {
            path: dir.into(),
            reason: "cannot remove this work journal: it holds files tlearn did not write; move them away".into(),
        },
        _ => Error::Io { path: dir.into(), err: e },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal whose removal was killed after the manifest went (an older tlearn removed it
    /// first) opens again, starting over (without a manifest no chunk can be trusted); a folder
    /// holding anything else is refused and keeps it.
    #[test]
    fn a_half_removed_journal_reopens_and_a_strangers_folder_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("out.csv.partial");
        let j = Journal::open(&dir, &"settings").unwrap();
        j.put("000001", b"rows", 7u32).unwrap();
        std::fs::remove_file(dir.join(MANIFEST)).unwrap();
        let j = Journal::open(&dir, &"settings").unwrap();
        assert!(j.get::<u32>("000001").is_none() && dir.join(MANIFEST).is_file());
        std::fs::remove_file(dir.join(MANIFEST)).unwrap();
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        assert!(Journal::open(&dir, &"settings").is_err());
        assert!(dir.join("notes.txt").is_file());
    }
}
