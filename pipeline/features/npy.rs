//! `.npy` files of float32 rows (C order, little-endian) written and read one row at a time, so a
//! cache of 100,000 images never has to sit in memory whole: the writer streams to a temporary
//! sibling and hashes as it goes (renamed into place only when every promised row is there); the
//! reader checks the file's sha256 before it hands out a row.

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use ndarray_npy::npy::header::{Header, Layout};
use ndarray_npy::WritableElement;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

fn header_bytes(path: &Path, shape: &[usize]) -> Result<Vec<u8>> {
    let h = Header { type_descriptor: f32::type_descriptor(), layout: Layout::Standard, shape: shape.to_vec() };
    h.to_bytes().map_err(|e| Error::BadData { path: path.into(), reason: format!("npy header: {e}") })
}

/// An `.npy` being written row by row; the same bytes as writing the whole array at once.
#[derive(Debug)]
pub struct NpyWriter {
    path: PathBuf,
    w: BufWriter<tempfile::NamedTempFile>,
    hash: Sha256,
    shape: Vec<usize>,
    rows_left: usize,
    buf: Vec<u8>,
}

impl NpyWriter {
    /// Start `path` (written to a temporary sibling until [`NpyWriter::finish`]) for an array
    /// of `shape`: `shape[0]` rows of `shape[1..]`.
    pub fn create(path: &Path, shape: &[usize]) -> Result<NpyWriter> {
        let dir = fsutil::parent_dir(path);
        std::fs::create_dir_all(dir).at(dir)?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
        let tmp = tempfile::Builder::new().prefix(&format!(".{name}.")).suffix(".tmp").tempfile_in(dir).at(dir)?;
        let mut me = NpyWriter {
            path: path.into(),
            w: BufWriter::with_capacity(1 << 20, tmp),
            hash: Sha256::new(),
            shape: shape.to_vec(),
            rows_left: shape.first().copied().unwrap_or(0),
            buf: vec![],
        };
        let h = header_bytes(path, shape)?;
        me.write(&h)?;
        Ok(me)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hash.update(bytes);
        self.w.write_all(bytes).at(&self.path)
    }

    /// Append the next row; its shape must be the promised `shape[1..]`.
    pub fn push(&mut self, row: ArrayViewD<'_, f32>) -> Result<()> {
        if row.shape() != &self.shape[1..] || self.rows_left == 0 {
            return Err(Error::Shape {
                what: format!("a row of {} (rows left: {})", self.path.display(), self.rows_left),
                expected: self.shape[1..].to_vec(),
                got: row.shape().to_vec(),
            });
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend(row.iter().flat_map(|v| v.to_le_bytes()));
        self.write(&buf)?;
        self.buf = buf;
        self.rows_left -= 1;
        Ok(())
    }

    /// Every promised row written: move the file into place; returns its sha256.
    pub fn finish(self) -> Result<String> {
        let sealed = self.seal()?;
        let sha256 = sealed.sha256.clone();
        sealed.persist()?;
        Ok(sha256)
    }

    /// Every row written: the complete file, hashed, still under its temporary name until
    /// [`Sealed::persist`] (so what describes it can be written first).
    pub fn seal(self) -> Result<Sealed> {
        if self.rows_left != 0 {
            return Err(Error::BadData {
                path: self.path.clone(),
                reason: format!("{} of {} rows never written", self.rows_left, self.shape[0]),
            });
        }
        let tmp = self.w.into_inner().map_err(|e| Error::Io { path: self.path.clone(), err: e.into_error() })?;
        Ok(Sealed { tmp, path: self.path, sha256: hex::encode(self.hash.finalize()) })
    }
}

/// A finished `.npy` waiting under its temporary name.
pub struct Sealed {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
    pub sha256: String,
}

impl Sealed {
    /// Rename it into place.
    pub fn persist(self) -> Result<()> {
        fsutil::persist(self.tmp, &self.path)
    }
}

/// A checked `.npy` of float32 rows, read one row at a time.
#[derive(Debug)]
pub struct NpyRows {
    path: PathBuf,
    file: BufReader<File>,
    data_start: u64,
    shape: Vec<usize>,
    /// The row the reader stands at.
    next: usize,
}

impl NpyRows {
    /// Open `path`, whose sha256 must be `sha256` and whose array must be float32 in C order.
    pub fn open(path: &Path, sha256: &str) -> Result<NpyRows> {
        fsutil::verify_sha256(path, sha256)?;
        Self::open_checked_before(path)
    }

    /// Open `path` without hashing it: only for a file whose sum was checked (or which was
    /// written) by this process, under the lock of its folder.
    pub fn open_checked_before(path: &Path) -> Result<NpyRows> {
        let bad = |reason: String| Error::BadData { path: path.into(), reason };
        let mut file = BufReader::new(File::open(path).at(path)?);
        let h = Header::from_reader(&mut file).map_err(|e| bad(format!("npy header: {e}")))?;
        if h.type_descriptor != f32::type_descriptor() || h.layout != Layout::Standard || h.shape.is_empty() {
            return Err(bad(format!("expected float32 rows in C order, found {h}")));
        }
        let data_start = file.stream_position().at(path)?;
        let want = data_start + 4 * h.shape.iter().product::<usize>() as u64;
        let len = file.get_ref().metadata().at(path)?.len();
        if len != want {
            return Err(bad(format!("{len} bytes, the header promises {want}")));
        }
        Ok(NpyRows { path: path.into(), file, data_start, shape: h.shape, next: 0 })
    }

    /// The array's shape (rows first).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Row `i`.
    pub fn row(&mut self, i: usize) -> Result<ArrayD<f32>> {
        let n = self.shape[0];
        if i >= n {
            return Err(Error::BadData { path: self.path.clone(), reason: format!("row {i} of {n}") });
        }
        let len: usize = self.shape[1..].iter().product();
        let mut bytes = vec![0u8; 4 * len];
        // Sequential reads (the common case) keep the reader's buffer; a seek would drop it.
        if i != self.next {
            self.file.seek(SeekFrom::Start(self.data_start + (4 * len * i) as u64)).at(&self.path)?;
        }
        self.file.read_exact(&mut bytes).at(&self.path)?;
        self.next = i + 1;
        let v = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        ArrayD::from_shape_vec(IxDyn(&self.shape[1..]), v).map_err(|e| Error::Other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Axis;

    #[test]
    fn npy_rows_stream_to_the_bytes_of_a_whole_array_and_read_back_checked() {
        use ndarray_npy::WriteNpyExt;
        let d = tempfile::tempdir().unwrap();
        let x =
            ndarray::Array::from_shape_fn((5, 2, 3, 4), |(a, b, c, e)| (a * 100 + b * 10 + c) as f32 - e as f32 / 7.0)
                .into_dyn();
        let p = d.path().join("x.npy");
        let mut w = NpyWriter::create(&p, x.shape()).unwrap();
        // A row of another shape is refused, not written.
        assert!(w.push(x.index_axis(Axis(1), 0)).is_err());
        x.outer_iter().for_each(|r| w.push(r).unwrap());
        assert!(w.push(x.index_axis(Axis(0), 0)).is_err(), "a sixth row of five");
        let sha = w.finish().unwrap();
        let mut whole = vec![];
        x.write_npy(&mut whole).unwrap();
        assert!(std::fs::read(&p).unwrap() == whole, "streamed bytes = ndarray-npy's");
        assert_eq!(sha, crate::fsutil::sha256_bytes(&whole));
        let mut r = NpyRows::open(&p, &sha).unwrap();
        assert_eq!(r.shape(), x.shape());
        for i in [4, 0, 1, 3, 3] {
            assert_eq!(r.row(i).unwrap(), x.index_axis(Axis(0), i));
        }
        assert!(r.row(5).is_err());
        // An unfinished writer leaves nothing behind; a changed file is refused by its checksum.
        let q = d.path().join("short.npy");
        let mut w = NpyWriter::create(&q, x.shape()).unwrap();
        w.push(x.index_axis(Axis(0), 0)).unwrap();
        assert!(w.finish().unwrap_err().to_string().contains("4 of 5 rows never written"));
        assert!(!q.exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "no temporary file left");
        std::fs::write(&p, &whole[..whole.len() - 4]).unwrap();
        assert!(NpyRows::open(&p, &sha).unwrap_err().to_string().contains("sha256"));
    }
}
