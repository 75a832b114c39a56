//! Seeded randomness.
//!
//! Every random decision of a chaos run comes from a [`ChaCha8Rng`] derived from the run's
//! seed and a *purpose* label (and, for per-call decisions, the identity of the call), so a
//! decision does not depend on how many other decisions were drawn before it or on which
//! thread drew them: the same seed gives the same workload, the same fault plan and, on the
//! simulation's single-threaded virtual-time runtime, the same run.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The generator used everywhere (portable and reproducible across platforms).
pub type ChaosRng = ChaCha8Rng;

/// FNV-1a over `parts`, mixed with `seed` by splitmix64: a stable 64-bit key.
#[must_use]
pub fn mix(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // separator, so ["ab","c"] != ["a","bc"]
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix64(seed ^ h)
}

/// One round of splitmix64.
#[must_use]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A generator for `purpose` (and optional identity parts) under `seed`.
#[must_use]
pub fn rng_for(seed: u64, purpose: &str, parts: &[&[u8]]) -> ChaosRng {
    let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
    all.push(purpose.as_bytes());
    all.extend_from_slice(parts);
    ChaosRng::seed_from_u64(mix(seed, &all))
}

/// `true` with probability `p` (clamped to `0..=1`).
pub fn chance(rng: &mut impl Rng, p: f64) -> bool {
    if p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        rng.random_bool(p)
    }
}

/// A uniform value in `lo..=hi` (or `lo` when the range is empty).
pub fn between(rng: &mut impl Rng, lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        lo
    } else {
        rng.random_range(lo..=hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_stream() {
        let a: u64 = rng_for(7, "x", &[b"a"]).random();
        let b: u64 = rng_for(7, "x", &[b"a"]).random();
        let c: u64 = rng_for(8, "x", &[b"a"]).random();
        let d: u64 = rng_for(7, "y", &[b"a"]).random();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_ne!(mix(1, &[b"ab", b"c"]), mix(1, &[b"a", b"bc"]));
    }

    #[test]
    fn chance_edges() {
        let mut r = rng_for(1, "t", &[]);
        assert!(!chance(&mut r, 0.0));
        assert!(chance(&mut r, 1.0));
        assert_eq!(between(&mut r, 5, 5), 5);
        assert_eq!(between(&mut r, 5, 1), 5);
    }
}
