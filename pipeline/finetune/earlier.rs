//! What an earlier start of a fine-tune recorded in its checkpoint, for the choices a rerun of the
//! same command must make as that start made them: `--lr auto`'s rate and `--precision auto`'s
//! precision both depend on more than the command (a sweep's noise, the machine's CPU).

use crate::error::{Error, Result};
use crate::runs::finetune::FinetuneConfig;
use crate::runtime::Precision;
use crate::train::checkpoint::{self, Resume, CHECKPOINT};
use std::path::PathBuf;

/// The settings the checkpoint of `cfg`'s run records, and its path; a run killed in its
/// `--progressive` epochs has only theirs, with the same settings. None when there is none, or the
/// run starts over.
pub(super) fn recorded(cfg: &FinetuneConfig) -> Result<Option<(PathBuf, serde_json::Value)>> {
    if cfg.resume == Resume::Restart {
        return Ok(None);
    }
    for path in [cfg.run_dir.join(CHECKPOINT), cfg.run_dir.join(super::presize::DIR).join(CHECKPOINT)] {
        if let Some(saved) = checkpoint::saved_config(&path)? {
            return Ok(Some((path, saved)));
        }
    }
    Ok(None)
}

/// `cfg` with the precision its `--precision` gives for a run that may continue: `auto` keeps what
/// an earlier start recorded ([`SessionOptions::continuing_precision`]), so the same command
/// continues it on a machine where auto would resolve otherwise.
///
/// [`SessionOptions::continuing_precision`]: crate::runtime::SessionOptions::continuing_precision
pub fn continuing(cfg: FinetuneConfig) -> Result<FinetuneConfig> {
    if cfg.session.precision.is_some() {
        return Ok(cfg);
    }
    let Some((path, saved)) = recorded(&cfg)? else { return Ok(cfg) };
    // Records leave f32, the default, out.
    let was = match saved.get("precision") {
        None => Precision::F32,
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| Error::BadModel {
            path: path.clone(),
            reason: format!("its recorded precision ({v}) does not parse: {e}; add --restart to start over"),
        })?,
    };
    let precision = cfg.session.continuing_precision(Some(was), &path)?;
    Ok(FinetuneConfig { precision, ..cfg })
}
