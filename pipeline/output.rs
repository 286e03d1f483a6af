//! Where an output goes, and what tlearn may remove.
//!
//! A regular file (or a path not there yet) is written through a temporary sibling and renamed
//! into place; a link is written at its target, never replaced; a FIFO, a device, `-` (standard
//! output) or a link into `/proc` (`/dev/stdout`) is written as a stream — renaming a file over
//! them would replace the link or the special file itself.
//!
//! A folder tlearn fills with files it names itself (Grad-CAM overlays) carries a marker,
//! [`MARKER`]; tlearn removes files there only when the marker says it owns the folder, and
//! refuses to write into a non-empty folder it does not own.

use crate::error::{Error, IoContext, Result};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Where the bytes of an output go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A regular file (or none yet) at this path, links resolved: temporary file + rename.
    File(PathBuf),
    /// A FIFO, a device or a `/proc` link: opened and written as it is, nothing renamed.
    Stream(PathBuf),
    /// `-`: this process's standard output.
    Stdout,
}

impl Target {
    /// A stream (standard output included): nothing may be written beside it, such as a lock,
    /// a journal or a summary file.
    pub fn is_stream(&self) -> bool {
        !matches!(self, Target::File(_))
    }

    /// Is this this process's standard output (`-`, `/dev/stdout`, or the very file or pipe
    /// standard output is)? A command's own report then goes to standard error.
    pub fn is_stdout(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let p = match self {
            Target::Stdout => return true,
            Target::Stream(p) | Target::File(p) => p,
        };
        match (std::fs::metadata(p), std::fs::metadata("/proc/self/fd/1")) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
}

/// How many links a path may go through (as the kernel's own limit).
const MAX_LINKS: usize = 40;

/// What `path` names as an output: see [`Target`]. A folder, a socket, a dangling link or a link
/// loop is refused with the reason and what to give instead.
pub fn target(path: &Path) -> Result<Target> {
    if path.as_os_str() == "-" {
        return Ok(Target::Stdout);
    }
    let bad =
        |p: &Path, why: &str| Error::BadData { path: p.into(), reason: format!("cannot write the output: {why}") };
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        if p.starts_with("/proc") {
            // `/dev/stdout`, `/dev/fd/1`: standard output itself, written through the inherited
            // descriptor (its offset and append mode kept); another descriptor as a stream.
            let t = Target::Stream(path.into());
            return Ok(if t.is_stdout() { Target::Stdout } else { t });
        }
        let meta = match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A link to a file not there yet is written there; tlearn makes no folder a link
                // points into.
                let folder = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                if p != path && !folder.is_dir() {
                    let why = format!(
                        "it is a link to {}, whose folder does not exist; give another path or remove the link",
                        p.display()
                    );
                    return Err(bad(path, &why));
                }
                return Ok(Target::File(p));
            }
            other => other.at(&p)?,
        };
        let t = meta.file_type();
        if t.is_symlink() {
            let to = std::fs::read_link(&p).at(&p)?;
            // Joined to the link's real folder (`/dev/fd` is itself a link into `/proc`).
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            p = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()).join(to);
            continue;
        }
        return if t.is_file() {
            Ok(Target::File(p))
        } else if t.is_fifo() || t.is_char_device() || t.is_block_device() {
            Ok(Target::Stream(p))
        } else if t.is_dir() {
            Err(bad(path, "it is a folder; give a file name"))
        } else {
            Err(bad(path, "it is a socket; give a file, a FIFO or `-` (standard output)"))
        };
    }
    Err(bad(path, "too many links (a loop?)"))
}

/// Write a stream target as it is (no create, no truncate: a FIFO or device stays what it is).
pub fn write_stream(t: &Target, write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>) -> Result<()> {
    use std::io::Write;
    match t {
        Target::Stdout => {
            let mut out = std::io::stdout().lock();
            write(&mut out).and_then(|_| out.flush()).at(Path::new("-"))
        }
        Target::Stream(p) => {
            let f = std::fs::OpenOptions::new().append(true).open(p).at(p)?;
            let mut w = std::io::BufWriter::new(f);
            write(&mut w).and_then(|_| w.flush()).at(p)
        }
        Target::File(p) => Err(Error::Other(format!("{}: a regular file is written atomically", p.display()))),
    }
}

/// The file that marks a folder as tlearn's own.
pub const MARKER: &str = ".tlearn-owned";

/// Take `dir` for files tlearn names itself (`what` says which, recorded in the marker): a new
/// or empty folder is created and marked; a marked one is taken as it is; a folder holding
/// anything else is refused, since its files are not tlearn's to replace or remove. `legacy`
/// recognises a folder an earlier tlearn filled before folders were marked.
pub fn claim_dir(dir: &Path, what: &str, legacy: impl Fn(&Path) -> bool) -> Result<()> {
    std::fs::create_dir_all(dir).at(dir)?;
    let marker = dir.join(MARKER);
    if marker.is_file() {
        return Ok(());
    }
    // The marker itself may have just been made by another shard claiming the folder at once.
    let mut entries = std::fs::read_dir(dir).at(dir)?.filter_map(|e| e.ok()).filter(|e| e.file_name() != MARKER);
    if entries.next().is_some() && !legacy(dir) && !marker.is_file() {
        return Err(Error::BadData {
            path: dir.into(),
            reason: format!(
                "the folder holds files tlearn did not write (it has no {MARKER}); give a new or empty folder for {what}, \
                 or move those files away"
            ),
        });
    }
    // create_new: shards claiming one folder at once all succeed, none truncates another's.
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&marker) {
        Ok(mut f) => std::io::Write::write_all(&mut f, format!("{what}, written by tlearn\n").as_bytes()).at(&marker),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::Io { path: marker, err: e }),
    }
}

/// Remove the files of `dir` that `ours` recognises by name, and only when `dir` carries the
/// marker (a folder tlearn does not own loses nothing). Returns how many went.
pub fn remove_own_files(dir: &Path, ours: impl Fn(&str) -> bool) -> Result<usize> {
    if !dir.join(MARKER).is_file() {
        return Ok(0);
    }
    remove_files_named(dir, ours)
}

/// Remove the plain files of `dir` whose names `ours` recognises (never a folder, never a link's
/// target); returns how many went.
pub fn remove_files_named(dir: &Path, ours: impl Fn(&str) -> bool) -> Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir).at(dir)?.filter_map(|e| e.ok()) {
        let is_file = e.file_type().is_ok_and(|t| t.is_file());
        if is_file && e.file_name().to_str().is_some_and(&ours) {
            let p = e.path();
            std::fs::remove_file(&p).at(&p)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Is `name` an overlay name tlearn gives (`NNNNN-<stem>.png`, after an optional shard prefix
/// `I-of-N-`; the stem of ASCII letters, digits, `-` and `_`)?
pub fn is_overlay_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".png") else { return false };
    let rest = match shard_prefix_len(stem) {
        Some(k) => &stem[k..],
        None => stem,
    };
    let b = rest.as_bytes();
    b.len() > 5
        && b[..5].iter().all(u8::is_ascii_digit)
        && b[5] == b'-'
        && b[6..].iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// The length of a leading `I-of-N-` (digits), if there is one.
fn shard_prefix_len(s: &str) -> Option<usize> {
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let i = digits(s);
    let rest = s.get(i..)?.strip_prefix("-of-")?;
    let n = digits(rest);
    let after = rest.get(n..)?.strip_prefix('-')?;
    // `00001-of-…` would be an overlay's own number: a prefix has at least one digit each side,
    // and what follows it must still hold the overlay's number.
    (i > 0 && n > 0 && after.len() >= 5).then(|| s.len() - after.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_names_are_recognised_and_nothing_else() {
        assert!(is_overlay_name("00007-cat.png"));
        assert!(is_overlay_name("1-of-4-00012-cat_1.png"));
        let others = ["photo.png", "0001-a.png", "00001-a.jpg", "00001-a b.png", "../00001-a.png", "00001-a.png.png"];
        for other in
            others.into_iter().chain(["фото.png", "日本.png", "0000日-a.png", "00001-日.png", "1-of-4-0001-a.png"])
        {
            assert!(!is_overlay_name(other), "{other}");
        }
    }
}
