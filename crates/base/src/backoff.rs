//! The one retry delay: exponential from a base, capped, with "equal jitter" (half
//! fixed, half random), so that a coordinator restart is not met by every agent in the
//! same millisecond and a failing scheduler is not asked in lockstep by every poll.
//!
//! Invariant: `backoff(base, cap, n)` lies in `[c/2, c]` where `c = min(base·2ⁿ, cap)`;
//! attempt 0 waits between `base/2` and `base`.

use std::time::Duration;

use rand::Rng;

/// Delay before retry `attempt` (0 for the first retry).
pub fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let ceiling = ceiling(base, cap, attempt);
    let half = ceiling / 2;
    half + rand::rng().random_range(Duration::ZERO..=half)
}

/// The unjittered delay: `min(base·2^attempt, cap)`. For a retry whose timing is
/// reported to people (the job poller's "next poll in"), where one caller cannot
/// synchronise a crowd and a predictable schedule matters more than spreading.
pub fn ceiling(base: Duration, cap: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        for attempt in 0..40 {
            let d = backoff(base, cap, attempt);
            let ceiling = (base * 2u32.saturating_pow(attempt.min(20))).min(cap);
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(base, cap, u32::MAX / 2) >= cap / 2);
    }
}
