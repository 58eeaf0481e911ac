//! What happens to a delivery once its fate is known: the pure decision behind every ack,
//! retry, dead letter and requeue of a consumer.
//!
//! The consumer actor only performs the [`Fate`] that [`decide`] picks; all the rules of
//! [`HandlerError`] live here, with unit tests, and nothing here touches the broker.

use std::fmt;
use std::time::Duration;

use actix_outbox::{Error, HandlerError, Result, parse_duration};
use chrono::{DateTime, Utc};

/// Longest delay RabbitMQ accepts as a queue TTL (2^32 - 1 milliseconds, about 49 days).
const MAX_DELAY_MS: u128 = u32::MAX as u128;

/// One retry delay as written in configuration: a [`Duration`], or text such as `"500ms"`
/// or `"1m30s"` (parsed by [`parse_duration`] when the worker or listener is registered).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use actix_outbox_actors::{RetryDelay, WorkerConfig};
///
/// let config = WorkerConfig::default()
///     .with_retry_delays([RetryDelay::from("500ms"), Duration::from_secs(10).into()]);
/// # let _ = config;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryDelay {
    /// A delay given as a duration.
    Exact(Duration),
    /// A delay given as text, parsed at registration.
    Text(String),
}

impl From<Duration> for RetryDelay {
    fn from(d: Duration) -> Self {
        Self::Exact(d)
    }
}

impl From<&str> for RetryDelay {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

impl From<String> for RetryDelay {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

/// Turns configured delays into whole-millisecond durations, checking each one.
///
/// # Errors
///
/// [`Error::InvalidDuration`] for text that does not parse, [`Error::InvalidConfig`]
/// (`retry_delays`) for a delay under 1 ms or above RabbitMQ's TTL limit (about 49 days).
pub(crate) fn resolve_delays(delays: &[RetryDelay]) -> Result<Vec<Duration>> {
    delays
        .iter()
        .map(|delay| {
            let d = match delay {
                RetryDelay::Exact(d) => *d,
                RetryDelay::Text(text) => parse_duration(text)?,
            };
            let ms = d.as_millis();
            if ms == 0 || ms > MAX_DELAY_MS {
                return Err(Error::InvalidConfig {
                    field: "retry_delays",
                    reason: format!(
                        "{d:?} is outside 1 ms ..= {MAX_DELAY_MS} ms (RabbitMQ's TTL limit)"
                    ),
                });
            }
            Ok(Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)))
        })
        .collect()
}

/// The retry rules of one queue, resolved at registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Whether plain [`HandlerError::Failed`] errors are retried (else dead-lettered).
    pub(crate) retry_on_error: bool,
    /// Delay before retry number n (after attempt n failed) is `delays[n - 1]`; once the list
    /// is used up the message is dead-lettered.
    pub(crate) delays: Vec<Duration>,
}

impl RetryPolicy {
    /// The delay before the retry that follows failed attempt `attempt` (1-based), if a tier
    /// is left.
    fn tier_after(&self, attempt: u32) -> Option<Duration> {
        let index = usize::try_from(attempt.max(1) - 1).ok()?;
        self.delays.get(index).copied()
    }
}

/// How handling one delivery ended, before anything is done about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The handler returned `Ok(())`.
    Handled,
    /// The handler returned an error.
    Failed(HandlerError),
    /// The handler actor died (a panic) while this was the only event sent to it, so this
    /// event caused it; a factory can replace the actor.
    Crashed,
    /// The handler actor died (a panic) while several events were sent to it: which one
    /// caused it is unknown, so this one is given back to the queue without charging an
    /// attempt, and the consumer sends one event at a time for a while to find out.
    Displaced,
    /// The handler actor is gone and cannot be replaced (registered by address).
    HandlerGone,
    /// The payload could not be decoded; the text says why.
    Undecodable(String),
    /// The message's deadline had passed before the handler was called.
    Expired,
    /// The handler did not answer within the listener's handler timeout.
    TimedOut,
    /// The broker delivered the message this many times before without it being settled
    /// (crashes, channels closed, requeues), reaching the redelivery limit: it is
    /// dead-lettered without calling the handler, so no message can loop for ever.
    Redelivered(u32),
    /// A classic queue redelivered the message (it keeps no count of its own): it was
    /// delivered this many times before unsettled, counting this time. It is published back
    /// to its queue carrying the count, not handled on this delivery.
    Uncounted(u32),
}

impl Outcome {
    /// A short lowercase name for spans and logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Outcome::Handled => "handled",
            Outcome::Failed(err) => err.kind(),
            Outcome::Crashed => "panicked",
            Outcome::Displaced => "displaced",
            Outcome::HandlerGone => "handler_gone",
            Outcome::Undecodable(_) => "undecodable",
            Outcome::Expired => "expired",
            Outcome::TimedOut => "timeout",
            Outcome::Redelivered(_) => "redelivery_limit",
            Outcome::Uncounted(_) => "redelivered",
        }
    }
}

/// What the consumer does with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Acknowledge: the message is done (handled, or aborted on purpose).
    Ack,
    /// Publish a copy through the delay exchange for `delay`, then ack the original.
    Retry {
        /// How long the copy waits before it is delivered again.
        delay: Duration,
    },
    /// Publish a copy to the dead-letter queue with `reason`, then ack the original.
    DeadLetter {
        /// The `x-outbox-reason` header of the copy.
        reason: String,
    },
    /// Give the message back to the queue untouched (`nack` with requeue).
    Requeue,
    /// Publish a copy to the message's own queue (through the default exchange) carrying
    /// `redeliveries` in `x-outbox-redeliveries`, then ack the original: how a classic queue's
    /// redeliveries are counted.
    Recount {
        /// The count the copy carries.
        redeliveries: u32,
    },
}

/// The reason header of messages dead-lettered because their deadline passed.
pub(crate) const EXPIRED: &str = "expired";

/// Picks the fate for `outcome` on delivery attempt `attempt` (1-based) under `policy`.
///
/// | outcome | fate |
/// |---|---|
/// | handled, or `Abort` | ack |
/// | `Failed`, a crashed or timed-out handler | retry if `retry_on_error` and a tier is left, else dead-letter |
/// | `Retry` | retry if a tier is left, else dead-letter |
/// | `Reject`, undecodable, expired, over the redelivery limit | dead-letter |
/// | handler gone for good, or died with several events in its mailbox | requeue |
/// | redelivered by a classic queue, under the limit | recount |
pub(crate) fn decide(outcome: &Outcome, attempt: u32, policy: &RetryPolicy) -> Fate {
    let retry_or_dead = |reason: String, forced: bool| match policy.tier_after(attempt) {
        Some(delay) if forced || policy.retry_on_error => Fate::Retry { delay },
        _ => Fate::DeadLetter { reason },
    };
    match outcome {
        Outcome::Handled => Fate::Ack,
        Outcome::Failed(err @ HandlerError::Retry(_)) => retry_or_dead(err.to_string(), true),
        Outcome::Failed(HandlerError::Abort(_)) => Fate::Ack,
        Outcome::Failed(err @ HandlerError::Reject(_)) => Fate::DeadLetter {
            reason: err.to_string(),
        },
        Outcome::Failed(err) => retry_or_dead(err.to_string(), false),
        Outcome::Crashed => retry_or_dead("failed: handler actor panicked".to_owned(), false),
        Outcome::TimedOut => retry_or_dead(
            "failed: the handler did not answer within its timeout".to_owned(),
            false,
        ),
        Outcome::HandlerGone | Outcome::Displaced => Fate::Requeue,
        Outcome::Undecodable(reason) => Fate::DeadLetter {
            reason: format!("undecodable payload: {reason}"),
        },
        Outcome::Expired => Fate::DeadLetter {
            reason: EXPIRED.to_owned(),
        },
        Outcome::Uncounted(n) => Fate::Recount { redeliveries: *n },
        Outcome::Redelivered(n) => Fate::DeadLetter {
            reason: format!(
                "redelivered {n} times without being settled (the process or its channel died \
                 while handling it, or its retry copy could not be confirmed)"
            ),
        },
    }
}

/// A retry of a message whose deadline has passed by `now` becomes a dead letter: the
/// deadline survives retries.
pub(crate) fn expire_if_past(
    fate: Fate,
    deadline: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Fate {
    match (&fate, deadline) {
        (Fate::Retry { .. }, Some(d)) if d <= now => Fate::DeadLetter {
            reason: EXPIRED.to_owned(),
        },
        _ => fate,
    }
}

impl fmt::Display for Fate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fate::Ack => f.write_str("ack"),
            Fate::Retry { delay } => write!(f, "retry in {delay:?}"),
            Fate::DeadLetter { .. } => f.write_str("dead-letter"),
            Fate::Requeue => f.write_str("requeue"),
            Fate::Recount { redeliveries } => write!(f, "recount ({redeliveries})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retry_on_error: bool) -> RetryPolicy {
        RetryPolicy {
            retry_on_error,
            delays: vec![Duration::from_millis(100), Duration::from_millis(200)],
        }
    }

    fn retry(ms: u64) -> Fate {
        Fate::Retry {
            delay: Duration::from_millis(ms),
        }
    }

    fn is_dead(fate: &Fate) -> bool {
        matches!(fate, Fate::DeadLetter { .. })
    }

    #[test]
    fn failures_walk_the_tiers_then_dead_letter() {
        let p = policy(true);
        let failed = Outcome::Failed(HandlerError::failed("boom"));
        assert_eq!(decide(&failed, 1, &p), retry(100));
        assert_eq!(decide(&failed, 2, &p), retry(200));
        let last = decide(&failed, 3, &p);
        assert_eq!(
            last,
            Fate::DeadLetter {
                reason: "failed: boom".into()
            }
        );
        assert!(is_dead(&decide(&failed, 99, &p)));
    }

    #[test]
    fn retry_on_error_off_dead_letters_plain_errors_but_not_forced_retries() {
        let p = policy(false);
        assert!(is_dead(&decide(
            &Outcome::Failed(HandlerError::failed("x")),
            1,
            &p
        )));
        assert!(is_dead(&decide(&Outcome::Crashed, 1, &p)));
        let forced = Outcome::Failed(HandlerError::retry("later"));
        assert_eq!(decide(&forced, 1, &p), retry(100));
        assert!(is_dead(&decide(&forced, 3, &p)), "tiers exhausted");
    }

    #[test]
    fn abort_acks_and_reject_dead_letters_at_once() {
        let p = policy(true);
        let abort = Outcome::Failed(HandlerError::abort("gone"));
        assert_eq!(decide(&abort, 1, &p), Fate::Ack);
        let reject = Outcome::Failed(HandlerError::reject("never"));
        assert_eq!(
            decide(&reject, 1, &p),
            Fate::DeadLetter {
                reason: "reject: never".into()
            }
        );
    }

    #[test]
    fn poison_expiry_and_lost_handlers() {
        let p = policy(true);
        assert_eq!(decide(&Outcome::Handled, 7, &p), Fate::Ack);
        let poison = decide(&Outcome::Undecodable("bad json".into()), 1, &p);
        assert_eq!(
            poison,
            Fate::DeadLetter {
                reason: "undecodable payload: bad json".into()
            }
        );
        assert_eq!(
            decide(&Outcome::Expired, 1, &p),
            Fate::DeadLetter {
                reason: EXPIRED.into()
            }
        );
        assert_eq!(decide(&Outcome::HandlerGone, 1, &p), Fate::Requeue);
        assert_eq!(Outcome::Crashed.name(), "panicked");
        assert_eq!(decide(&Outcome::Displaced, 3, &p), Fate::Requeue);
        assert_eq!(Outcome::Failed(HandlerError::reject("x")).name(), "reject");
        assert_eq!(decide(&Outcome::Crashed, 1, &p), retry(100));
        assert_eq!(
            decide(&Outcome::Uncounted(2), 1, &p),
            Fate::Recount { redeliveries: 2 }
        );
    }

    #[test]
    fn no_tiers_means_dead_letter_even_for_forced_retries() {
        let p = RetryPolicy {
            retry_on_error: true,
            delays: Vec::new(),
        };
        let forced = Outcome::Failed(HandlerError::retry("later"));
        assert!(is_dead(&decide(&forced, 1, &p)));
    }

    #[test]
    fn deadlines_survive_retries() {
        let now = Utc::now();
        let past = Some(now - chrono::TimeDelta::milliseconds(1));
        let future = Some(now + chrono::TimeDelta::seconds(5));
        assert!(is_dead(&expire_if_past(retry(100), past, now)));
        assert_eq!(expire_if_past(retry(100), future, now), retry(100));
        assert_eq!(expire_if_past(retry(100), None, now), retry(100));
        assert_eq!(expire_if_past(Fate::Ack, past, now), Fate::Ack);
    }

    #[test]
    fn delays_resolve_from_text_and_durations() {
        let got = resolve_delays(&[
            "500ms".into(),
            "1m30s".into(),
            Duration::from_secs(2).into(),
        ])
        .expect("valid delays");
        assert_eq!(
            got,
            [
                Duration::from_millis(500),
                Duration::from_secs(90),
                Duration::from_secs(2)
            ]
        );
        assert!(matches!(
            resolve_delays(&["soon".into()]),
            Err(Error::InvalidDuration { .. })
        ));
        for bad in [
            Duration::ZERO,
            Duration::from_micros(10),
            Duration::from_secs(60 * 86_400),
        ] {
            assert!(
                matches!(
                    resolve_delays(&[bad.into()]),
                    Err(Error::InvalidConfig {
                        field: "retry_delays",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }
}
