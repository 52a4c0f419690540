//! Deterministic randomness: seeded streams and uniform subsamples.
//!
//! Invariant: every random choice of a build comes from `stream(params.seed, <constant>)`, so the
//! same input, previous model and parameters give the same model on every machine.

use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::{Xoshiro256Plus, Xoshiro256PlusPlus};

/// Stream numbers: one per use, so changing one use never shifts another's draws.
pub(crate) const FIT_SUBSAMPLE: u64 = 1;
pub(crate) const SCORE_SUBSAMPLE: u64 = 2;
/// k-means for k uses `KMEANS_BASE + k`.
pub(crate) const KMEANS_BASE: u64 = 1_000;

fn mix(seed: u64, stream: u64) -> u64 {
    seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

pub(crate) fn stream(seed: u64, stream: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(mix(seed, stream))
}

/// The generator linfa's k-means is generic over (the one it uses by default).
pub(crate) fn kmeans_rng(seed: u64, k: usize) -> Xoshiro256Plus {
    Xoshiro256Plus::seed_from_u64(mix(seed, KMEANS_BASE + k as u64))
}

/// Uniform in `[0, 1)` from the top 53 bits.
fn unit(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// `want` distinct indices of `0..total`, uniformly, ascending (Knuth's selection sampling,
/// Algorithm S): one pass, O(total) time, O(want) memory. All of them when `want >= total`.
pub(crate) fn choose(total: usize, want: usize, rng: &mut impl RngCore) -> Vec<usize> {
    if want >= total {
        return (0..total).collect();
    }
    let mut chosen = Vec::with_capacity(want);
    for i in 0..total {
        let remaining = (total - i) as f64;
        let needed = (want - chosen.len()) as f64;
        if remaining * unit(rng) < needed {
            chosen.push(i);
            if chosen.len() == want {
                break;
            }
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_takes_exactly_want_distinct_ascending_indices() {
        let mut rng = stream(7, FIT_SUBSAMPLE);
        for (total, want) in [(10, 3), (1000, 999), (5, 5), (5, 9), (100_000, 1)] {
            let got = choose(total, want, &mut rng);
            assert_eq!(got.len(), want.min(total));
            assert!(got.windows(2).all(|w| w[0] < w[1]));
            assert!(got.iter().all(|&i| i < total));
        }
    }

    #[test]
    fn choose_is_roughly_uniform() {
        let mut rng = stream(11, FIT_SUBSAMPLE);
        let mut hits = [0u32; 10];
        for _ in 0..2_000 {
            for i in choose(10, 3, &mut rng) {
                hits[i] += 1;
            }
        }
        // 600 expected per index; a binomial sd of ~20 puts 500..700 far outside chance.
        assert!(hits.iter().all(|&h| (500..700).contains(&h)), "{hits:?}");
    }
}
