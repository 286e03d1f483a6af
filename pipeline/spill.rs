//! Fixed-size rows (decoded images, cached activations) held in memory while a [`Budget`] allows,
//! else written to an unlinked file and read back a few rows at a time — the same rows either
//! way, so what is computed from them does not depend on where they were kept.

use crate::error::{Error, IoContext, Result};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use std::cell::Cell;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How many bytes the row sets written against it may hold in memory together, and the folder
/// where the rest goes.
pub struct Budget {
    left: Cell<u64>,
    dir: PathBuf,
}

impl Budget {
    pub fn new(bytes: u64, dir: &Path) -> Budget {
        Budget { left: Cell::new(bytes), dir: dir.to_path_buf() }
    }

    /// Take `bytes` from the budget when they fit.
    fn take(&self, bytes: u64) -> bool {
        let fits = bytes <= self.left.get();
        if fits {
            self.left.set(self.left.get() - bytes);
        }
        fits
    }

    /// A fresh file in the folder that no directory lists (O_TMPFILE where the file system has
    /// it): the kernel frees it when its rows are dropped or the process dies.
    fn unlinked_file(&self) -> Result<File> {
        std::fs::create_dir_all(&self.dir).at(&self.dir)?;
        tempfile::tempfile_in(&self.dir).at(&self.dir)
    }
}

/// Rows being written, in memory or to their file.
pub struct RowWriter<T> {
    sink: Sink<T>,
    shape: Vec<usize>,
    n: usize,
}

enum Sink<T> {
    Memory(Vec<T>),
    Disk(std::io::BufWriter<File>, Spilled),
}

/// What a spill file holds and where it lies, for messages.
#[derive(Clone)]
struct Spilled {
    what: String,
    dir: PathBuf,
}

impl Spilled {
    fn err(&self, doing: &str, e: std::io::Error) -> Error {
        Error::BadData { path: self.dir.clone(), reason: format!("{}: {doing} the spill file: {e}", self.what) }
    }
}

impl<T: bytemuck::Pod> RowWriter<T> {
    /// A writer for up to `capacity` rows of `shape`, in memory when `budget` has room for them
    /// all, else to an unlinked file in its folder (logged, naming `what`).
    pub fn new(budget: &Budget, what: &str, capacity: usize, shape: &[usize]) -> Result<RowWriter<T>> {
        let len: usize = shape.iter().product();
        if len == 0 {
            return Err(Error::Other(format!("{what}: rows of shape {shape:?} hold nothing")));
        }
        let bytes = (capacity as u64).saturating_mul((len * std::mem::size_of::<T>()) as u64);
        let sink = if budget.take(bytes) {
            Sink::Memory(Vec::with_capacity(capacity * len))
        } else {
            tracing::info!(
                "{what}: {capacity} rows, {:.1} MB past the memory budget: kept in a file in {} and read back as needed",
                bytes as f64 / 1e6,
                budget.dir.display()
            );
            let file = budget.unlinked_file()?;
            let spilled = Spilled { what: what.to_string(), dir: budget.dir.clone() };
            Sink::Disk(std::io::BufWriter::with_capacity(1 << 20, file), spilled)
        };
        Ok(RowWriter { sink, shape: shape.to_vec(), n: 0 })
    }

    /// Append `n` rows (`rows` holds exactly that many).
    pub fn push(&mut self, n: usize, rows: &[T]) -> Result<()> {
        let len: usize = self.shape.iter().product();
        if rows.len() != n * len {
            return Err(Error::Shape {
                what: "rows to keep".into(),
                expected: [&[n][..], &self.shape].concat(),
                got: vec![rows.len()],
            });
        }
        self.n += n;
        match &mut self.sink {
            Sink::Memory(v) => v.extend_from_slice(rows),
            Sink::Disk(w, s) => w.write_all(bytemuck::cast_slice(rows)).map_err(|e| s.err("writing", e))?,
        }
        Ok(())
    }

    pub fn finish(self) -> Result<Rows<T>> {
        let store = match self.sink {
            Sink::Memory(v) => Store::Memory(v),
            Sink::Disk(w, s) => {
                let file = w.into_inner().map_err(|e| s.err("writing", e.into_error()))?;
                Store::Disk(file, s)
            }
        };
        Ok(Rows { store, shape: self.shape, n: self.n })
    }
}

/// Rows of one shape, in memory or in an unlinked file.
pub struct Rows<T> {
    store: Store<T>,
    shape: Vec<usize>,
    n: usize,
}

enum Store<T> {
    Memory(Vec<T>),
    Disk(File, Spilled),
}

impl<T: bytemuck::Pod> Rows<T> {
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn on_disk(&self) -> bool {
        matches!(self.store, Store::Disk(..))
    }

    /// `f` over rows `idx` as an (n, row…) array: every row and `idx` itself when they are in
    /// memory (no copy), else those rows read back and `0..idx.len()`.
    pub fn with_rows<R>(&self, idx: &[usize], f: impl FnOnce(ArrayViewD<'_, T>, &[usize]) -> R) -> Result<R> {
        let len: usize = self.shape.iter().product();
        match &self.store {
            Store::Memory(v) => Ok(f(ArrayViewD::from_shape(self.dims(self.n), v).expect("whole rows"), idx)),
            Store::Disk(file, s) => {
                let mut buf = vec![T::zeroed(); idx.len() * len];
                for (k, &i) in idx.iter().enumerate() {
                    if i >= self.n {
                        return Err(Error::Other(format!("{}: row {i} asked of {} rows", s.what, self.n)));
                    }
                    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf[k * len..(k + 1) * len]);
                    let at = (i * len * std::mem::size_of::<T>()) as u64;
                    file.read_exact_at(bytes, at).map_err(|e| s.err(&format!("reading row {i} back from"), e))?;
                }
                let rows = ArrayViewD::from_shape(self.dims(idx.len()), &buf).expect("whole rows");
                let order: Vec<usize> = (0..idx.len()).collect();
                Ok(f(rows, &order))
            }
        }
    }

    /// Rows `idx`, copied out.
    pub fn select(&self, idx: &[usize]) -> Result<ArrayD<T>> {
        self.with_rows(idx, |x, idx| x.select(ndarray::Axis(0), idx))
    }

    fn dims(&self, n: usize) -> IxDyn {
        IxDyn(&[&[n][..], &self.shape].concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows kept past a budget come back from their file exactly as rows kept in memory, for any
    /// order of indices (repeats too), u8 and f32 alike; no file is visible in the folder; a row past
    /// the end is an error naming what the rows are.
    #[test]
    fn spilled_rows_read_back_as_rows_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        fn fill<T: bytemuck::Pod>(budget: &Budget, rows: &[Vec<T>], shape: &[usize]) -> Rows<T> {
            let mut w = RowWriter::new(budget, "test rows", rows.len(), shape).unwrap();
            for r in rows {
                w.push(1, r).unwrap();
            }
            w.finish().unwrap()
        }
        let idx = [6, 0, 3, 3, 9, 1];
        let bytes: Vec<Vec<u8>> = (0..10u8).map(|i| (0..12).map(|j| i * 16 + j).collect()).collect();
        let floats: Vec<Vec<f32>> =
            (0..10).map(|i| (0..6).map(|j| i as f32 + j as f32 / 8.0 - 3.0).collect()).collect();
        let (held, spilled) = (Budget::new(u64::MAX, dir.path()), Budget::new(0, dir.path()));
        let (a, b) = (fill(&held, &bytes, &[2, 2, 3]), fill(&spilled, &bytes, &[2, 2, 3]));
        assert!(!a.on_disk() && b.on_disk());
        assert_eq!(a.select(&idx).unwrap(), b.select(&idx).unwrap());
        assert_eq!(b.select(&idx).unwrap().shape(), &[6, 2, 2, 3]);
        assert_eq!(b.select(&[3]).unwrap().iter().copied().collect::<Vec<u8>>(), bytes[3]);
        let (c, d) = (fill(&held, &floats, &[6]), fill(&spilled, &floats, &[6]));
        assert_eq!(c.select(&idx).unwrap(), d.select(&idx).unwrap());
        assert_eq!(d.select(&[9]).unwrap().iter().copied().collect::<Vec<f32>>(), floats[9]);
        let err = d.select(&[10]).unwrap_err().to_string();
        assert!(err.contains("test rows") && err.contains("row 10"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "spill files are never listed");
        // A budget is shared: the first set takes what it needs, the next spills.
        let shared = Budget::new(120, dir.path());
        assert!(!fill(&shared, &bytes, &[12]).on_disk());
        assert!(fill(&shared, &bytes[..1], &[12]).on_disk());
        let mut w = RowWriter::<u8>::new(&held, "short", 2, &[4]).unwrap();
        assert!(w.push(1, &[1, 2, 3]).is_err(), "a partial row is refused");
    }
}
