//! What a batch stage reads: image files named by folders (walked recursively, symlinks not
//! followed), single images, glob patterns, and list files (one path per line).

use crate::error::{Error, IoContext, Result};
use std::path::{Path, PathBuf};

/// A file that could not be listed or scored: (path, reason).
pub type Unreadable = (String, String);

/// All image files under `root` (recursively, sorted by path). Symbolic links with image names
/// are listed (decoding follows them and reports dangling links and loops); links to folders are
/// not descended into, so a link loop cannot trap the walk.
pub fn list_images(root: &Path) -> Result<(Vec<PathBuf>, Vec<Unreadable>)> {
    if !root.exists() {
        return Err(Error::BadData { path: root.into(), reason: "no such file or folder".into() });
    }
    let mut files = vec![];
    let mut errors = vec![];
    for e in walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name() {
        match e {
            Ok(e)
                if (e.file_type().is_file() || e.file_type().is_symlink())
                    && crate::imageio::is_image_path(e.path()) =>
            {
                files.push(e.into_path())
            }
            Ok(_) => {}
            Err(e) => errors.push((e.path().map(|p| p.display().to_string()).unwrap_or_default(), e.to_string())),
        }
    }
    Ok((files, errors))
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The image files named by `inputs` (folders, images, or glob patterns such as `shots/**/*.jpg`)
/// and by the lines of each `lists` file (paths as written; empty lines and `#` comments skipped;
/// every listed path must be a file — a missing one is reported, not fatal). Sorted, no duplicates.
pub fn collect(inputs: &[PathBuf], lists: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<Unreadable>)> {
    let mut files = vec![];
    let mut bad = vec![];
    for input in inputs {
        let s = input.to_string_lossy();
        if !input.exists() && is_glob(&s) {
            let paths = glob::glob(&s).map_err(|e| Error::Param {
                name: "input",
                value: s.to_string(),
                reason: format!("bad glob: {e}"),
            })?;
            let before = files.len();
            for p in paths {
                match p {
                    Ok(p) if p.is_file() => files.push(p),
                    Ok(_) => {}
                    Err(e) => bad.push((e.path().display().to_string(), e.to_string())),
                }
            }
            if files.len() == before {
                tracing::warn!("{s}: the pattern matches no file");
            }
        } else {
            let (f, b) = list_images(input)?;
            files.extend(f);
            bad.extend(b);
        }
    }
    for list in lists {
        let text = std::fs::read_to_string(list).at(list)?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let p = PathBuf::from(line);
            if p.is_file() {
                files.push(p);
            } else {
                bad.push((line.to_string(), format!("{line}: listed in {} but not a file", list.display())));
            }
        }
    }
    files.sort();
    files.dedup();
    Ok((files, bad))
}
