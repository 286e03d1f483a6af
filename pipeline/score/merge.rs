//! `tlearn-score merge`: combine the outputs of `--shard I/N` runs into what one run writes.

use super::{csv_line, summary_path, Format, ScoreSummary};
use crate::error::{Error, IoContext, Result};
use std::path::{Path, PathBuf};

/// Rows of a score output as (path, row bytes), in file order.
type Rows = Box<dyn Iterator<Item = Result<(PathBuf, Vec<u8>)>>>;

/// One output's rows.
fn rows_of(path: &Path, format: Format) -> Result<Rows> {
    let f = std::fs::File::open(path).at(path)?;
    let p = path.to_path_buf();
    Ok(match format {
        Format::Csv => {
            let r = csv::ReaderBuilder::new().has_headers(true).from_reader(std::io::BufReader::new(f));
            Box::new(r.into_byte_records().map(move |rec| {
                let rec = rec.map_err(|e| Error::BadData { path: p.clone(), reason: e.to_string() })?;
                let first = String::from_utf8_lossy(rec.get(0).unwrap_or_default()).into_owned();
                let key = crate::fsutil::text_path(crate::fsutil::csv_uncell(&first));
                Ok((key, csv_line(rec.iter())))
            }))
        }
        Format::Jsonl => {
            use std::io::BufRead;
            Box::new(std::io::BufReader::new(f).lines().map(move |line| {
                let line = line.at(&p)?;
                let v: serde_json::Value = serde_json::from_str(&line)
                    .map_err(|e| Error::BadData { path: p.clone(), reason: format!("bad JSON line: {e}") })?;
                let key = v
                    .get("path")
                    .and_then(|x| x.as_str())
                    .ok_or_else(|| Error::BadData { path: p.clone(), reason: "a JSON line without \"path\"".into() })?;
                Ok((crate::fsutil::text_path(key), format!("{line}\n").into_bytes()))
            }))
        }
    })
}

/// Combine the outputs of `tlearn-score --shard I/N` runs (all N of them, each with its
/// `.summary.json`) into `out`: byte for byte what one unsharded run writes.
pub fn merge(parts: &[PathBuf], out: &Path) -> Result<ScoreSummary> {
    let sums: Vec<ScoreSummary> =
        parts.iter().map(|p| crate::fsutil::read_json(&summary_path(p))).collect::<Result<_>>()?;
    check_parts(&sums, parts, out)?;
    let first = &sums[0];
    // A stream output (`-`, a FIFO, a device) gets no lock and no summary beside it.
    let stream = crate::output::target(out)?.is_stream();
    let _lock = if stream { None } else { Some(crate::lock::file(out)?) };
    let (header_bytes, mut iters) = open_parts(parts, first.format)?;
    let mut summary = ScoreSummary {
        model_sha256: first.model_sha256.clone(),
        format: first.format,
        threshold: first.threshold,
        top_k: first.top_k,
        inputs_sha256: first.inputs_sha256.clone(),
        ..Default::default()
    };
    for s in &sums {
        summary.add(s.scored, s.per_class.clone(), s.unreadable.clone());
    }
    summary.sort_unreadable();
    crate::fsutil::write_atomic(out, |w| {
        w.write_all(header_bytes.as_deref().unwrap_or_default())?;
        let rows = k_way(&mut iters, w)?;
        // Checked before the merged file replaces anything.
        if rows != summary.scored {
            return Err(std::io::Error::other(format!(
                "the parts hold {rows} rows but their summaries count {} scored",
                summary.scored
            )));
        }
        Ok(())
    })?;
    if !stream {
        crate::fsutil::write_json(&summary_path(out), &summary)?;
    }
    Ok(summary)
}

/// The parts: a complete shard set, none of them (or their summaries) the output, all scored from
/// the same inputs with the same model and options.
fn check_parts(sums: &[ScoreSummary], parts: &[PathBuf], out: &Path) -> Result<()> {
    let shards: Vec<_> = sums.iter().map(|s| s.shard).collect();
    crate::shard::check_parts(&shards, parts, "summary", out)?;
    let summaries: Vec<PathBuf> = parts.iter().map(|p| summary_path(p)).collect();
    let inputs: Vec<&Path> = parts.iter().chain(&summaries).map(|p| p.as_path()).collect();
    crate::fsutil::check_output_apart(out, &inputs)?;
    crate::fsutil::check_output_apart(&summary_path(out), &inputs)?;
    let first = &sums[0];
    for (s, p) in sums.iter().zip(parts) {
        if s.inputs_sha256.is_none() || s.inputs_sha256 != first.inputs_sha256 {
            return Err(Error::BadData {
                path: p.clone(),
                reason: format!("scored other inputs than {} (or recorded none)", parts[0].display()),
            });
        }
        if (s.model_sha256.as_str(), s.format, s.threshold, s.top_k)
            != (first.model_sha256.as_str(), first.format, first.threshold, first.top_k)
        {
            return Err(Error::BadData {
                path: p.clone(),
                reason: format!("scored with another model or other options than {}", parts[0].display()),
            });
        }
    }
    Ok(())
}

/// Each part's rows, and the CSV header they share (JSON lines have none).
fn open_parts(parts: &[PathBuf], format: Format) -> Result<(Option<Vec<u8>>, Vec<Rows>)> {
    let mut header_bytes: Option<Vec<u8>> = None;
    let mut iters = vec![];
    for p in parts {
        if format == Format::Csv {
            let bad = |reason: String| Error::BadData { path: p.clone(), reason };
            let mut r = csv::Reader::from_path(p).map_err(|e| bad(e.to_string()))?;
            let h = csv_line(r.byte_headers().map_err(|e| bad(e.to_string()))?.iter());
            match &header_bytes {
                Some(x) if *x != h => return Err(bad("other CSV columns than the first part".into())),
                _ => header_bytes = Some(h),
            }
        }
        iters.push(rows_of(p, format)?);
    }
    Ok((header_bytes, iters))
}

/// k-way merge of the parts' rows in path order (the order one run sorts its files in) into `w`;
/// returns the rows written.
fn k_way(iters: &mut [Rows], w: &mut dyn std::io::Write) -> std::io::Result<usize> {
    let next = |it: &mut Rows| -> std::io::Result<_> {
        it.next().transpose().map_err(|e| std::io::Error::other(e.to_string()))
    };
    let mut heads = iters.iter_mut().map(next).collect::<std::io::Result<Vec<_>>>()?;
    let mut rows = 0usize;
    while let Some(k) = (0..heads.len())
        .filter(|&k| heads[k].is_some())
        .min_by(|&a, &b| heads[a].as_ref().map(|h| &h.0).cmp(&heads[b].as_ref().map(|h| &h.0)))
    {
        let (_, bytes) = heads[k].take().expect("some");
        w.write_all(&bytes)?;
        rows += 1;
        heads[k] = next(&mut iters[k])?;
    }
    Ok(rows)
}
