//! When a fit stops early and which epoch's model is kept: small strategies the learner applies
//! after every epoch, each a pure function of the epoch records.

use crate::history::Epoch;

/// Which epoch is the best one so far: the lowest validation loss, or (a fit without validation)
/// the latest epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BestModel {
    LowestValLoss,
    Latest,
}

impl BestModel {
    /// The choice for a fit with (or without) validation samples.
    pub fn for_fit(validated: bool) -> BestModel {
        if validated {
            BestModel::LowestValLoss
        } else {
            BestModel::Latest
        }
    }

    /// Whether `e` beats `best` (the best so far; None: `e` is the first). A best whose loss is
    /// not a number is beaten by any that is.
    pub fn improves(self, e: &Epoch, best: Option<&Epoch>) -> bool {
        let score = |e: &Epoch| match self {
            BestModel::LowestValLoss => e.val_loss,
            BestModel::Latest => -(e.epoch as f64),
        };
        best.is_none_or(|b| score(e) < score(b) || (score(b).is_nan() && !score(e).is_nan()))
    }
}

/// Keras' `EarlyStopping` on the best model's measure: stop after `patience` epochs without a
/// better one (never, without patience).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EarlyStopping {
    pub patience: Option<usize>,
}

impl EarlyStopping {
    /// Whether a fit `since_best` epochs past its best epoch stops (or, resumed, stays stopped).
    pub fn stops(self, since_best: usize) -> bool {
        self.patience.is_some_and(|p| since_best >= p)
    }

    /// Why a fit `since_best` epochs past its best epoch `best` stopped, in words.
    pub fn why(self, best: &Epoch, since_best: usize) -> String {
        format!(
            "stopped: val_loss has not improved for {since_best} epoch{}; best epoch {} val_loss {:.4}",
            if since_best == 1 { "" } else { "s" },
            best.epoch,
            best.val_loss
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(epoch: usize, val_loss: f64) -> Epoch {
        Epoch { epoch, loss: 1.0, accuracy: 0.5, val_loss, val_accuracy: 0.5, lr: 1e-3, seconds: 0.0 }
    }

    #[test]
    fn the_lowest_validation_loss_is_best() {
        let b = BestModel::for_fit(true);
        assert_eq!(b, BestModel::LowestValLoss);
        assert!(b.improves(&epoch(1, 0.7), None), "the first epoch is the best so far");
        assert!(b.improves(&epoch(2, 0.5), Some(&epoch(1, 0.7))));
        assert!(!b.improves(&epoch(3, 0.5), Some(&epoch(2, 0.5))), "a tie keeps the earlier epoch");
        assert!(!b.improves(&epoch(3, 0.9), Some(&epoch(2, 0.5))));
    }

    #[test]
    fn a_loss_that_is_a_number_beats_one_that_is_not() {
        let b = BestModel::LowestValLoss;
        assert!(b.improves(&epoch(2, 3.0), Some(&epoch(1, f64::NAN))));
        assert!(!b.improves(&epoch(2, f64::NAN), Some(&epoch(1, 3.0))));
        assert!(!b.improves(&epoch(2, f64::NAN), Some(&epoch(1, f64::NAN))));
    }

    #[test]
    fn without_validation_the_latest_epoch_is_best() {
        let b = BestModel::for_fit(false);
        assert_eq!(b, BestModel::Latest);
        // Validation losses are NaN (not measured) and play no part.
        assert!(b.improves(&epoch(2, f64::NAN), Some(&epoch(1, f64::NAN))));
        assert!(b.improves(&epoch(3, 9.0), Some(&epoch(2, 0.1))));
    }

    #[test]
    fn early_stopping_waits_patience_epochs() {
        let never = EarlyStopping::default();
        assert!(!never.stops(0) && !never.stops(1000));
        let two = EarlyStopping { patience: Some(2) };
        assert!(!two.stops(0) && !two.stops(1));
        assert!(two.stops(2) && two.stops(3));
        assert!(EarlyStopping { patience: Some(0) }.stops(0));
        assert_eq!(
            two.why(&epoch(4, 0.41234), 2),
            "stopped: val_loss has not improved for 2 epochs; best epoch 4 val_loss 0.4123"
        );
    }
}
