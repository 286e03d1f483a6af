//! A fit's history: one record per finished epoch, as `history.csv` holds it. A leaf module, so
//! training, plotting and reporting can all speak of epochs without knowing each other.

use crate::error::Result;
use crate::fsutil;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const HISTORY_CSV: &str = "history.csv";
pub const HISTORY_PNG: &str = "history.png";

/// One line of `history.csv`. A metric that was not measured (no validation split) is NaN, which
/// JSON writes as `null`; `null` reads back as NaN, so such histories round-trip.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Epoch {
    pub epoch: usize,
    #[serde(deserialize_with = "nan_if_missing")]
    pub loss: f64,
    #[serde(deserialize_with = "nan_if_missing")]
    pub accuracy: f64,
    #[serde(deserialize_with = "nan_if_missing")]
    pub val_loss: f64,
    #[serde(deserialize_with = "nan_if_missing")]
    pub val_accuracy: f64,
    #[serde(deserialize_with = "nan_if_missing")]
    pub seconds: f64,
}

fn nan_if_missing<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl Epoch {
    /// The line a fit prints per epoch.
    pub fn line(&self, epochs: usize) -> String {
        format!("epoch {:>3}/{epochs}  {}  ({:.2} s)", self.epoch, self.scores(), self.seconds)
    }

    /// Loss and accuracy, then the validation ones when they were measured (a fit without a
    /// validation split leaves them out rather than printing NaN).
    pub fn scores(&self) -> String {
        let mut s = format!("loss {:.4}  acc {:.4}", self.loss, self.accuracy);
        if self.val_loss.is_finite() {
            s += &format!("  val_loss {:.4}", self.val_loss);
        }
        if self.val_accuracy.is_finite() {
            s += &format!("  val_acc {:.4}", self.val_accuracy);
        }
        s
    }
}

pub fn write_csv(path: &Path, h: &[Epoch]) -> Result<()> {
    fsutil::write_bytes_atomic(path, &fsutil::csv_bytes(path, h)?)
}
