//! Retry delays: strategy, cap and deterministic jitter.

use crate::model::{InstanceId, RetryPolicy, RetryStrategy};

/// Delay before retry number `retry` (1-based) under `policy`. Jitter is derived from the
/// instance, step and retry number, so the same inputs always give the same delay.
#[must_use]
pub fn retry_delay_ms(policy: &RetryPolicy, retry: u32, instance: InstanceId, step: &str) -> u64 {
    let base = policy.delay_ms;
    let raw = match policy.strategy {
        RetryStrategy::Fixed => base,
        RetryStrategy::Linear => base.saturating_mul(u64::from(retry.max(1))),
        RetryStrategy::Exponential => {
            let shift = retry.saturating_sub(1).min(40);
            base.saturating_mul(1u64 << shift)
        }
    };
    let capped = raw.min(policy.max_delay_ms);
    let pct = u64::from(policy.jitter_pct.min(100));
    if pct == 0 || capped == 0 {
        return capped;
    }
    let span = capped.saturating_mul(pct) / 100;
    let r = mix(instance.0.as_u128(), step, retry) % (2 * span + 1);
    (capped - span + r).min(policy.max_delay_ms)
}

/// A small deterministic hash (FNV-1a over the inputs, then a splitmix64 finaliser).
fn mix(instance: u128, step: &str, retry: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = instance
        .to_le_bytes()
        .into_iter()
        .chain(step.bytes())
        .chain(retry.to_le_bytes());
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(strategy: RetryStrategy, jitter_pct: u8) -> RetryPolicy {
        RetryPolicy {
            max_retries: Some(5),
            delay_ms: 100,
            strategy,
            max_delay_ms: 1_000,
            jitter_pct,
        }
    }

    #[test]
    fn strategies_grow_and_cap() {
        let id = InstanceId::from_u128(7);
        let f = policy(RetryStrategy::Fixed, 0);
        let l = policy(RetryStrategy::Linear, 0);
        let e = policy(RetryStrategy::Exponential, 0);
        assert_eq!(
            [1, 2, 3].map(|r| retry_delay_ms(&f, r, id, "s")),
            [100, 100, 100]
        );
        assert_eq!(
            [1, 2, 3].map(|r| retry_delay_ms(&l, r, id, "s")),
            [100, 200, 300]
        );
        assert_eq!(
            [1, 2, 3, 5].map(|r| retry_delay_ms(&e, r, id, "s")),
            [100, 200, 400, 1_000]
        );
        assert_eq!(retry_delay_ms(&e, 1_000, id, "s"), 1_000);
    }

    #[test]
    fn jitter_is_bounded_and_deterministic() {
        let p = policy(RetryStrategy::Fixed, 20);
        let mut seen = std::collections::HashSet::new();
        for i in 0..200u128 {
            let d = retry_delay_ms(&p, 1, InstanceId::from_u128(i), "s");
            assert!((80..=120).contains(&d), "{d}");
            assert_eq!(d, retry_delay_ms(&p, 1, InstanceId::from_u128(i), "s"));
            seen.insert(d);
        }
        assert!(seen.len() > 10, "jitter should spread delays");
    }
}
