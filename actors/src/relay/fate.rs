//! What becomes of each claimed row: pure decisions, no I/O.
//!
//! `batch` publishes a batch and reads the broker's [`Answer`] per row; [`Fate::of`] turns
//! an answer into the row's fate, and [`plan`] turns a batch's fates into the statements
//! settling needs (which rows are finished, which get another attempt later, which are parked)
//! and the batch's counts.

use std::time::Duration;

use actix_outbox::outbox_message::Model;
use chrono::{DateTime, Utc};
use tracing::warn;

use super::config::RelayConfig;
use super::envelope;
use crate::backoff::Backoff;
use crate::exchange::{Answer, Unroutable, bounded_reason};

/// What happens to one claimed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Confirmed by the broker: delete or mark sent.
    Sent,
    /// Returned as unroutable in drop mode: counted, then finished like a sent row.
    DroppedUnroutable,
    /// The broker refused it (unroutable with no alternate route, or the channel failed under
    /// it alone): one more attempt later, parked once `max_attempts` is reached.
    Refused(String),
    /// The broker nacked it: a queue it routes to could not take it (a full queue with
    /// `reject-publish` overflow, a queue process in trouble). That is back-pressure, not a
    /// verdict on the row: one more attempt later, with the same backoff, but never parked,
    /// so the row reaches the lagging queue once it has room. The queues that did take it get
    /// a copy on every attempt (duplicates, which at-least-once allows).
    Nacked(String),
    /// The broker cannot take the row as it is (see `envelope::unpublishable`): parked at
    /// once, with the reason, for an operator to fix.
    Unpublishable(String),
    /// Unknown (channel broke, confirm timed out, never published): the row is released
    /// untouched and goes out again later.
    Unknown,
    /// Not published because an older row of its ordering key in the same batch was not
    /// confirmed (see `ordering`): released untouched, and blocked by that row until it is
    /// sent.
    HeldBack,
}

impl Fate {
    /// The fate of a row the broker answered with `answer`.
    pub(crate) fn of(answer: &Answer, unroutable: Unroutable) -> Self {
        match answer {
            Answer::Confirmed => Fate::Sent,
            Answer::Returned if unroutable == Unroutable::Drop => Fate::DroppedUnroutable,
            Answer::Returned => Fate::Refused(
                "unroutable: no queue is bound for this routing key and the alternate exchange \
                 did not take it"
                    .to_owned(),
            ),
            Answer::Nacked => Fate::Nacked(
                "nacked by the broker (a queue it routes to refused it, e.g. full with \
                 reject-publish overflow)"
                    .to_owned(),
            ),
            Answer::Unknown(_) | Answer::Failed(_) => Fate::Unknown,
        }
    }
}

/// Counts of one batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct BatchReport {
    /// Rows claimed.
    pub(crate) claimed: usize,
    /// Rows confirmed and finished.
    pub(crate) sent: usize,
    /// Rows returned as unroutable in drop mode (finished too).
    pub(crate) dropped_unroutable: usize,
    /// Rows refused (rescheduled or parked).
    pub(crate) refused: usize,
    /// Of the refused rows, those parked.
    pub(crate) parked: usize,
    /// Finished rows whose deadline had passed when they were sent.
    pub(crate) expired: usize,
    /// Rows released untouched (their fate is unknown).
    pub(crate) released: usize,
    /// Rows with an ordering key claimed but not published, because an older row of their
    /// key was elsewhere or was not confirmed (released untouched; not in `claimed`).
    pub(crate) held_back: usize,
    /// Why the channel can no longer be used, if it broke or timed out during the batch.
    pub(crate) channel_error: Option<String>,
    /// The channel failed (rather than timing out) with publishes in flight.
    pub(crate) broke: bool,
    /// How long the batch took, claim to commit.
    pub(crate) elapsed: std::time::Duration,
    /// From the end of the claim to the last confirm.
    pub(crate) claim_to_confirm: std::time::Duration,
    /// How long the oldest claimed row had been due when claimed.
    pub(crate) due_lag: std::time::Duration,
}

/// Charges the row of a one-row batch whose channel failed under it: its unknown fate becomes
/// a refusal, so a row that always breaks the channel (or the connection) is rescheduled with
/// backoff and parked after `max_attempts`, instead of blocking the head of the table forever.
///
/// Only rows alone in their batch are charged: in a bigger batch the culprit is unknown, and
/// the relay then publishes the next rows one per batch (see the actor's probing) until each
/// has gone through alone.
pub(crate) fn charge_break(fates: &mut [Fate], why: &str) {
    for fate in fates.iter_mut().filter(|f| **f == Fate::Unknown) {
        *fate = Fate::Refused(format!(
            "the broker channel failed while this row was in flight alone: {why}"
        ));
    }
}

/// Probing after a channel failed under a batch of several rows: the culprit is unknown, so
/// the next that many rows go one per batch, one batch at a time. A row that breaks the
/// channel again then does it alone and is charged for it ([`charge_break`]); the others go
/// through uncharged.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    /// Rows still to publish one per batch.
    left: usize,
}

impl Probe {
    /// Rows per batch: one while probing, else `batch_size`.
    pub(crate) fn limit(&self, batch_size: u32) -> u32 {
        if self.left > 0 { 1 } else { batch_size }
    }

    /// Batches in flight at once: one while probing (so one row's failure cannot take
    /// another's channel or connection with it), else `concurrency`.
    pub(crate) fn slots(&self, concurrency: usize) -> usize {
        if self.left > 0 { 1 } else { concurrency }
    }

    /// Books a finished batch; true when it starts probing.
    pub(crate) fn after(&mut self, report: &BatchReport) -> bool {
        if report.broke && report.claimed > 1 {
            self.left = report.claimed;
            return true;
        }
        if report.claimed > 0 {
            self.left = self.left.saturating_sub(1);
        }
        false
    }
}

/// A refused or unpublishable row, as settling records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The row's id.
    pub(crate) id: i64,
    /// Goes into `last_error`.
    pub(crate) reason: String,
    /// When the row is due again (ignored when parked).
    pub(crate) retry_in: Duration,
    /// Whether the row is parked (taken out of the relay's claims).
    pub(crate) park: bool,
}

/// What settling a batch does, and the batch's counts.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Rows to delete (or mark sent), in one statement.
    pub(crate) finished: Vec<i64>,
    /// Rows to record a failure for, one statement each.
    pub(crate) failures: Vec<Failure>,
    /// The counts.
    pub(crate) report: BatchReport,
}

/// Decides, for each of `rows` and its fate, what settling does.
pub(crate) fn plan(
    rows: &[Model],
    fates: &[Fate],
    config: &RelayConfig,
    now: DateTime<Utc>,
) -> Plan {
    let mut plan = Plan::default();
    plan.report.claimed = rows.len();
    for (row, fate) in rows.iter().zip(fates) {
        let r = &mut plan.report;
        match fate {
            Fate::Sent | Fate::DroppedUnroutable => {
                plan.finished.push(row.id);
                if *fate == Fate::Sent {
                    r.sent += 1;
                    r.expired += usize::from(envelope::is_expired(row, now));
                } else {
                    r.dropped_unroutable += 1;
                    warn!(message_id = %row.message_id, routing_key = %row.routing_key, "unroutable message dropped (Unroutable::Drop)");
                }
            }
            Fate::Refused(reason) | Fate::Nacked(reason) => {
                let (attempts, parkable, retry_in) = after_refusal(row.attempts, config);
                let park = parkable && matches!(fate, Fate::Refused(_));
                r.refused += 1;
                r.parked += usize::from(park);
                if park {
                    warn!(message_id = %row.message_id, attempts, %reason, "row parked after too many refused publishes");
                }
                plan.failures.push(Failure {
                    id: row.id,
                    reason: bounded_reason(reason).into_owned(),
                    retry_in,
                    park,
                });
            }
            Fate::Unpublishable(reason) => {
                r.refused += 1;
                r.parked += 1;
                plan.failures.push(Failure {
                    id: row.id,
                    reason: bounded_reason(reason).into_owned(),
                    retry_in: Duration::ZERO,
                    park: true,
                });
            }
            Fate::Unknown => r.released += 1,
            Fate::HeldBack => r.held_back += 1,
        }
    }
    plan.report.claimed -= plan.report.held_back;
    plan
}

/// A row refused once more, having failed `attempts_so_far` times before: its new attempt
/// count, whether it is parked now, and the backoff before its next try.
pub(crate) fn after_refusal(attempts_so_far: i32, config: &RelayConfig) -> (u32, bool, Duration) {
    let attempts = u32::try_from(attempts_so_far)
        .unwrap_or(0)
        .saturating_add(1);
    let park = attempts >= config.max_attempts;
    let retry_in = config.retry_backoff.delay_with_jitter(attempts - 1);
    (attempts, park, retry_in)
}

/// How long the relay sleeps before looking again, when the earliest unsent row is due in
/// `due_in` and the last `empty_rounds` claims in a row found nothing.
///
/// A due row that the claim skips (locked by another relay, or by an emitting transaction
/// that has not committed) keeps `due_in` at zero; looking again every few milliseconds would
/// spin for as long as the lock is held. So each empty round doubles the wait, from 5 ms,
/// up to the poll interval; a claim that finds rows resets the count. `None`: nothing due
/// before the poll interval, which covers it.
pub(crate) fn due_wait(due_in: Duration, empty_rounds: u32, poll: Duration) -> Option<Duration> {
    if due_in >= poll {
        return None;
    }
    let floor = match empty_rounds {
        0 => Duration::ZERO,
        n => Duration::from_millis(5).saturating_mul(1 << (n - 1).min(20)),
    };
    // A little slack so the row is due by the database clock when the relay looks.
    Some((due_in.max(floor) + Duration::from_millis(5)).min(poll))
}

/// How long an adaptively polling relay waits before its next look: while batches find rows
/// (`empty_rounds` 0), `min` counted from the last batch's start (`since_start` ago), so the
/// batch slots take turns; after `n` empty looks in a row, `min · 2ⁿ` up to `max`.
pub(crate) fn poll_wait(poll: &Backoff, empty_rounds: u32, since_start: Duration) -> Duration {
    match empty_rounds {
        0 => poll.min.saturating_sub(since_start),
        n => poll.delay(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uuid::Uuid;

    fn row(id: i64, attempts: i32, expires_at: Option<DateTime<Utc>>) -> Model {
        let now = Utc::now();
        Model {
            id,
            message_id: Uuid::now_v7(),
            routing_key: "user.created".into(),
            payload: b"{}".to_vec(),
            content_type: "application/json".into(),
            headers: json!({}),
            created_at: now,
            send_after: now,
            expires_at,
            attempts,
            last_error: None,
            sent_at: None,
            parked_at: None,
            ordering_key: None,
        }
    }

    #[test]
    fn answers_become_fates() {
        let keep = Unroutable::AlternateExchange;
        assert_eq!(Fate::of(&Answer::Confirmed, keep), Fate::Sent);
        assert!(
            matches!(Fate::of(&Answer::Returned, keep), Fate::Refused(r) if r.contains("unroutable"))
        );
        assert_eq!(
            Fate::of(&Answer::Returned, Unroutable::Drop),
            Fate::DroppedUnroutable
        );
        assert!(matches!(Fate::of(&Answer::Nacked, keep), Fate::Nacked(r) if r.contains("nacked")));
        assert_eq!(
            Fate::of(&Answer::Unknown("gone".into()), keep),
            Fate::Unknown
        );
    }

    #[test]
    fn refusals_back_off_then_park() {
        let config = RelayConfig::default()
            .with_max_attempts(3)
            .with_retry_backoff(Duration::from_secs(1), Duration::from_secs(60));
        let (attempts, park, retry_in) = after_refusal(0, &config);
        assert_eq!((attempts, park), (1, false));
        assert!(retry_in >= Duration::from_millis(500) && retry_in <= Duration::from_secs(1));
        let (attempts, park, retry_in) = after_refusal(1, &config);
        assert_eq!((attempts, park), (2, false));
        assert!(retry_in >= Duration::from_secs(1) && retry_in <= Duration::from_secs(2));
        assert!(after_refusal(2, &config).1, "the third refusal parks");
        assert_eq!(
            after_refusal(-5, &config).0,
            1,
            "a corrupt count starts over"
        );
    }

    #[test]
    fn the_due_timer_backs_off_while_due_rows_stay_locked() {
        let poll = Duration::from_millis(500);
        let ms = |n| Duration::from_millis(n);
        assert_eq!(due_wait(ms(0), 0, poll), Some(ms(5)), "first look: at once");
        assert_eq!(due_wait(ms(100), 0, poll), Some(ms(105)));
        assert_eq!(due_wait(ms(600), 0, poll), None, "the poll covers it");
        let waits: Vec<_> = (1..=9)
            .map(|n| due_wait(ms(0), n, poll).expect("due"))
            .collect();
        assert_eq!(
            waits,
            [10, 15, 25, 45, 85, 165, 325, 500, 500].map(ms),
            "doubling up to the poll interval"
        );
        assert_eq!(due_wait(ms(0), u32::MAX, poll), Some(poll), "no overflow");
    }

    #[test]
    fn a_broken_batch_is_probed_row_by_row() {
        let mut probe = Probe::default();
        assert_eq!((probe.limit(500), probe.slots(2)), (500, 2));
        let broken = BatchReport {
            claimed: 3,
            broke: true,
            ..BatchReport::default()
        };
        assert!(probe.after(&broken));
        let one = BatchReport {
            claimed: 1,
            ..BatchReport::default()
        };
        for _ in 0..2 {
            assert_eq!((probe.limit(500), probe.slots(2)), (1, 1));
            assert!(!probe.after(&one));
        }
        let one_broke = BatchReport {
            broke: true,
            ..one.clone()
        };
        assert!(
            !probe.after(&one_broke),
            "a lone row is charged, not probed"
        );
        assert_eq!(
            probe.limit(500),
            500,
            "three rows went alone: back to full batches"
        );
        assert!(
            !probe.after(&BatchReport::default()),
            "empty rounds change nothing"
        );
    }

    #[test]
    fn a_break_charges_what_was_unknown() {
        let mut fates = vec![Fate::Unknown, Fate::Sent, Fate::Unpublishable("big".into())];
        charge_break(&mut fates, "FRAME_ERROR");
        assert!(matches!(&fates[0], Fate::Refused(r) if r.contains("FRAME_ERROR")));
        assert_eq!(fates[1], Fate::Sent);
        assert_eq!(fates[2], Fate::Unpublishable("big".into()));
    }

    #[test]
    fn a_plan_books_each_row_once() {
        let now = Utc::now();
        let config = RelayConfig::default().with_max_attempts(2);
        let past = Some(now - chrono::TimeDelta::seconds(1));
        let rows = [
            row(1, 0, past),
            row(2, 0, past), // dropped, not sent: not counted as expired
            row(3, 1, None),
            row(4, 0, None),
            row(5, 0, None),
            row(6, 9, None),
        ];
        let fates = [
            Fate::Sent,
            Fate::DroppedUnroutable,
            Fate::Refused("unroutable".into()),
            Fate::Unpublishable("too big".into()),
            Fate::Unknown,
            Fate::Nacked("nacked".into()),
        ];
        let plan = plan(&rows, &fates, &config, now);
        assert_eq!(plan.finished, [1, 2]);
        let failed: Vec<(i64, bool)> = plan.failures.iter().map(|f| (f.id, f.park)).collect();
        assert_eq!(
            failed,
            [(3, true), (4, true), (6, false)],
            "row 3 reached max_attempts; a nack never parks, however many attempts"
        );
        let want = BatchReport {
            claimed: 6,
            sent: 1,
            dropped_unroutable: 1,
            refused: 3,
            parked: 2,
            expired: 1,
            released: 1,
            ..BatchReport::default()
        };
        assert_eq!(plan.report, want);
    }

    #[test]
    fn adaptive_polling_keeps_pace_while_busy_and_backs_off_when_idle() {
        let poll = Backoff::new(Duration::from_millis(2), Duration::from_millis(100));
        let ms = Duration::from_millis;
        assert_eq!(
            poll_wait(&poll, 0, ms(0)),
            ms(2),
            "busy: min after the last start"
        );
        assert_eq!(poll_wait(&poll, 0, ms(1)), ms(1), "counted from the start");
        assert_eq!(
            poll_wait(&poll, 0, ms(5)),
            ms(0),
            "a batch longer than min: at once"
        );
        assert_eq!(
            poll_wait(&poll, 1, ms(0)),
            ms(4),
            "one empty look: twice min"
        );
        assert_eq!(poll_wait(&poll, 3, ms(0)), ms(16));
        assert_eq!(poll_wait(&poll, 10, ms(0)), ms(100), "capped at max");
        assert_eq!(poll_wait(&poll, u32::MAX, ms(0)), ms(100), "no overflow");
    }
}
