//! Exponential backoff with jitter, shared by reconnects (broker, consumers), the relay's
//! pause after errors and its rescheduling of refused rows.

use std::time::Duration;

use actix_outbox::{Error, Result};

/// Exponential backoff: `min * 2^attempt`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// Delay after the first failure.
    pub(crate) min: Duration,
    /// Upper bound of any delay.
    pub(crate) max: Duration,
}

impl Backoff {
    /// A backoff from `min` doubling up to `max`.
    #[must_use]
    pub(crate) const fn new(min: Duration, max: Duration) -> Self {
        Self { min, max }
    }

    /// Checks the setting called `field`: a positive minimum, not above the maximum.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for `field`.
    pub(crate) fn validate(&self, field: &'static str) -> Result<()> {
        let reason = if self.min.is_zero() {
            "the minimum delay must be positive"
        } else if self.min > self.max {
            "the minimum delay must not exceed the maximum"
        } else {
            return Ok(());
        };
        Err(Error::InvalidConfig {
            field,
            reason: format!("{reason} (got {:?} up to {:?})", self.min, self.max),
        })
    }

    /// The delay before retry number `attempt` (0-based), without jitter.
    #[must_use]
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let factor = 2_u32.saturating_pow(attempt.min(31));
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The delay before retry number `attempt`, with "equal jitter": uniformly between half
    /// and all of [`delay`](Self::delay), so many clients that failed together do not all come
    /// back at the same instant.
    #[must_use]
    pub(crate) fn delay_with_jitter(&self, attempt: u32) -> Duration {
        let full = self.delay(attempt);
        let half = full / 2;
        half + full.mul_f64(fastrand::f64() * 0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_until_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let got: Vec<u64> = (0..6).map(|n| b.delay(n).as_millis() as u64).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1), "no overflow");
    }

    #[test]
    fn validation_names_the_field() {
        let ok = Backoff::new(Duration::from_millis(1), Duration::from_millis(1));
        ok.validate("x").expect("min == max is fine");
        for bad in [
            Backoff::new(Duration::ZERO, Duration::from_secs(1)),
            Backoff::new(Duration::from_secs(2), Duration::from_secs(1)),
        ] {
            assert!(matches!(
                bad.validate("reconnect"),
                Err(Error::InvalidConfig {
                    field: "reconnect",
                    ..
                })
            ));
        }
    }

    #[test]
    fn jitter_stays_within_half_and_full() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for attempt in 0..8 {
            let full = b.delay(attempt);
            for _ in 0..50 {
                let d = b.delay_with_jitter(attempt);
                assert!(
                    d >= full / 2 && d <= full,
                    "{d:?} outside [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
    }
}
