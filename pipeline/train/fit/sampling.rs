//! Which samples an epoch visits: every sample once in a shuffled order (the default), or
//! class-balanced draws — as many as the samples, an equal share per class, each class's samples
//! drawn in shuffled passes (every one once before any twice), so a rare class is seen as often
//! as a common one without reweighting the loss. Both draw from the fit's seeded stream, so a
//! resumed fit draws what an uninterrupted one would.

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// How an epoch's samples are drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    /// Every sample once per epoch, the previous epoch's order shuffled.
    #[default]
    Shuffle,
    /// n draws per epoch (n the samples), n/K per class present.
    Balanced,
}

impl crate::params::Choice for Sampling {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (Sampling::Shuffle, "shuffle", "every sample once per epoch, in a shuffled order"),
        (Sampling::Balanced, "balanced", "each class an equal share of the epoch's draws (rare classes repeated)"),
    ];
}

impl Sampling {
    /// The next epoch's sample indices into `labels`, from `order` (the previous epoch's).
    pub fn next_order(self, order: &mut Vec<usize>, labels: &[usize], rng: &mut impl Rng) {
        match self {
            Sampling::Shuffle => order.shuffle(rng),
            Sampling::Balanced => *order = balanced(labels, rng),
        }
    }
}

/// `labels.len()` draws, the classes present sharing them equally (the remainder to classes drawn
/// at random); within a class, shuffled passes over its samples, the last pass cut short.
pub fn balanced(labels: &[usize], rng: &mut impl Rng) -> Vec<usize> {
    let k = labels.iter().copied().max().map_or(0, |m| m + 1);
    let mut members: Vec<Vec<usize>> = vec![vec![]; k];
    for (i, &l) in labels.iter().enumerate() {
        members[l].push(i);
    }
    members.retain(|m| !m.is_empty());
    let (n, present) = (labels.len(), members.len());
    if present == 0 {
        return vec![];
    }
    let mut extra: Vec<usize> = (0..present).collect();
    extra.shuffle(rng);
    extra.truncate(n % present);
    let mut order = Vec::with_capacity(n);
    for (c, m) in members.iter_mut().enumerate() {
        let mut left = n / present + extra.contains(&c) as usize;
        while left > 0 {
            m.shuffle(rng);
            let take = left.min(m.len());
            order.extend_from_slice(&m[..take]);
            left -= take;
        }
    }
    order.shuffle(rng);
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn each_class_gets_an_equal_share_and_each_sample_its_turn() {
        // 90 of class 0, 10 of class 1: 50 draws each; class 1's samples 5 times each.
        let labels: Vec<usize> = (0..100).map(|i| (i >= 90) as usize).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let order = balanced(&labels, &mut rng);
        assert_eq!(order.len(), 100);
        let ones = order.iter().filter(|&&i| labels[i] == 1).count();
        assert_eq!(ones, 50);
        for i in 90..100 {
            assert_eq!(order.iter().filter(|&&j| j == i).count(), 5, "sample {i}");
        }
        // Class 0 has more samples than draws: none twice.
        let mut zeros: Vec<usize> = order.iter().copied().filter(|&i| labels[i] == 0).collect();
        zeros.sort();
        zeros.dedup();
        assert_eq!(zeros.len(), 50);
        // Shuffled as a whole, not class after class.
        assert!(order[..50].iter().any(|&i| labels[i] == 1) && order[..50].iter().any(|&i| labels[i] == 0));
    }

    #[test]
    fn the_remainder_goes_to_classes_at_random_and_the_draws_are_seeded() {
        let labels = vec![0, 0, 0, 1, 2, 2, 2];
        let draw = |seed| balanced(&labels, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        assert_eq!(draw(3), draw(3));
        let shares: Vec<Vec<usize>> = (0..20u64)
            .map(|s| {
                let o = draw(s);
                (0..3).map(|c| o.iter().filter(|&&i| labels[i] == c).count()).collect()
            })
            .collect();
        for s in &shares {
            assert_eq!(s.iter().sum::<usize>(), 7);
            assert!(s.iter().all(|&c| c == 2 || c == 3), "{s:?}");
        }
        assert!((0..3).all(|c| shares.iter().any(|s| s[c] == 3)), "every class gets the extra draw sometimes");
        // A class left out of the labels (index 1 absent) shares nothing.
        let gap = balanced(&[0, 0, 2, 2, 2, 2], &mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
        assert_eq!(gap.iter().filter(|&&i| i < 2).count(), 3);
    }
}
