//! Scale-out: `--shard I/N` gives process I of N a deterministic part of a file list, chosen by a
//! hash of each path (so a file's shard does not depend on which other files exist), and the
//! canonical order in which merged outputs list files (the order a single run writes).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Part `index` of `count` (0-based index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Param { name: "shard", value: s.into(), reason: reason.into() };
        let (i, n) = s.split_once('/').ok_or_else(|| bad("expected I/N, e.g. 0/4"))?;
        let index: usize = i.trim().parse().map_err(|_| bad("I is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| bad("N is not a number"))?;
        if count == 0 || index >= count {
            return Err(bad("need 0 ≤ I < N"));
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Does this shard own `path`? (First 8 bytes of sha256 of the path's bytes, modulo N.)
    pub fn owns(&self, path: &Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        self.count == 1 || of(path.as_os_str().as_bytes(), self.count) == self.index
    }

    /// Folder-name form: `shard-I-of-N`.
    pub fn dir_name(&self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }
}

/// The shard (of `count`) that owns a path given as bytes.
pub fn of(path: &[u8], count: usize) -> usize {
    let h = Sha256::digest(path);
    (u64::from_be_bytes(h[..8].try_into().expect("8 bytes")) % count as u64) as usize
}

/// The shards of the parts of a merge into `out` (what each part's `record` — sidecar, summary —
/// says), which must be a complete set ([`check_complete`]); returns N.
pub fn check_parts(shards: &[Option<Shard>], parts: &[std::path::PathBuf], record: &str, out: &Path) -> Result<usize> {
    let shards: Vec<Shard> = shards
        .iter()
        .zip(parts)
        .map(|(s, p)| {
            s.ok_or_else(|| Error::BadData {
                path: p.clone(),
                reason: format!("not a shard (no shard in its {record})"),
            })
        })
        .collect::<Result<_>>()?;
    check_complete(&shards, out)
}

/// Check that `shards` are exactly 0..N of one N (each once); returns N.
pub fn check_complete(shards: &[Shard], what: &Path) -> Result<usize> {
    let n = shards
        .first()
        .map(|s| s.count)
        .ok_or_else(|| Error::BadData { path: what.into(), reason: "no shard outputs to merge".into() })?;
    let mut seen = vec![0usize; n];
    for s in shards {
        if s.count != n {
            return Err(Error::BadData {
                path: what.into(),
                reason: format!("shards of different splits: {s} next to …/{n}"),
            });
        }
        seen[s.index] += 1;
    }
    let missing: Vec<String> = (0..n).filter(|&i| seen[i] == 0).map(|i| format!("{i}/{n}")).collect();
    let twice: Vec<String> = (0..n).filter(|&i| seen[i] > 1).map(|i| format!("{i}/{n}")).collect();
    if !missing.is_empty() || !twice.is_empty() {
        return Err(Error::BadData {
            path: what.into(),
            reason: format!(
                "incomplete shard set: missing [{}], given twice [{}]",
                missing.join(", "),
                twice.join(", ")
            ),
        });
    }
    Ok(n)
}
