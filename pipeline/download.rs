//! Pinned downloads over HTTP(S): streamed into `<file>.part`, resumed with a `Range` request when
//! a transfer breaks (within a run, and by the next run), and renamed into place only once the
//! size and sha256 the catalog pins are both right. A file that is not the pinned one is never
//! kept, and nothing but the pinned number of bytes is ever written.

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::progress::Sink;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::Duration;

/// What to download and what it must be.
#[derive(Clone, Debug)]
pub struct Pinned<'a> {
    pub url: &'a str,
    pub bytes: u64,
    pub sha256: &'a str,
}

/// How often to try, and how long to wait before the first retry (doubled each time).
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub attempts: u32,
    pub first_wait: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { attempts: 4, first_wait: Duration::from_millis(500) }
    }
}

/// Why one attempt ended without the whole file.
enum Failure {
    /// Worth another attempt: a broken connection, a server error, a short body.
    Transient(String),
    /// Not: the file is not there, or is not what the catalog pins.
    Final(Error),
}

/// Download `p` to `dest` (replacing nothing until the file is complete and checked).
pub fn fetch(p: &Pinned, dest: &Path, retry: Retry, sink: &dyn Sink) -> Result<()> {
    let part = fsutil::with_suffix(dest, ".part");
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).at(dir)?;
    }
    let _lock = crate::lock::file(dest)?;
    // Another process may have finished it while this one waited for the lock.
    if dest.exists() {
        return Ok(());
    }
    let agent = agent();
    let mut last = String::new();
    let mut wait = retry.first_wait;
    for attempt in 1..=retry.attempts.max(1) {
        match attempt_once(&agent, p, &part, sink) {
            Ok(()) => return finish(p, &part, dest),
            Err(Failure::Final(e)) => return Err(e),
            Err(Failure::Transient(why)) => {
                last = why;
                if attempt < retry.attempts {
                    sink.note(&format!("{}: {last}; retrying in {:.1} s", p.url, wait.as_secs_f32()));
                    std::thread::sleep(wait);
                    wait *= 2;
                }
            }
        }
    }
    let have = part.metadata().map(|m| m.len()).unwrap_or(0);
    Err(Error::Download {
        url: p.url.into(),
        reason: format!(
            "{last} (after {} attempts; {have} of {} bytes kept in {}, the same command resumes)",
            retry.attempts,
            p.bytes,
            part.display()
        ),
    })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_recv_body(None)
        .timeout_per_read(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .max_redirects(10)
        .user_agent(concat!("tlearn/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// One request: resume from what `part` holds, append what the server sends.
fn attempt_once(agent: &ureq::Agent, p: &Pinned, part: &Path, sink: &dyn Sink) -> std::result::Result<(), Failure> {
    let io = |e: Error| Failure::Final(e);
    let mut have = part.metadata().map(|m| m.len()).unwrap_or(0);
    if have > p.bytes {
        have = 0;
    }
    if have == p.bytes {
        return Ok(());
    }
    let mut req = agent.get(p.url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let resp = req.call().map_err(|e| classify(p.url, e))?;
    let status = resp.status().as_u16();
    let range = content_range(&resp);
    let from = match status {
        200 => 0,
        206 if range.is_some_and(|(start, _)| start == have) => have,
        206 => return Err(restart(part, "the server resumed from another offset")),
        416 => return Err(restart(part, "the server refused the resume range")),
        s if (500..600).contains(&s) || s == 429 => return Err(Failure::Transient(format!("HTTP {s}"))),
        s => return Err(Failure::Final(not_served(p.url, s))),
    };
    // The whole file's size as the server states it: a page, a Git LFS pointer or another file
    // is refused before a byte of it is written.
    let total = if status == 206 { range.and_then(|(_, t)| t) } else { content_length(&resp) };
    if let Some(t) = total.filter(|&t| t != p.bytes) {
        let reason = format!("the server has {t} bytes there, the catalog pins {}: not the pinned file", p.bytes);
        return Err(Failure::Final(Error::Download { url: p.url.into(), reason }));
    }
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(part).at(part).map_err(io)?;
    f.set_len(from).at(part).map_err(io)?;
    f.seek(std::io::SeekFrom::Start(from)).at(part).map_err(io)?;
    let what = if from > 0 { format!("resuming {} at byte {from}", p.url) } else { format!("downloading {}", p.url) };
    let meter = sink.meter(p.bytes - from, "B", &what);
    let got = copy_capped(resp.into_body().into_reader(), &mut f, p.bytes - from, &*meter).map_err(|e| match e {
        CopyError::Read(e) => Failure::Transient(format!("transfer broke: {e}")),
        CopyError::Write(e) => Failure::Final(Error::Io { path: part.into(), err: e }),
        CopyError::TooLong => {
            let _ = std::fs::remove_file(part);
            Failure::Final(Error::Download {
                url: p.url.into(),
                reason: format!("the server sent more than the {} bytes the catalog pins", p.bytes),
            })
        }
    })?;
    f.sync_all().at(part).map_err(io)?;
    if from + got < p.bytes {
        return Err(Failure::Transient(format!("the transfer ended at {} of {} bytes", from + got, p.bytes)));
    }
    Ok(())
}

fn restart(part: &Path, why: &str) -> Failure {
    let _ = std::fs::remove_file(part);
    Failure::Transient(format!("{why}; starting over"))
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL unless `*`).
fn content_range(resp: &ureq::http::Response<ureq::Body>) -> Option<(u64, Option<u64>)> {
    let v = resp.headers().get("content-range")?.to_str().ok()?;
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let start = range.split('-').next()?.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

fn content_length(resp: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    resp.headers().get("content-length")?.to_str().ok()?.trim().parse().ok()
}

/// An answer that says the file will not come from this address.
fn not_served(url: &str, status: u16) -> Error {
    let what = match status {
        404 | 410 => "the file is not at this address",
        401 | 403 => "the server refuses it (access, rate limit or quota)",
        _ => "the server will not serve it",
    };
    Error::Download {
        url: url.into(),
        reason: format!(
            "HTTP {status}: {what}; give another base with --zoo-url, or fetch the file elsewhere and give it \
             with `tlearn-backbone fetch NAME --source FILE` (checked against the same sha256)"
        ),
    }
}

/// A request that got no response: unreachable hosts say how to get the file another way.
fn classify(url: &str, e: ureq::Error) -> Failure {
    match e {
        ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::Tls(_)
        | ureq::Error::Rustls(_)
        | ureq::Error::Timeout(ureq::Timeout::Connect) => Failure::Final(unreachable(url, &e.to_string())),
        ureq::Error::Io(ref io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            Failure::Final(unreachable(url, &e.to_string()))
        }
        ureq::Error::BadUri(_) | ureq::Error::RequireHttpsOnly(_) => {
            Failure::Final(Error::Download { url: url.into(), reason: e.to_string() })
        }
        other => Failure::Transient(other.to_string()),
    }
}

fn unreachable(url: &str, why: &str) -> Error {
    Error::Download {
        url: url.into(),
        reason: format!(
            "cannot reach it ({why}); fetch the file elsewhere, then give it with `tlearn-backbone fetch NAME --source FILE` \
             (checked against the same sha256) or register it with `tlearn-backbone add FILE`"
        ),
    }
}

enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
    TooLong,
}

/// Copy at most `cap` bytes; one byte more is an error. Returns the bytes copied.
fn copy_capped(
    mut r: impl Read,
    w: &mut impl Write,
    cap: u64,
    meter: &dyn crate::progress::Meter,
) -> std::result::Result<u64, CopyError> {
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        if n + k as u64 > cap {
            return Err(CopyError::TooLong);
        }
        w.write_all(&buf[..k]).map_err(CopyError::Write)?;
        n += k as u64;
        meter.inc(k as u64);
    }
}

/// The whole file is in `part`: check its sha256, then rename it into place. A wrong file is
/// removed (resuming it could never give the pinned one).
fn finish(p: &Pinned, part: &Path, dest: &Path) -> Result<()> {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(part).at(part)?;
    std::io::copy(&mut f, &mut h).at(part)?;
    let got = hex::encode(h.finalize());
    if got != p.sha256.to_ascii_lowercase() {
        let _ = std::fs::remove_file(part);
        return Err(Error::Download {
            url: p.url.into(),
            reason: format!("sha256 mismatch: expected {}, got {got}; the download was removed", p.sha256),
        });
    }
    std::fs::rename(part, dest).at(dest)?;
    Ok(())
}
