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
    /// The learning rate of the epoch's last step (the main rate: `--lr`, not `--lr-base`); NaN
    /// where there is none (a classical head) or the record predates the column.
    #[serde(default = "nan", deserialize_with = "nan_if_missing")]
    pub lr: f64,
    #[serde(deserialize_with = "nan_if_missing")]
    pub seconds: f64,
}

fn nan() -> f64 {
    f64::NAN
}

fn nan_if_missing<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl Epoch {
    /// The line a fit prints per epoch.
    pub fn line(&self, epochs: usize) -> String {
        let lr = if self.lr.is_finite() { format!("  lr {:.3e}", self.lr) } else { String::new() };
        format!("epoch {:>3}/{epochs}  {}{lr}  ({:.2} s)", self.epoch, self.scores(), self.seconds)
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

#[cfg(test)]
mod tests {
    use super::Epoch;

    #[test]
    fn records_written_before_the_lr_column_still_read() {
        let old = "epoch,loss,accuracy,val_loss,val_accuracy,seconds\n1,0.5,0.75,0.6,0.5,1.25\n";
        let rows: Vec<Epoch> =
            csv::Reader::from_reader(old.as_bytes()).deserialize().collect::<Result<_, _>>().unwrap();
        assert_eq!((rows[0].epoch, rows[0].seconds), (1, 1.25));
        assert!(rows[0].lr.is_nan(), "no column: not known");
        let json = r#"{"epoch":2,"loss":0.5,"accuracy":0.7,"val_loss":null,"val_accuracy":null,"seconds":1.0}"#;
        let e: Epoch = serde_json::from_str(json).unwrap();
        assert!(e.lr.is_nan() && e.val_loss.is_nan() && e.loss == 0.5);
        // Written now, the column is there and reads back.
        let e = Epoch { lr: 3e-4, ..e };
        let back: Epoch = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back.lr, 3e-4);
        let bytes = crate::fsutil::csv_bytes(std::path::Path::new("h.csv"), [&e]).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds\n"), "{text}");
    }

    #[test]
    fn the_epoch_line_shows_the_rate_when_there_is_one() {
        let e = Epoch { epoch: 3, loss: 0.5, accuracy: 0.75, val_loss: 0.6, val_accuracy: 0.5, lr: 1e-3, seconds: 1.0 };
        assert!(e.line(10).contains("val_acc 0.5000  lr 1.000e-3  (1.00 s)"), "{}", e.line(10));
        assert!(!Epoch { lr: f64::NAN, ..e }.line(10).contains("lr"));
    }
}
