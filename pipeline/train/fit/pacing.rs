//! How often a fit writes its checkpoint: after every epoch while writing it is cheap, else at
//! most as often as keeps the writing under a share of the fit's time — a large head's checkpoint
//! (tens of millions of parameters and their optimizer slots) would otherwise take most of it.
//! The last epoch is always written. Which epochs are written changes nothing a run produces:
//! a killed run resumes from whichever checkpoint is there and recomputes the epochs since, to
//! the same bytes.

use std::time::{Duration, Instant};

/// At most this share of a fit's time goes to writing checkpoints.
pub const SHARE: f64 = 0.1;

/// When the next checkpoint is due.
#[derive(Debug)]
pub struct Pacing {
    share: f64,
    /// When the last write ended, and what it took; None before the first.
    last: Option<(Instant, Duration)>,
    /// Writes so far, and their time together.
    pub writes: usize,
    pub spent: Duration,
}

impl Pacing {
    pub fn new(share: f64) -> Pacing {
        Pacing { share, last: None, writes: 0, spent: Duration::ZERO }
    }

    pub fn share(&self) -> f64 {
        self.share
    }

    /// Whether the epoch ending now is written: the first and the `last` epoch always; another
    /// once the time since the last write is at least (1 − share)/share times that write's cost.
    pub fn due(&self, last: bool, now: Instant) -> bool {
        last || self.last.is_none_or(|(ended, cost)| waited_enough(now - ended, cost, self.share))
    }

    /// A write that took `cost` just ended at `now`.
    pub fn wrote(&mut self, cost: Duration, now: Instant) {
        self.last = Some((now, cost));
        self.writes += 1;
        self.spent += cost;
    }
}

/// Whether `since` of work after a write of `cost` keeps writes within `share` of the time.
fn waited_enough(since: Duration, cost: Duration, share: f64) -> bool {
    since.as_secs_f64() * share >= cost.as_secs_f64() * (1.0 - share)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_take_at_most_their_share() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let mut p = Pacing::new(0.1);
        assert!(p.due(false, t0), "the first epoch is written: it measures the cost");
        p.wrote(s(2), t0);
        assert!(!p.due(false, t0 + s(17)), "2 s of writing needs 18 s of work around it");
        assert!(p.due(false, t0 + s(18)));
        assert!(p.due(true, t0 + s(1)), "the last epoch is always written");
        // Cheap writes: every epoch.
        let mut cheap = Pacing::new(0.1);
        cheap.wrote(Duration::from_millis(1), t0);
        assert!(cheap.due(false, t0 + Duration::from_millis(10)));
        assert_eq!((p.writes, p.spent), (1, s(2)));
    }
}
