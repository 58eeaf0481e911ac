//! The relay wing: [`RelayActor`] moves committed outbox rows to the topic exchange.
//!
//! One batch, start to finish: `sql` builds the claim (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL), `batch` claims the rows and publishes them pipelined with confirms (its stages timed by `stages`), `fate`
//! decides what each row's answer means (sent, refused and rescheduled with backoff, parked,
//! released), and `batch` applies those decisions in the claiming transaction. `envelope`
//! maps a row to its AMQP message, `notify` wakes the actor on PostgreSQL NOTIFY, `housekeeping`
//! purges kept rows and watches the unroutable queue, `config` holds [`RelayConfig`].
//!
//! The actor only sequences batches; the decisions are pure functions with unit tests.

mod actor;
mod batch;
mod config;
mod envelope;
mod fate;
mod file_lock;
mod housekeeping;
mod notify;
mod ordering;
mod sql;
mod stages;
mod trace;

use actix::Message;

use crate::metrics::RelayMetrics;

pub use actor::RelayActor;
pub(crate) use actor::supported;
pub use config::{Cleanup, MYSQL_POLL_INTERVAL, RABBITMQ_MAX_MESSAGE_BYTES, RelayConfig};
pub(crate) use housekeeping::gauges;
pub(crate) use sql::RelaySql;

/// Asks the relay to look for due rows now (it coalesces wake-ups while a batch runs).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct WakeUp;

/// Asks for the relay's counters.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "RelayStats")]
pub struct GetRelayStats;

/// Stops the relay gracefully: the batch in flight finishes (and commits) first, the LISTEN
/// task ends, the channel closes. Resolves with the final counters once the relay has stopped.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "RelayStats")]
pub struct StopRelay;

/// Counters of one relay since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Claim rounds run, including those that found nothing due.
    pub rounds: u64,
    /// Batches that claimed at least one row.
    pub batches: u64,
    /// Messages confirmed by the broker (their rows deleted or marked sent).
    pub published: u64,
    /// Unroutable messages dropped and counted (only with
    /// [`Unroutable::Drop`](crate::Unroutable::Drop)).
    pub unroutable_dropped: u64,
    /// Messages waiting in `<exchange>.unroutable` when last checked.
    pub unroutable_queued: u64,
    /// Publishes the broker refused (nack, or unroutable without an alternate route).
    pub refused: u64,
    /// Rows parked after too many refused publishes (nacks never park).
    pub parked: u64,
    /// Messages published after their deadline had passed (sent with expiration 0, so
    /// queues with a dead-letter exchange dead-letter them).
    pub expired: u64,
    /// Rows released unconfirmed after a broker failure (they go out again: possible
    /// duplicates).
    pub released: u64,
    /// Rows with an ordering key claimed but left for a later batch, because an older row
    /// of their key was in another batch or was not confirmed (see
    /// [`OutboxEvent::with_ordering_key`](actix_outbox::OutboxEvent::with_ordering_key)).
    pub held_back: u64,
    /// Batches that failed on a database or broker error.
    pub errors: u64,
    /// Sent rows purged (keep mode).
    pub purged: u64,
    /// SQLite: another relay holds the file's relay lock, so this one stands by (it takes
    /// over when the other stops).
    pub standby: bool,
    /// Rows due and unsent (not parked), as of the last housekeeping round.
    pub backlog: u64,
    /// How long the oldest of them had waited, as of the last housekeeping round.
    pub oldest_due_age: std::time::Duration,
}

impl RelayStats {
    /// Adds one batch's counts, to these counters and to the relay's metrics.
    fn book(&mut self, r: &fate::BatchReport, m: &RelayMetrics) {
        m.published.increment(r.sent as u64);
        m.unroutable.increment(r.dropped_unroutable as u64);
        m.refused.increment(r.refused as u64);
        m.parked.increment(r.parked as u64);
        m.expired.increment(r.expired as u64);
        m.released.increment(r.released as u64);
        m.errors.increment(u64::from(r.channel_error.is_some()));
        if r.claimed > 0 {
            m.batch_duration.record(r.elapsed.as_secs_f64());
            m.claim_to_confirm.record(r.claim_to_confirm.as_secs_f64());
            m.due_lag.record(r.due_lag.as_secs_f64());
        }
        self.rounds += 1;
        self.batches += u64::from(r.claimed > 0);
        self.published += r.sent as u64;
        self.unroutable_dropped += r.dropped_unroutable as u64;
        self.refused += r.refused as u64;
        self.parked += r.parked as u64;
        self.expired += r.expired as u64;
        self.released += r.released as u64;
        self.held_back += r.held_back as u64;
        self.errors += u64::from(r.channel_error.is_some());
    }
}
