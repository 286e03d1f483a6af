//! File-system helpers shared by every stage: atomic writes, hashes, JSON sidecars.

use crate::error::{Error, IoContext, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Write a file through a temporary sibling and rename it into place, so a reader never sees a
/// half-written result and an interrupted run leaves the previous file intact. A link is written
/// at its target (the link stays); a FIFO, a device or `-` is written as a stream
/// ([`crate::output::target`]).
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let path = match crate::output::target(path)? {
        crate::output::Target::File(p) => p,
        stream => return crate::output::write_stream(&stream, write),
    };
    let path = path.as_path();
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).at(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", path.file_name().and_then(|n| n.to_str()).unwrap_or("out")))
        .suffix(".tmp")
        .tempfile_in(dir)
        .at(dir)?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        write(&mut w).at(path)?;
        w.flush().at(path)?;
    }
    persist(tmp, path)
}

/// Move a finished temporary file into place (synced, mode 0644).
pub fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file().sync_all().at(path)?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644)).at(path)?;
    tmp.persist(path).map_err(|e| Error::Io { path: path.to_path_buf(), err: e.error })?;
    Ok(())
}

/// A writer that hashes what passes through it.
pub struct Hashing<'h, W: Write> {
    pub inner: W,
    pub hash: &'h mut Sha256,
}

impl<W: Write> Write for Hashing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Rows (any serialisable records; a struct's fields give the header) as CSV bytes; `path` is
/// where they are going, named in errors.
pub fn csv_bytes<R: serde::Serialize>(path: &Path, rows: impl IntoIterator<Item = R>) -> Result<Vec<u8>> {
    let bad =
        |e: &dyn std::fmt::Display| Error::BadData { path: path.into(), reason: format!("cannot write CSV: {e}") };
    let mut w = csv::Writer::from_writer(vec![]);
    for r in rows {
        w.serialize(r).map_err(|e| bad(&e))?;
    }
    w.into_inner().map_err(|e| bad(&e))
}

/// Pretty JSON, written atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(path, |w| {
        w.write_all(text.as_bytes())?;
        w.write_all(b"\n")
    })
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).at(path)?;
    serde_json::from_str(&text).map_err(|e| Error::BadData { path: path.into(), reason: format!("bad JSON: {e}") })
}

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).at(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Fail with a clear error when a file's sha256 differs from the pinned one.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    let got = sha256_file(path)?;
    if got != expected.to_ascii_lowercase() {
        return Err(Error::Checksum { path: path.into(), expected: expected.into(), got });
    }
    Ok(())
}

/// `path` with `suffix` appended to its file name: `scores.csv` + `.lock` → `scores.csv.lock`.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The folder a file is in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The sidecar of an artifact: `<file>.json` next to it.
pub fn sidecar_path(artifact: &Path) -> PathBuf {
    with_suffix(artifact, ".json")
}

/// Join a user-controlled relative name under `root`, refusing anything that would escape it.
pub fn safe_join(root: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(Error::BadData { path: root.join(rel), reason: "name escapes the output folder".into() });
    }
    Ok(root.join(p))
}

/// Check a user-chosen name that becomes one path component (a run, a backbone): one plain file
/// name, not hidden, without control characters, so `runs/<name>` stays inside `runs/`.
pub fn check_name(what: &'static str, name: &str) -> Result<()> {
    let p = Path::new(name);
    let one = p.components().count() == 1 && matches!(p.components().next(), Some(std::path::Component::Normal(_)));
    if !one || name.starts_with('.') || name.contains('/') || name.chars().any(char::is_control) {
        return Err(Error::Param {
            name: what,
            value: name.escape_debug().to_string(),
            reason: "must be a plain name (one path component, no leading dot or control characters)".into(),
        });
    }
    Ok(())
}

/// [`check_name`] for a name read from `file` (a sidecar, a run record): names from files are
/// checked like names given on the command line, and the error names the file.
pub fn check_name_in(file: &Path, what: &'static str, name: &str) -> Result<()> {
    check_name(what, name).map_err(|e| Error::BadData { path: file.into(), reason: e.to_string() })
}

/// `path` made absolute and with every link resolved that exists so far: the real path of an
/// existing file, or the real folder of a path to be created followed by its remaining components
/// (a `..` among those steps back, as it will once the folders before it are created).
pub fn real_path(path: &Path) -> PathBuf {
    use std::path::Component;
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")).join(path)
    };
    let mut cur = PathBuf::from("/");
    let mut exists = true;
    for c in abs.components() {
        match c {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir if !exists => {
                cur.pop();
                exists = cur.exists();
                if exists {
                    cur = std::fs::canonicalize(&cur).unwrap_or(cur);
                }
            }
            c => {
                let next = cur.join(c);
                match exists.then(|| std::fs::canonicalize(&next)) {
                    Some(Ok(real)) => cur = real,
                    _ => {
                        exists = false;
                        cur = next;
                    }
                }
            }
        }
    }
    cur
}

/// Refuse an output that is, contains, or lies inside one of the `inputs` (compared by real
/// path, so `data/x`, `./data/x` and a link to it are one place). Checked before anything is
/// written or replaced, so `--force` can never remove what a stage reads.
pub fn check_output_apart(output: &Path, inputs: &[&Path]) -> Result<()> {
    let out = real_path(output);
    for input in inputs {
        let inp = real_path(input);
        let why = if out == inp {
            "is the input"
        } else if out.starts_with(&inp) {
            "lies inside the input"
        } else if inp.starts_with(&out) {
            "contains the input"
        } else {
            continue;
        };
        return Err(Error::BadData {
            path: output.into(),
            reason: format!("the output {why} {} (outputs never replace or overwrite inputs)", input.display()),
        });
    }
    Ok(())
}

/// A path as text in CSV and JSON outputs: UTF-8 as it is, with two escapes that make every byte
/// string recoverable ([`text_path`]): a backslash is written `\\`, a byte that is not part of
/// valid UTF-8 is written `\xHH`. So distinct files never share a row's path.
pub fn path_text(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        out.push_str(&chunk.valid().replace('\\', "\\\\"));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The path a [`path_text`] string stands for.
pub fn text_path(text: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') && i + 4 <= b.len() {
            match std::str::from_utf8(&b[i + 2..i + 4]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) => {
                    out.push(v);
                    i += 4;
                }
                None => {
                    out.push(b[i]);
                    i += 1;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// A text CSV cell that spreadsheets will not execute (OWASP "CSV injection"): a value starting
/// with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'` — and so does one
/// starting with `'`, so [`csv_uncell`] recovers every value exactly. Numbers are never passed
/// here; JSON-lines outputs keep values as they are.
pub fn csv_cell(s: &str) -> std::borrow::Cow<'_, str> {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r', '\'']) {
        std::borrow::Cow::Owned(format!("'{s}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// The value a [`csv_cell`] stands for.
pub fn csv_uncell(s: &str) -> &str {
    s.strip_prefix('\'').unwrap_or(s)
}

/// Does the file at `path` start with the line `header` (tlearn's own CSV header: proof that
/// tlearn wrote it)? False when it cannot be read.
pub fn starts_with_line(path: &Path, header: &str) -> bool {
    use std::io::BufRead;
    let Ok(f) = std::fs::File::open(path) else { return false };
    let mut first = String::new();
    let limit = header.len() as u64 + 2;
    std::io::BufReader::new(f).take(limit).read_line(&mut first).is_ok()
        && first.trim_end_matches(['\r', '\n']) == header
}

/// Read a file whose sha256 was recorded, failing when it changed since.
pub fn read_verified(path: &Path, expected: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).at(path)?;
    let got = sha256_bytes(&bytes);
    if got != expected.to_ascii_lowercase() {
        return Err(Error::Checksum { path: path.into(), expected: expected.into(), got });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_keeps_the_old_file_when_interrupted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.npy");
        write_bytes_atomic(&p, b"old").unwrap();
        let r = write_atomic(&p, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("killed"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "no temp file left behind");
    }

    #[test]
    fn names_cannot_escape_the_output_folder() {
        let root = Path::new("/tmp/out");
        assert!(safe_join(root, "../x").is_err());
        assert!(safe_join(root, "/etc").is_err());
        assert_eq!(safe_join(root, "cat/a.jpg").unwrap(), root.join("cat/a.jpg"));
    }

    /// Paths as text (a CSV cell, a JSON string) and back: bytes that are not UTF-8 and
    /// backslashes keep their bytes.
    #[test]
    fn escaped_text_and_paths_round_trip() {
        use std::os::unix::ffi::OsStrExt;
        let odd = Path::new(std::ffi::OsStr::from_bytes(b"odd/x\xff.png"));
        for p in
            [odd, Path::new("a\\b\\\\x41.png"), Path::new("plain/a b.jpg"), Path::new("=1+1.png"), Path::new("'q.png")]
        {
            assert_eq!(text_path(&path_text(p)), p);
            assert_eq!(text_path(csv_uncell(&csv_cell(&path_text(p)))), p);
        }
    }
}
