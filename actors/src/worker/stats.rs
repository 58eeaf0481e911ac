//! `ConsumerStats`: what one consumer did since it started, for health checks and tests.

use super::delivery::{Report, Settled};
use super::retry::{EXPIRED, Fate, Outcome};

/// Counters of one consumer (one queue) since it started. Ask with
/// [`RunningWorker::stats`](crate::RunningWorker::stats).
///
/// Every delivery lands in exactly one of `handled`, `aborted`, `retried`, `dead_lettered`,
/// `requeued`, `recounted` or `unsettled`; `decode_failures`, `expired` and `panics` further break down
/// what happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Handled successfully and acked.
    pub handled: u64,
    /// The handler returned `Abort`: acked and dropped.
    pub aborted: u64,
    /// Retry copies confirmed by the broker (originals acked).
    pub retried: u64,
    /// Dead-letter copies confirmed (originals acked), for any reason.
    pub dead_lettered: u64,
    /// Originals given back to the queue: a copy was not confirmed, or the handler is gone.
    pub requeued: u64,
    /// Classic queues: redelivered messages published back to their queue with their
    /// redelivery count (`x-outbox-redeliveries`) instead of being handled on that delivery.
    pub recounted: u64,
    /// Not settled because the channel failed; the broker redelivers these.
    pub unsettled: u64,
    /// Payloads that could not be decoded (dead-lettered).
    pub decode_failures: u64,
    /// Deliveries past their deadline (dead-lettered without calling the handler, or instead
    /// of a retry).
    pub expired: u64,
    /// Handler actors that died (a panic): each restart from the factory, and each delivery
    /// that found an address-registered handler gone.
    pub panics: u64,
    /// Handlers that did not answer within the handler timeout (each a failed attempt).
    pub timeouts: u64,
    /// Times the consumer got consuming again after losing its channel.
    pub reconnects: u64,
    /// Ack frames sent. One frame acks a run of deliveries at once (`multiple`), so
    /// `handled + aborted + retried + dead_lettered` divided by this is how well the
    /// consumer coalesced its acks.
    pub ack_frames: u64,
    /// Deliveries being handled right now (a snapshot, not a counter).
    pub in_flight: u64,
    /// Whether deliveries are flowing right now (a snapshot).
    pub consuming: bool,
}

/// The `outcome` label of a finished delivery in `outbox_consumer_outcomes_total` (one of
/// [`OUTCOMES`](crate::metrics::OUTCOMES)): what caused it where that matters to an operator
/// (undecodable, expired, panic, timeout, abort), else what was done.
pub(crate) fn outcome_label(report: &Report) -> &'static str {
    match (&report.settled, &report.outcome, &report.fate) {
        (Settled::Lost(_), _, _) => "unsettled",
        (_, Outcome::Undecodable(_), _) => "undecodable",
        (_, Outcome::Expired, _) => "expired",
        (_, _, Fate::DeadLetter { reason }) if reason == EXPIRED => "expired",
        (_, Outcome::Crashed | Outcome::HandlerGone, _) => "panic",
        (_, Outcome::TimedOut, _) => "timeout",
        (_, Outcome::Failed(actix_outbox::HandlerError::Abort(_)), _) => "abort",
        (_, Outcome::Redelivered(_), _) => "redelivery_limit",
        (_, Outcome::Uncounted(_), _) => "recount",
        (Settled::Requeued(_), _, _) | (_, _, Fate::Requeue) => "requeue",
        (_, _, Fate::Ack) => "ok",
        (_, _, Fate::Retry { .. }) => "retry",
        (_, _, Fate::DeadLetter { .. }) => "dead_letter",
        (_, _, Fate::Recount { .. }) => "recount",
    }
}

impl ConsumerStats {
    /// Counts one finished delivery.
    pub(crate) fn book(&mut self, report: &Report) {
        // Past the first two arms the fate was carried out (`Done`, or `AckOwed`: the
        // consumer sends the ack, coalesced, and counts it unsettled if that fails).
        match (&report.settled, &report.fate) {
            (Settled::Lost(_), _) => self.unsettled += 1,
            (Settled::Requeued(_), _) => self.requeued += 1,
            (_, Fate::Ack) => match report.outcome {
                Outcome::Handled => self.handled += 1,
                _ => self.aborted += 1,
            },
            (_, Fate::Retry { .. }) => self.retried += 1,
            (_, Fate::DeadLetter { reason }) => {
                self.dead_lettered += 1;
                self.expired += u64::from(reason == EXPIRED);
            }
            (_, Fate::Requeue) => self.requeued += 1,
            (_, Fate::Recount { .. }) => self.recounted += 1,
        }
        match report.outcome {
            Outcome::Undecodable(_) => self.decode_failures += 1,
            Outcome::HandlerGone => self.panics += 1,
            Outcome::TimedOut => self.timeouts += 1,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_outbox::HandlerError;
    use std::time::Duration;

    fn report(outcome: Outcome, fate: Fate, settled: Settled) -> Report {
        Report {
            outcome,
            fate,
            settled,
            handler_time: None,
            tag: 1,
        }
    }

    fn dead(reason: &str) -> Fate {
        Fate::DeadLetter {
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn each_delivery_counts_once() {
        let mut s = ConsumerStats::default();
        s.book(&report(Outcome::Handled, Fate::Ack, Settled::Done));
        s.book(&report(
            Outcome::Failed(HandlerError::abort("x")),
            Fate::Ack,
            Settled::Done,
        ));
        let retry = Fate::Retry {
            delay: Duration::from_millis(100),
        };
        s.book(&report(Outcome::Crashed, retry.clone(), Settled::Done));
        s.book(&report(Outcome::Expired, dead(EXPIRED), Settled::Done));
        s.book(&report(
            Outcome::Undecodable("bad".into()),
            dead("undecodable payload: bad"),
            Settled::Done,
        ));
        s.book(&report(
            Outcome::HandlerGone,
            Fate::Requeue,
            Settled::Requeued("gone".into()),
        ));
        s.book(&report(
            Outcome::Handled,
            Fate::Ack,
            Settled::Lost("closed".into()),
        ));
        s.book(&report(
            Outcome::Uncounted(1),
            Fate::Recount { redeliveries: 1 },
            Settled::Done,
        ));
        let want = ConsumerStats {
            handled: 1,
            aborted: 1,
            retried: 1,
            dead_lettered: 2,
            requeued: 1,
            unsettled: 1,
            recounted: 1,
            decode_failures: 1,
            expired: 1,
            panics: 1, // crashes of factory-made actors are counted at their restart
            ..ConsumerStats::default()
        };
        assert_eq!(s, want);
    }

    #[test]
    fn outcome_labels_name_the_cause_first() {
        let label = |o, f, s| outcome_label(&report(o, f, s));
        assert_eq!(label(Outcome::Handled, Fate::Ack, Settled::Done), "ok");
        let abort = Outcome::Failed(HandlerError::abort("x"));
        assert_eq!(label(abort, Fate::Ack, Settled::Done), "abort");
        let retry = Fate::Retry {
            delay: Duration::from_millis(100),
        };
        assert_eq!(
            label(Outcome::TimedOut, retry.clone(), Settled::Done),
            "timeout"
        );
        assert_eq!(
            label(Outcome::Crashed, retry.clone(), Settled::Done),
            "panic"
        );
        let failed = Outcome::Failed(HandlerError::failed("x"));
        assert_eq!(label(failed.clone(), retry, Settled::Done), "retry");
        assert_eq!(
            label(failed.clone(), dead("failed"), Settled::Done),
            "dead_letter"
        );
        assert_eq!(
            label(failed.clone(), dead(EXPIRED), Settled::Done),
            "expired"
        );
        assert_eq!(
            label(Outcome::Undecodable("x".into()), dead("u"), Settled::Done),
            "undecodable"
        );
        assert_eq!(
            label(failed.clone(), dead("x"), Settled::Requeued("copy".into())),
            "requeue"
        );
        assert_eq!(
            label(failed, Fate::Ack, Settled::Lost("gone".into())),
            "unsettled"
        );
        for (o, f) in [
            (Outcome::Redelivered(3), dead("r")),
            (Outcome::Uncounted(1), Fate::Recount { redeliveries: 1 }),
        ] {
            assert!(crate::metrics::OUTCOMES.contains(&label(o, f, Settled::Done)));
        }
    }

    #[test]
    fn an_unconfirmed_copy_counts_as_requeued_not_retried() {
        let mut s = ConsumerStats::default();
        let retry = Fate::Retry {
            delay: Duration::from_millis(100),
        };
        s.book(&report(
            Outcome::Failed(HandlerError::failed("x")),
            retry,
            Settled::Requeued("nacked".into()),
        ));
        assert_eq!((s.retried, s.requeued), (0, 1));
    }
}
