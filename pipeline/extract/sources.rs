//! Where the rows of a split already computed lie — the earlier cache, or the chunks of the
//! journal (a killed run's, and this run's) — read back one at a time while the split's cache is
//! written, so memory stays flat in the number of images.

use crate::error::{Error, Result};
use crate::features::{sha256_raw, CompactRow, NpyRows};
use crate::journal::Journal;
use ndarray::ArrayD;
use ndarray_npy::ReadNpyExt;
use std::collections::HashMap;

#[derive(Clone, Copy)]
enum Source {
    Previous(u32),
    Chunk(u32, u32),
}

/// Rows already computed, by image content.
pub(super) struct Sources<'a> {
    /// The first row of the split with each content hash (copies share it).
    first: HashMap<&'a [u8; 32], u32>,
    /// Where the row of each first row lies, once computed.
    at: Vec<Option<Source>>,
    previous: Option<NpyRows>,
    pub(super) journal: &'a Journal,
    chunks: Vec<String>,
    /// The chunk last read from (rows are mostly written in chunk order).
    open: Option<(u32, NpyRows)>,
}

impl<'a> Sources<'a> {
    pub(super) fn new(rows: &'a [CompactRow], journal: &'a Journal) -> Sources<'a> {
        let mut first = HashMap::with_capacity(rows.len());
        for (k, r) in rows.iter().enumerate() {
            first.entry(&r.sha256).or_insert(k as u32);
        }
        Sources { first, at: vec![None; rows.len()], previous: None, journal, chunks: vec![], open: None }
    }

    fn add(&mut self, sha: &[u8; 32], src: Source) {
        if let Some(&k) = self.first.get(sha) {
            self.at[k as usize] = Some(src);
        }
    }

    /// The earlier cache of the split: its rows' content hashes and the rows on disk.
    pub(super) fn add_previous(&mut self, shas: impl Iterator<Item = [u8; 32]>, rows: NpyRows) {
        shas.enumerate().for_each(|(i, sha)| self.add(&sha, Source::Previous(i as u32)));
        self.previous = Some(rows);
    }

    /// Record a chunk journalled with rows of these content hashes.
    pub(super) fn add_chunk(&mut self, name: String, shas: &[String]) {
        let c = self.chunks.len() as u32;
        self.chunks.push(name);
        for (i, sha) in shas.iter().enumerate() {
            if let Some(sha) = sha256_raw(sha) {
                self.add(&sha, Source::Chunk(c, i as u32));
            }
        }
    }

    /// Is the row of this content computed already (by an earlier run, or this one)?
    pub(super) fn has(&self, sha: &[u8; 32]) -> bool {
        self.first.get(sha).is_some_and(|&k| self.at[k as usize].is_some())
    }

    /// Is row `k` the first of its content (the one computed; copies reuse it)?
    pub(super) fn is_first(&self, k: usize, sha: &[u8; 32]) -> bool {
        self.first.get(sha) == Some(&(k as u32))
    }

    pub(super) fn row(&mut self, sha: &[u8; 32]) -> Result<ArrayD<f32>> {
        let missing =
            || Error::Other(format!("features of the image with sha256 {} were never computed", hex::encode(sha)));
        let src = self.first.get(sha).and_then(|&k| self.at[k as usize]).ok_or_else(missing)?;
        match src {
            Source::Previous(i) => self.previous.as_mut().ok_or_else(missing)?.row(i as usize),
            Source::Chunk(c, i) => {
                if self.open.as_ref().map(|(o, _)| *o) != Some(c) {
                    // Checked by read_journal or written by this run, in the locked folder.
                    let path = self.journal.data_path(&self.chunks[c as usize]);
                    self.open = Some((c, NpyRows::open_checked_before(&path)?));
                }
                self.open.as_mut().expect("opened above").1.row(i as usize)
            }
        }
    }
}

/// Record the chunks a killed run journalled (a chunk that does not parse is recomputed);
/// returns the number the next chunk written takes (past every name in the folder, so no
/// recorded chunk is ever overwritten).
pub(super) fn read_journal(sources: &mut Sources<'_>) -> Result<usize> {
    let journal = sources.journal;
    let names = journal.names()?;
    for name in &names {
        if let Some((bytes, shas)) = journal.get::<Vec<String>>(name) {
            match ArrayD::<f32>::read_npy(&bytes[..]) {
                Ok(a) if a.shape().first() == Some(&shas.len()) => sources.add_chunk(name.clone(), &shas),
                _ => tracing::warn!("{}: journal chunk {name} does not parse; recomputing it", journal.dir.display()),
            }
        }
    }
    Ok(names.iter().filter_map(|n| n.parse::<usize>().ok()).max().map_or(0, |m| m + 1))
}
