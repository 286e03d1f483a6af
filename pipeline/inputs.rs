//! What a batch stage reads: image files named by folders (walked recursively, symlinks not
//! followed), single images, glob patterns, and list files (one path per line).

use crate::error::{Error, IoContext, Result};
use std::path::{Path, PathBuf};

/// A file that could not be listed or scored: (path, reason).
pub type Unreadable = (String, String);

/// What a walk of folders found: the image files, what could not be listed, and the files it
/// left out for their names (not an image extension).
#[derive(Debug, Default)]
pub struct Listed {
    pub files: Vec<PathBuf>,
    pub unreadable: Vec<Unreadable>,
    pub not_images: Vec<PathBuf>,
    /// The inputs that named no image file, each with why (a pattern that matches nothing, a
    /// folder without images, a list naming nothing).
    pub empty: Vec<String>,
}

impl Listed {
    /// The error when no image of these inputs could be read (`unreadable`: every file that could
    /// not, as listed or as decoded), with every reason, one a line.
    pub fn nothing_read(&self, unreadable: &[Unreadable]) -> Error {
        Error::Other(format!("no image could be read:\n  {}", self.reasons(unreadable).join("\n  ")))
    }

    /// Why nothing could be read, one reason a line: the unreadable files, the inputs that named
    /// no image, and the files left out for their names.
    fn reasons(&self, unreadable: &[Unreadable]) -> Vec<String> {
        let mut out: Vec<String> = unreadable.iter().map(|(_, why)| why.clone()).collect();
        out.extend(self.empty.iter().cloned());
        if !self.not_images.is_empty() {
            let shown: Vec<String> = self.not_images.iter().take(3).map(|p| p.display().to_string()).collect();
            out.push(format!(
                "{} file(s) left out for their names (images end in .{}): {}{}",
                self.not_images.len(),
                crate::imageio::IMAGE_EXTENSIONS.join(", ."),
                shown.join(", "),
                if self.not_images.len() > 3 { ", …" } else { "" }
            ));
        }
        out
    }
}

/// All image files under `root` (recursively, sorted by path). Symbolic links with image names
/// are listed (decoding follows them and reports dangling links and loops); links to folders are
/// not descended into, so a link loop cannot trap the walk. Files with other names are left out
/// and returned as such.
pub fn list_images(root: &Path) -> Result<Listed> {
    if !root.exists() {
        return Err(Error::BadData { path: root.into(), reason: "no such file or folder".into() });
    }
    let mut files = vec![];
    let mut errors = vec![];
    let mut not_images = vec![];
    for e in walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name() {
        match e {
            Ok(e) if e.depth() == 0 && e.file_type().is_dir() => {}
            Ok(e) if !crate::imageio::is_image_path(e.path()) => {
                if !e.file_type().is_dir() {
                    not_images.push(e.into_path());
                }
            }
            Ok(e) if e.file_type().is_file() || e.file_type().is_symlink() => files.push(e.into_path()),
            Ok(e) => errors.push(not_a_file(e.path())),
            Err(e) => errors.push((e.path().map(crate::fsutil::path_text).unwrap_or_default(), e.to_string())),
        }
    }
    Ok(Listed { files, unreadable: errors, not_images, empty: vec![] })
}

/// Why a path named like an image is not scored: a folder, a FIFO or device, a dangling link.
fn not_a_file(p: &Path) -> Unreadable {
    let t = crate::fsutil::path_text(p);
    let what = match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => "a link to a folder".to_string(),
            Ok(_) => "a link to something that is not a regular file".to_string(),
            Err(e) => format!("a link that does not resolve ({e})"),
        },
        Ok(m) if m.is_dir() => "a folder, not an image file".into(),
        Ok(_) => "not a regular file (a FIFO, socket or device)".into(),
        Err(e) => e.to_string(),
    };
    (t.clone(), format!("{t}: {what}"))
}

/// The paths matching a glob pattern, sorted. Walked here rather than by the glob crate, whose
/// walk drops every name that is not UTF-8: such names are matched by their lossy text (invalid
/// bytes become U+FFFD, which `*` matches) and kept with their real bytes.
fn glob_paths(pattern: &str) -> Result<Vec<std::result::Result<PathBuf, walkdir::Error>>> {
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let pat = glob::Pattern::new(pattern).map_err(|e| Error::Param {
        name: "input",
        value: pattern.to_string(),
        reason: format!("bad glob: {e}"),
    })?;
    let comps: Vec<&str> = pattern.split('/').collect();
    let literal = comps.iter().take_while(|c| !is_glob(c)).count();
    let base = if literal == 0 {
        PathBuf::from(".")
    } else if comps[..literal].join("/").is_empty() {
        PathBuf::from("/")
    } else {
        PathBuf::from(comps[..literal].join("/"))
    };
    if !base.exists() {
        return Ok(vec![]);
    }
    let depth = if pattern.contains("**") { usize::MAX } else { comps.len() - literal };
    let mut out = vec![];
    let spell = |p: &Path| -> PathBuf {
        let rel = p.strip_prefix(&base).unwrap_or(p);
        if literal == 0 {
            rel.to_path_buf()
        } else {
            base.join(rel)
        }
    };
    // Links to folders are followed, as the glob crate does (walkdir reports loops).
    for e in walkdir::WalkDir::new(&base).min_depth(1).max_depth(depth).follow_links(true).sort_by_file_name() {
        match e {
            Ok(e) => {
                let spelled = spell(e.path());
                if pat.matches_with(&spelled.to_string_lossy(), opts) {
                    out.push(Ok(spelled));
                }
            }
            Err(e) if e.path().is_none_or(|p| pat.matches_with(&spell(p).to_string_lossy(), opts)) => out.push(Err(e)),
            Err(_) => {}
        }
    }
    Ok(out)
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The image files named by `inputs` (folders, images, or glob patterns such as `shots/**/*.jpg`)
/// and by each `lists` file ([`list_file`]; a listed path that is not a file is reported, not
/// fatal). Sorted, no duplicates; `not_images`: what folder walks left out for its name.
pub fn collect(inputs: &[PathBuf], lists: &[PathBuf]) -> Result<Listed> {
    let (mut files, mut bad, mut not_images, mut empty) = (vec![], vec![], vec![], vec![]);
    for input in inputs {
        let s = input.to_string_lossy();
        if !input.exists() && is_glob(&s) {
            let paths = glob_paths(&s)?;
            let before = files.len();
            for p in paths {
                match p {
                    Ok(p) if p.is_file() => files.push(p),
                    // Folders the pattern also matches are not inputs, unless named like images.
                    Ok(p) if p.is_dir() && !crate::imageio::is_image_path(&p) => {}
                    Ok(p) => bad.push(not_a_file(&p)),
                    Err(e) => bad.push((e.path().map(crate::fsutil::path_text).unwrap_or_default(), e.to_string())),
                }
            }
            if files.len() == before {
                tracing::warn!("{s}: the pattern matches no file");
                empty.push(format!("{s}: the pattern matches no file"));
            }
        } else {
            let listed = list_images(input)?;
            if listed.files.is_empty() && listed.unreadable.is_empty() {
                empty.push(match (input.is_dir(), listed.not_images.len()) {
                    (true, 0) => format!("{}: a folder without files", input.display()),
                    (true, n) => format!("{}: a folder without images ({n} file(s) with other names)", input.display()),
                    (false, _) => format!("{}: not named as an image", input.display()),
                });
            }
            files.extend(listed.files);
            bad.extend(listed.unreadable);
            not_images.extend(listed.not_images);
        }
    }
    for list in lists {
        let (f, b) = list_file(list)?;
        if f.is_empty() && b.is_empty() {
            empty.push(format!("{}: lists no file", list.display()));
        }
        files.extend(f);
        bad.extend(b);
    }
    files.sort();
    files.dedup();
    Ok(Listed { files, unreadable: bad, not_images, empty })
}

/// The paths a list file names. Each line is one path as written, only its line end (`\n` or
/// `\r\n`) removed: spaces, a leading `#` and bytes that are not UTF-8 are part of the path.
/// A line that names no file as written but does once tlearn's own escapes (`\\`, `\xHH`, as
/// in `scores.csv`) are read is that file. Empty lines are skipped (and counted in the log). A
/// tlearn scores file (CSV with its header, or JSON lines) lists the paths of its rows, so the
/// output of one scoring run is a list for the next.
pub fn list_file(list: &Path) -> Result<(Vec<PathBuf>, Vec<Unreadable>)> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = std::fs::read(list).at(list)?;
    let (mut files, mut bad, mut empty) = (vec![], vec![], 0usize);
    for (n, line) in list_lines(&bytes, list)? {
        if line.is_empty() {
            empty += 1;
            continue;
        }
        let as_written = PathBuf::from(std::ffi::OsStr::from_bytes(&line));
        let unescaped = std::str::from_utf8(&line).ok().map(crate::fsutil::text_path);
        match [Some(as_written.clone()), unescaped].into_iter().flatten().find(|p| p.is_file()) {
            Some(p) => files.push(p),
            None => {
                let shown = crate::fsutil::path_text(&as_written);
                bad.push((shown.clone(), format!("{} line {n}: {shown} is not a file", list.display())));
            }
        }
    }
    if empty > 0 {
        tracing::info!("{}: {empty} empty line(s) skipped", list.display());
    }
    Ok((files, bad))
}

/// (line number, path bytes) of a list: plain lines, or the `path` cells of a scores file.
fn list_lines(bytes: &[u8], list: &Path) -> Result<Vec<(usize, Vec<u8>)>> {
    let bad = |n: usize, e: &dyn std::fmt::Display| crate::error::Error::BadData {
        path: list.into(),
        reason: format!("line {n}: {e} (a scores file's rows must keep their form to be read as a list)"),
    };
    let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    if first.starts_with(b"path,class,probability") {
        let mut out = vec![];
        for (i, rec) in csv::Reader::from_reader(bytes).byte_records().enumerate() {
            let rec = rec.map_err(|e| bad(i + 2, &e))?;
            // The record's own line (a quoted cell may hold line breaks).
            let n = rec.position().map_or(i + 2, |p| p.line() as usize);
            let cell = rec.get(0).unwrap_or_default();
            let cell = std::str::from_utf8(cell).map_err(|e| bad(n, &e))?;
            out.push((n, crate::fsutil::csv_uncell(cell).as_bytes().to_vec()));
        }
        return Ok(out);
    }
    let json_row = |l: &[u8]| serde_json::from_slice::<serde_json::Value>(l).is_ok_and(|v| v["path"].is_string());
    if first.starts_with(b"{") && json_row(first) {
        let mut out = vec![];
        for (i, line) in bytes.split(|&b| b == b'\n').enumerate().filter(|(_, l)| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| bad(i + 1, &e))?;
            let p = v.get("path").and_then(|p| p.as_str()).ok_or_else(|| bad(i + 1, &"no \"path\" string"))?;
            out.push((i + 1, p.as_bytes().to_vec()));
        }
        return Ok(out);
    }
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if bytes.ends_with(b"\n") {
        lines.pop();
    }
    Ok(lines.into_iter().enumerate().map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l).to_vec())).collect())
}
