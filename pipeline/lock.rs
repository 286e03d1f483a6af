//! Advisory locks that keep two processes from writing the same feature cache, run or report
//! folder at once. The second process waits (logging who holds the lock) or, when
//! `TLEARN_LOCK_TIMEOUT` seconds pass (unset: as long as it takes, or a caller's bound such as a
//! download's deadline), fails with an error naming the lock and its holder.
//!
//! The lock is an OS file lock (`flock`) on a small file that records the holder's pid and
//! command line; the kernel releases it when the holder exits, even on `kill -9`, so a stale lock
//! file never blocks anybody.

use crate::error::{Error, IoContext, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Name of the lock file inside a locked folder.
pub const LOCK_FILE: &str = ".tlearn.lock";

/// Seconds to wait for a busy lock before failing (unset: wait as long as it takes).
pub const TIMEOUT_ENV: &str = "TLEARN_LOCK_TIMEOUT";

/// A held lock; released when dropped (or when the process ends, however it ends).
#[derive(Debug)]
pub struct Lock {
    _file: File,
    pub path: PathBuf,
}

/// Lock the folder `dir` (created if missing) for writing. Temporary files that a killed
/// writer left in it (`.<name>.<random>.tmp`, see [`crate::fsutil::write_atomic`]) are removed.
pub fn dir(dir: &Path) -> Result<Lock> {
    std::fs::create_dir_all(dir).at(dir)?;
    let lock = acquire(&dir.join(LOCK_FILE), None)?;
    remove_stale_temps(dir, "")?;
    Ok(lock)
}

/// Remove `.<prefix>….tmp` files in `dir`: only called with the lock that covers them held.
fn remove_stale_temps(dir: &Path, prefix: &str) -> Result<()> {
    let start = format!(".{prefix}");
    for e in std::fs::read_dir(dir).at(dir)?.filter_map(|e| e.ok()) {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(&start) && name.ends_with(".tmp") && e.file_type().is_ok_and(|t| t.is_file()) {
            tracing::debug!("{}: removing a killed writer's temporary file", e.path().display());
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Lock the output file `out` (through `<out>.lock` next to it); temporary files a killed
/// writer of `out` left next to it are removed.
pub fn file(out: &Path) -> Result<Lock> {
    file_within(out, None)
}

/// [`file`], waiting at most `default` (a duration, and what sets it) for a busy lock when
/// `TLEARN_LOCK_TIMEOUT` is unset: a holder that itself gives up within it, such as a download
/// with a deadline, is not worth waiting for longer.
pub fn file_within(out: &Path, default: Option<(Duration, &str)>) -> Result<Lock> {
    let p = crate::fsutil::with_suffix(out, ".lock");
    let dir = crate::fsutil::parent_dir(&p);
    std::fs::create_dir_all(dir).at(dir)?;
    let lock = acquire(&p, default)?;
    if let Some(name) = out.file_name().and_then(|n| n.to_str()) {
        remove_stale_temps(dir, &format!("{name}."))?;
    }
    Ok(lock)
}

/// `TLEARN_LOCK_TIMEOUT`: unset or empty = wait for ever; else seconds, a finite number ≥ 0.
pub fn timeout() -> Result<Option<Duration>> {
    let Ok(v) = std::env::var(TIMEOUT_ENV) else { return Ok(None) };
    if v.trim().is_empty() {
        return Ok(None);
    }
    match v.trim().parse::<f64>() {
        Ok(s) if (0.0..1e12).contains(&s) => Ok(Some(Duration::from_secs_f64(s))),
        _ => Err(Error::Param {
            name: TIMEOUT_ENV,
            value: v.escape_debug().to_string(),
            reason: "must be a number of seconds ≥ 0 (unset: wait for the holder)".into(),
        }),
    }
}

fn holder(f: &mut File) -> String {
    let mut s = String::new();
    let _ = f.rewind().and_then(|_| f.read_to_string(&mut s));
    let s = s.trim();
    if s.is_empty() {
        "an unknown process".into()
    } else {
        s.to_string()
    }
}

fn acquire(path: &Path, default: Option<(Duration, &str)>) -> Result<Lock> {
    let set = timeout()?;
    let limit = set.or(default.map(|d| d.0));
    let waited = match (set, default) {
        (Some(_), _) | (None, None) => format!("gave up waiting after {TIMEOUT_ENV} seconds"),
        (None, Some((l, what))) => {
            format!("gave up waiting after {:.0} s, {what}; {TIMEOUT_ENV}=SECONDS sets another wait", l.as_secs_f64())
        }
    };
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).at(path)?;
    let start = Instant::now();
    let mut told = false;
    loop {
        match f.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                let who = holder(&mut f);
                if limit.is_some_and(|l| start.elapsed() >= l) {
                    return Err(Error::Locked { path: path.into(), holder: who, waited });
                }
                if !told {
                    tracing::warn!("{}: locked by {who}; waiting for it to finish", path.display());
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(TryLockError::Error(e)) => return Err(Error::Io { path: path.into(), err: e }),
        }
    }
    let me = format!("pid {} ({})", std::process::id(), std::env::args().collect::<Vec<_>>().join(" "));
    f.set_len(0).at(path)?;
    f.rewind().at(path)?;
    f.write_all(me.as_bytes()).at(path)?;
    f.flush().at(path)?;
    if told {
        tracing::info!("{}: lock acquired after {:.1} s", path.display(), start.elapsed().as_secs_f64());
    }
    Ok(Lock { _file: f, path: path.into() })
}
