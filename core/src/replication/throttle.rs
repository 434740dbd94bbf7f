//! A token bucket on sync bytes per peer, so anti-entropy never takes more than its share of
//! a link. Time is an input: the bucket refills from the `now` it is given.

use core::time::Duration;

use crate::time::Instant;

/// A token bucket: `rate` bytes per second, holding at most `burst`. Over any interval of
/// length `t`, at most `burst + rate · t` bytes pass.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate_per_sec: u64,
    burst: u64,
    /// Tokens in millionths of a byte, so slow refills do not round away.
    micro_tokens: u128,
    last: Instant,
}

const MICRO: u128 = 1_000_000;

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: u64, burst: u64, now: Instant) -> TokenBucket {
        TokenBucket { rate_per_sec, burst, micro_tokens: u128::from(burst) * MICRO, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed_ns = u128::from(now.as_nanos().saturating_sub(self.last.as_nanos()));
        // rate bytes/s = rate·10^6 micro-bytes per 10^9 ns.
        let add = elapsed_ns * u128::from(self.rate_per_sec) / 1_000;
        self.micro_tokens = (self.micro_tokens + add).min(u128::from(self.burst) * MICRO);
        self.last = self.last.max(now);
    }

    /// The instant the bucket was last refilled at.
    pub fn last(&self) -> Instant {
        self.last
    }

    /// Whole bytes available now.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        u64::try_from(self.micro_tokens / MICRO).unwrap_or(u64::MAX)
    }

    /// Takes `bytes` if available; false (and nothing taken) otherwise.
    pub fn try_take(&mut self, now: Instant, bytes: u64) -> bool {
        self.refill(now);
        let need = u128::from(bytes) * MICRO;
        if need > self.micro_tokens {
            return false;
        }
        self.micro_tokens -= need;
        true
    }

    /// When `bytes` will be available (now if they are; never if above the burst).
    pub fn ready_at(&mut self, now: Instant, bytes: u64) -> Instant {
        self.refill(now);
        if bytes > self.burst {
            return Instant::MAX;
        }
        let need = (u128::from(bytes) * MICRO).saturating_sub(self.micro_tokens);
        if need == 0 {
            return now;
        }
        let ns = (need * 1_000).div_ceil(u128::from(self.rate_per_sec.max(1)));
        now.saturating_add(Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refills_at_the_rate_up_to_the_burst() {
        let t0 = Instant::ZERO;
        let mut b = TokenBucket::new(1_000, 500, t0);
        assert!(b.try_take(t0, 500));
        assert!(!b.try_take(t0, 1));
        let at = b.ready_at(t0, 100);
        assert_eq!(at, Instant::from_nanos(100_000_000));
        assert!(!b.try_take(Instant::from_nanos(99_999_999), 100));
        assert!(b.try_take(at, 100));
        assert_eq!(b.available(Instant::from_nanos(10_000_000_000)), 500, "capped at the burst");
        assert_eq!(b.ready_at(t0, 501), Instant::MAX);
    }

    proptest! {
        /// Whatever the pattern of requests, no window carries more than burst + rate · length.
        #[test]
        fn no_window_exceeds_the_bound(steps in proptest::collection::vec((0u64..50_000_000, 1u64..400), 1..200)) {
            let (rate, burst) = (2_000u64, 600u64);
            let mut b = TokenBucket::new(rate, burst, Instant::ZERO);
            let mut now = 0u64;
            let mut sent: alloc::vec::Vec<(u64, u64)> = alloc::vec::Vec::new();
            for (wait, bytes) in steps {
                now += wait;
                if b.try_take(Instant::from_nanos(now), bytes) {
                    sent.push((now, bytes));
                }
            }
            for i in 0..sent.len() {
                let mut total = 0u64;
                for j in i..sent.len() {
                    total += sent[j].1;
                    let span_ns = sent[j].0 - sent[i].0;
                    prop_assert!(u128::from(total) * 1_000_000_000 <= u128::from(burst) * 1_000_000_000 + u128::from(rate) * u128::from(span_ns));
                }
            }
        }
    }
}
