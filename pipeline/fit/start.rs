//! Where a fit starts: its folder claimed (locked), the settings of an earlier start compared
//! (the same command continues; other settings are refused, naming them), `--restart` deleting
//! only what a fit writes.

use super::job::FitJob;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::runs::fit::{FitSettings, FEATURES, FINAL_RUN, HEAD_RUN, PLAN, SETTINGS, SPLIT, TUNE_RUN};
use crate::runtime::{Precision, SessionOptions};
use std::path::Path;

/// What a fit writes in its folder besides the fold folders (`fold-<k>`).
const WRITTEN: &[&str] = &[SPLIT, FEATURES, HEAD_RUN, TUNE_RUN, FINAL_RUN];

/// Claim the fit's folder: lock it, then check or record the settings.
pub(super) fn begin(job: &FitJob) -> Result<crate::lock::Lock> {
    let dir = &job.run_dir;
    let inputs: Vec<&Path> = vec![&job.settings.data, &job.onnx_dir];
    fsutil::check_output_apart(dir, &inputs)?;
    std::fs::create_dir_all(dir).at(dir)?;
    let lock = crate::lock::dir(dir)?;
    let path = dir.join(SETTINGS);
    // A folder with fit.json is a fit's: what else it holds is the user's, kept.
    let restarted = job.restart && path.is_file();
    if restarted {
        clear(dir)?;
    }
    if path.is_file() {
        let before: FitSettings = fsutil::read_json(&path)?;
        let all = settings_changes(&before, &job.settings);
        // Until a plan is made from it, the budget may change (a budget refused as too small).
        let replan = !planned(dir)?;
        let changes: Vec<&String> = all.iter().filter(|c| !(replan && c.starts_with("budget:"))).collect();
        if !changes.is_empty() {
            return Err(Error::BadData {
                path,
                reason: format!(
                    "this fit was started with other settings ({}); rerun it as it was to continue, or add \
                     --restart to start over (deleting what it wrote in {})",
                    changes.iter().map(|c| c.as_str()).collect::<Vec<_>>().join("; "),
                    dir.display()
                ),
            });
        }
        if !all.is_empty() {
            fsutil::write_json(&path, &*job.settings)?;
        }
        return Ok(lock);
    }
    if let Some(other) = foreign_entry(dir)?.filter(|_| !restarted) {
        return Err(Error::BadData {
            path: other,
            reason: format!(
                "{} holds files that are not a fit's; choose another --run (or --runs folder)",
                dir.display()
            ),
        });
    }
    fsutil::write_json(&path, &*job.settings)?;
    Ok(lock)
}

/// What the fit in `dir` trains in for `session`'s `--precision`: `auto` continues a started fit
/// at the precision its `fit.json` records, so that the same command continues it on a machine
/// where auto would resolve otherwise ([`SessionOptions::continuing_precision`]).
pub fn precision(dir: &Path, restart: bool, session: &SessionOptions) -> Result<Precision> {
    let path = dir.join(SETTINGS);
    let recorded = match restart || !path.is_file() {
        true => None,
        false => Some(fsutil::read_json::<FitSettings>(&path)?.precision),
    };
    session.continuing_precision(recorded, &path)
}

/// Has a fit in `dir` (or one of its folds) made its budget's plan?
fn planned(dir: &Path) -> Result<bool> {
    if dir.join(PLAN).is_file() {
        return Ok(true);
    }
    for e in std::fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        if e.file_name().to_string_lossy().starts_with("fold-") && e.path().join(PLAN).is_file() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Settings that differ, as `name: before → now`.
pub fn settings_changes(before: &FitSettings, now: &FitSettings) -> Vec<String> {
    let (a, b) = (serde_json::to_value(before).unwrap_or_default(), serde_json::to_value(now).unwrap_or_default());
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else { return vec![] };
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let none = serde_json::Value::Null;
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} → {}", a.get(k).unwrap_or(&none), b.get(k).unwrap_or(&none)))
        .collect()
}

/// The first entry of `dir` a fit does not write (the lock file aside).
fn foreign_entry(dir: &Path) -> Result<Option<std::path::PathBuf>> {
    for e in std::fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !is_written(&name) && !name.starts_with('.') {
            return Ok(Some(e.path()));
        }
    }
    Ok(None)
}

/// Is `name` an entry a fit writes in its folder?
fn is_written(name: &str) -> bool {
    let files = [SETTINGS, PLAN, crate::runs::RECORD, crate::runs::MODEL];
    WRITTEN.contains(&name)
        || files.contains(&name)
        || name.starts_with(super::budget::REHEARSAL)
        || name == format!("{}.json", crate::runs::MODEL)
        || name.strip_prefix("fold-").is_some_and(|k| k.parse::<usize>().is_ok())
}

/// `--restart`: delete what a fit wrote in `dir` (a folder proven a fit's by its `fit.json`),
/// nothing else.
fn clear(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !is_written(&name) {
            continue;
        }
        let p = e.path();
        let kind = e.file_type().at(&p)?;
        if kind.is_dir() {
            std::fs::remove_dir_all(&p).at(&p)?;
        } else {
            std::fs::remove_file(&p).at(&p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Device;

    fn started(dir: &Path, precision: Option<&str>) {
        let mut s = serde_json::json!({
            "data": "raw", "backbone": "efficientnet-lite0", "size": 224, "epochs": 9, "patience": 3,
            "batch": 16, "lr": 1e-4, "flips": false, "balance": "auto", "final_fit": true,
            "test": 0.25, "validation": 0.2, "seed": 42, "head_epochs": 30
        });
        if let Some(p) = precision {
            s["precision"] = p.into();
        }
        std::fs::write(dir.join(SETTINGS), s.to_string()).unwrap();
    }

    /// `--precision auto` continues a fit at the precision it started in, whatever auto would
    /// pick on this machine; a precision given is taken as asked, and --restart resolves afresh.
    #[test]
    fn auto_continues_a_fit_at_its_recorded_precision() {
        let d = tempfile::tempdir().unwrap();
        let at = |precision| SessionOptions { device: Device::Cpu, threads: 1, precision };
        let fresh = at(None).training_precision().unwrap();
        assert_eq!(precision(d.path(), false, &at(None)).unwrap(), fresh);
        // Started in f32 (records leave it out): f32, even where auto would pick bf16 (AMX).
        started(d.path(), None);
        assert_eq!(precision(d.path(), false, &at(None)).unwrap(), Precision::F32);
        assert_eq!(precision(d.path(), true, &at(None)).unwrap(), fresh);
        // Started in bf16: bf16 where it can run here, else an error saying so and what to do.
        started(d.path(), Some("bf16"));
        match precision(d.path(), false, &at(None)) {
            Ok(p) => assert!(p == Precision::Bf16 && crate::runtime::openvino_available().is_ok()),
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("started in bf16") && e.contains("--restart") && e.contains(SETTINGS), "{e}");
            }
        }
        assert_eq!(precision(d.path(), false, &at(Some(Precision::F32))).unwrap(), Precision::F32);
        assert_eq!(precision(d.path(), true, &at(None)).unwrap(), fresh);
    }
}
