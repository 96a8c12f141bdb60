//! Zipfian ranks as YCSB draws them, and the same spread over an id space by a shuffle.
//!
//! `Zipfian` is the generator of Gray et al., "Quickly Generating Billion-Record Synthetic
//! Databases" (SIGMOD 1994), which YCSB's `ZipfianGenerator` and TigerBeetle's benchmark use:
//! rank `k` (0-based) is drawn with probability `1 / ((k + 1)^θ · ζ(n, θ))`. Rank 0 is the
//! hottest, so on its own it would make the lowest account ids the hot ones; `ZipfianShuffled`
//! maps ranks through a seeded permutation so the hot accounts land anywhere in the id space.
//!
//! TigerBeetle keeps a shuffled map only for the ~1,100 most probable ranks (of 10,000) and
//! draws the rest uniformly; here every rank is permuted, which is the distribution that
//! approximation aims at. The head, which decides the contention, is the same.

use rand::Rng;
use rand::seq::SliceRandom;

/// YCSB's skew.
pub const THETA: f64 = 0.99;

/// Zipfian ranks in `0..items`, rank 0 the most probable.
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    /// ζ(items, θ) = Σ_{i=1..items} 1/i^θ.
    zetan: f64,
    alpha: f64,
    eta: f64,
    /// 1 + 0.5^θ: below this (times ζ), the draw is rank 1.
    rank_one_below: f64,
}

/// The generalised harmonic number of order `theta` for `n`.
fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| (i as f64).powf(-theta)).sum()
}

impl Zipfian {
    /// `items` at least 2, `theta` in (0, 1) (the closed form below divides by `1 - θ`).
    pub fn new(items: u64, theta: f64) -> Self {
        assert!(
            items >= 2,
            "a zipfian draw needs at least two items, not {items}"
        );
        assert!(
            theta > 0.0 && theta < 1.0,
            "theta must be in (0, 1), not {theta}"
        );
        let zetan = zeta(items, theta);
        let zeta2 = zeta(2, theta);
        let eta = (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipfian {
            items,
            theta,
            zetan,
            alpha: 1.0 / (1.0 - theta),
            eta,
            rank_one_below: 1.0 + 0.5f64.powf(theta),
        }
    }

    pub fn items(&self) -> u64 {
        self.items
    }

    /// Draws a rank.
    pub fn rank<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        let u: f64 = rng.r#gen();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < self.rank_one_below {
            return 1;
        }
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        // The closed form is an approximation; keep it in range whatever the rounding.
        rank.min(self.items - 1)
    }

    /// The exact probability of `rank` under the distribution this approximates.
    pub fn probability(&self, rank: u64) -> f64 {
        assert!(rank < self.items);
        ((rank + 1) as f64).powf(-self.theta) / self.zetan
    }
}

/// Zipfian draws over `0..items` with ranks placed by a seeded permutation.
#[derive(Clone, Debug)]
pub struct ZipfianShuffled {
    zipf: Zipfian,
    /// Rank to item.
    items: Vec<u32>,
}

impl ZipfianShuffled {
    /// The permutation is drawn from `rng`, so the same seed places the hot items the same way.
    pub fn new<R: Rng + ?Sized>(items: u64, theta: f64, rng: &mut R) -> Self {
        assert!(
            items <= u64::from(u32::MAX),
            "at most 2^32 - 1 items, not {items}"
        );
        let mut permutation: Vec<u32> = (0..items as u32).collect();
        permutation.shuffle(rng);
        ZipfianShuffled {
            zipf: Zipfian::new(items, theta),
            items: permutation,
        }
    }

    pub fn zipfian(&self) -> &Zipfian {
        &self.zipf
    }

    /// The item that has `rank` (0 the hottest).
    pub fn item_of_rank(&self, rank: u64) -> u64 {
        u64::from(self.items[rank as usize])
    }

    /// Draws an item.
    pub fn next<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        self.item_of_rank(self.zipf.rank(rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn zeta_matches_the_sum() {
        assert_eq!(zeta(1, THETA), 1.0);
        let z3 = 1.0 + 2f64.powf(-THETA) + 3f64.powf(-THETA);
        assert!((zeta(3, THETA) - z3).abs() < 1e-12);
    }

    #[test]
    fn probabilities_sum_to_one() {
        let z = Zipfian::new(10_000, THETA);
        let sum: f64 = (0..10_000).map(|k| z.probability(k)).sum();
        assert!((sum - 1.0).abs() < 1e-9, "{sum}");
    }

    /// The closed form is close to the exact distribution for the ranks that carry the weight.
    #[test]
    fn head_frequencies_match_the_distribution() {
        let z = Zipfian::new(10_000, THETA);
        let mut rng = StdRng::seed_from_u64(7);
        let draws = 1_000_000u64;
        let mut counts = vec![0u64; 10_000];
        for _ in 0..draws {
            counts[z.rank(&mut rng) as usize] += 1;
        }
        for rank in 0..2u64 {
            let observed = counts[rank as usize] as f64 / draws as f64;
            let expected = z.probability(rank);
            assert!(
                (observed - expected).abs() < 0.1 * expected,
                "rank {rank}: observed {observed}, expected {expected}"
            );
        }
        // The top 1% of ranks carry about half the draws at θ = 0.99, n = 10,000.
        let top: u64 = counts[..100].iter().sum();
        let expected: f64 = (0..100).map(|k| z.probability(k)).sum();
        let observed = top as f64 / draws as f64;
        assert!(
            (observed - expected).abs() < 0.05,
            "top 100: observed {observed}, expected {expected}"
        );
        assert!(observed > 0.4, "{observed}");
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let a = ZipfianShuffled::new(1_000, THETA, &mut StdRng::seed_from_u64(1));
        let b = ZipfianShuffled::new(1_000, THETA, &mut StdRng::seed_from_u64(1));
        let c = ZipfianShuffled::new(1_000, THETA, &mut StdRng::seed_from_u64(2));
        let mut sorted = a.items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1_000).collect::<Vec<u32>>());
        assert_eq!(a.items, b.items);
        assert_ne!(a.items, c.items);
        // The hottest item is not simply item 0: the shuffle moved the head.
        let hot: Vec<u64> = (0..10).map(|r| a.item_of_rank(r)).collect();
        assert_ne!(hot, (0..10).collect::<Vec<u64>>());
    }
}
