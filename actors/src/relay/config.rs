//! `RelayConfig`: what the relay publishes where, how fast, and what it does on failure.

use std::time::Duration;

use actix_outbox::{Error, Result, TableName};

use crate::backoff::Backoff;
use crate::exchange::{TopologyMode, Unroutable, check_exchange_name};

/// What happens to rows once the broker confirmed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Cleanup {
    /// Delete the row in the claiming transaction. The default.
    #[default]
    Delete,
    /// Keep the row with `sent_at` set; rows sent more than `retention` ago are purged in
    /// small batches between publishing batches.
    Keep {
        /// How long sent rows are kept.
        retention: Duration,
    },
}

/// Settings of a [`RelayActor`](crate::RelayActor). `Default` + consuming `with_*` setters;
/// [`validate`](Self::validate) runs when the relay is built.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use actix_outbox_actors::{Cleanup, RelayConfig};
///
/// let config = RelayConfig::default()
///     .with_exchange("events")
///     .with_batch_size(500)
///     .with_poll_interval(Duration::from_secs(5))
///     .with_cleanup(Cleanup::Keep { retention: Duration::from_secs(86_400) });
/// config.validate()?;
/// # Ok::<(), actix_outbox::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The outbox table to drain.
    pub(crate) table: TableName,
    /// The topic exchange to publish to.
    pub(crate) exchange: String,
    /// Most rows claimed and published per batch.
    pub(crate) batch_size: u32,
    /// Batches one relay keeps in flight (PostgreSQL; SQLite always runs one).
    pub(crate) concurrency: u32,
    /// Safety-net poll when no NOTIFY arrives (and the only wake-up on SQLite and MySQL).
    pub(crate) poll_interval: Duration,
    /// Whether `poll_interval` was set (else a MySQL relay polls every
    /// [`MYSQL_POLL_INTERVAL`]).
    pub(crate) poll_interval_set: bool,
    /// Longest wait for the broker to take and confirm one batch.
    pub(crate) confirm_timeout: Duration,
    /// Longest a claim transaction may sit idle before PostgreSQL ends it (`None`: twice the
    /// confirm timeout).
    pub(crate) claim_lease: Option<Duration>,
    /// Failed publish attempts after which a row is parked.
    pub(crate) max_attempts: u32,
    /// Delay before re-publishing a refused row, by attempt.
    pub(crate) retry_backoff: Backoff,
    /// Delay after a broker or database error before the next batch, by consecutive error.
    pub(crate) error_backoff: Backoff,
    /// Delete or keep sent rows.
    pub(crate) cleanup: Cleanup,
    /// Alternate exchange, or drop and count.
    pub(crate) unroutable: Unroutable,
    /// Declare or only check the topology.
    pub(crate) topology: TopologyMode,
    /// Listen for PostgreSQL NOTIFY (ignored on SQLite).
    pub(crate) listen: bool,
    /// Adaptive polling: after a batch that found rows look again after `min`, after each
    /// empty look twice as long, up to `max` (`None`: wake-ups and the poll interval only).
    pub(crate) adaptive_poll: Option<Backoff>,
    /// The largest payload the broker takes (RabbitMQ's `max_message_size`).
    pub(crate) max_message_bytes: usize,
}

/// The poll interval of a relay on MySQL or MariaDB when none is set: the only wake-up there.
pub const MYSQL_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// RabbitMQ's default `max_message_size` (3.8 and later): 128 MiB.
pub const RABBITMQ_MAX_MESSAGE_BYTES: usize = 128 << 20;

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            table: TableName::default(),
            exchange: "outbox".to_owned(),
            batch_size: 500,
            concurrency: 2,
            poll_interval: Duration::from_secs(5),
            poll_interval_set: false,
            confirm_timeout: Duration::from_secs(15),
            claim_lease: None,
            max_attempts: 10,
            retry_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
            error_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            cleanup: Cleanup::Delete,
            unroutable: Unroutable::AlternateExchange,
            topology: TopologyMode::Declare,
            listen: true,
            adaptive_poll: None,
            max_message_bytes: RABBITMQ_MAX_MESSAGE_BYTES,
        }
    }
}

impl RelayConfig {
    /// Sets the outbox table to drain. Defaults to `outbox`.
    #[must_use]
    pub fn with_table(mut self, table: TableName) -> Self {
        self.table = table;
        self
    }

    /// Sets the topic exchange. Defaults to `outbox`.
    #[must_use]
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// Sets the most rows per batch (1..=10,000). Defaults to 500.
    #[must_use]
    pub fn with_batch_size(mut self, batch_size: u32) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Sets how many batches one relay keeps in flight on PostgreSQL (1..=16): while one
    /// batch waits for the broker's confirms, the next is claimed and published. Use 1 for
    /// publishing in claim order from a single relay. SQLite always runs one batch at a time.
    /// Defaults to 2.
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: u32) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Sets the poll interval. Defaults to 5 s: a safety net on PostgreSQL, where NOTIFY
    /// wakes the relay at each commit. MySQL and MariaDB have no such notification, so there
    /// the poll is the wake-up, and it defaults to [`MYSQL_POLL_INTERVAL`] (250 ms) instead:
    /// an event waits half of that on average before it is claimed, and an idle relay runs
    /// four cheap claims a second.
    #[must_use]
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self.poll_interval_set = true;
        self
    }

    /// Sets the longest wait for the broker to take and confirm one batch (writing its
    /// messages, then their confirms). Past it the batch's rows are released untouched and go
    /// out again later. Defaults to 15 s.
    ///
    /// This also bounds how long a batch keeps its transaction open while the broker blocks
    /// publishers (a memory or disk alarm). The price: messages the client had queued but not
    /// yet written go out when the alarm clears, and their rows go out again, so an alarm
    /// longer than the timeout can cause duplicates (allowed by at-least-once delivery).
    #[must_use]
    pub fn with_confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Sets the claim lease on PostgreSQL: the longest a batch's transaction may sit idle
    /// (between its claim and its settling, while the broker confirms) before the server
    /// ends it (`idle_in_transaction_session_timeout`, set for that transaction only). A
    /// relay whose host freezes or loses the network mid-batch then releases its rows after
    /// the lease instead of holding their locks until TCP gives up (which can take hours),
    /// and other relays publish them (again: at-least-once). Must exceed the confirm timeout,
    /// which bounds a healthy batch's idle time. Defaults to twice the confirm timeout.
    #[must_use]
    pub fn with_claim_lease(mut self, lease: Duration) -> Self {
        self.claim_lease = Some(lease);
        self
    }

    /// The claim lease in force (see [`with_claim_lease`](Self::with_claim_lease)).
    #[must_use]
    pub fn claim_lease(&self) -> Duration {
        self.claim_lease
            .unwrap_or_else(|| self.confirm_timeout.saturating_mul(2))
    }

    /// Sets after how many refused publishes a row is parked: returned as unroutable with no
    /// alternate exchange, or breaking its channel alone. Nacks never park a row: they are
    /// back-pressure from a queue (full with `reject-publish` overflow, say), so the row keeps
    /// being retried with backoff until that queue takes it. Defaults to 10.
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets the delay before re-publishing a refused row: `min` doubling up to `max`.
    /// Defaults to 1 s up to 5 min.
    #[must_use]
    pub fn with_retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.retry_backoff = Backoff::new(min, max);
        self
    }

    /// Sets the pause after a broker or database error. Defaults to 100 ms up to 10 s.
    #[must_use]
    pub fn with_error_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.error_backoff = Backoff::new(min, max);
        self
    }

    /// Sets what happens to confirmed rows. Defaults to [`Cleanup::Delete`].
    #[must_use]
    pub fn with_cleanup(mut self, cleanup: Cleanup) -> Self {
        self.cleanup = cleanup;
        self
    }

    /// Sets how unroutable messages are handled. Defaults to
    /// [`Unroutable::AlternateExchange`].
    #[must_use]
    pub fn with_unroutable(mut self, unroutable: Unroutable) -> Self {
        self.unroutable = unroutable;
        self
    }

    /// Sets whether topology is declared or only checked. Defaults to
    /// [`TopologyMode::Declare`].
    #[must_use]
    pub fn with_topology(mut self, mode: TopologyMode) -> Self {
        self.topology = mode;
        self
    }

    /// Sets the largest payload the broker accepts, in bytes: RabbitMQ's `max_message_size`.
    /// Defaults to its default, [`RABBITMQ_MAX_MESSAGE_BYTES`] (128 MiB).
    ///
    /// The broker answers a larger message by closing the publishing channel, which would fail
    /// the row's whole batch again and again. So the relay parks such a row at once, with the
    /// reason in `last_error`, and publishes the rest. Set this to the broker's value if it was
    /// changed there.
    #[must_use]
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Turns PostgreSQL NOTIFY wake-ups on or off (polling only). Defaults to on.
    #[must_use]
    pub fn with_listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// Polls adaptively, for tables whose NOTIFY trigger is off
    /// (`Outbox::set_notify(&db, false)`) or for MySQL: after a batch that found rows the
    /// relay looks again after `min`; after each look that found none it waits twice as
    /// long, up to `max`. So a busy relay follows new rows within about `min`, and an idle
    /// one costs one empty claim (an index probe) per `max`. The poll interval stays the
    /// safety net. Defaults to off (NOTIFY and the poll interval). `docs/tuning.md`,
    /// "Wake-ups", compares the two with numbers.
    #[must_use]
    pub fn with_adaptive_poll(mut self, min: Duration, max: Duration) -> Self {
        self.adaptive_poll = Some(Backoff::new(min, max));
        self
    }

    /// The table this relay drains.
    #[must_use]
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The exchange this relay publishes to.
    #[must_use]
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The alternate exchange and queue for unroutable messages: `<exchange>.unroutable`.
    #[must_use]
    pub fn unroutable_name(&self) -> String {
        crate::exchange::unroutable_name(&self.exchange)
    }

    /// Checks every setting.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the first bad setting: batch size outside 1..=10,000,
    /// a zero duration, `max_attempts` or `max_message_bytes` of 0, a backoff whose minimum exceeds its maximum, or an
    /// exchange name that is empty, longer than 200 bytes, starts with `amq.` (reserved by
    /// RabbitMQ) or has characters outside `[A-Za-z0-9_.:-]`.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if !(1..=10_000).contains(&self.batch_size) {
            return bad("batch_size", "must be between 1 and 10000");
        }
        if !(1..=16).contains(&self.concurrency) {
            return bad("concurrency", "must be between 1 and 16");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if self.max_message_bytes == 0 {
            return bad("max_message_bytes", "must be at least 1");
        }
        check_exchange_name(&self.exchange)?;
        let positive = actix_outbox::__private::require_positive;
        positive("poll_interval", self.poll_interval)?;
        positive("confirm_timeout", self.confirm_timeout)?;
        if self.claim_lease() <= self.confirm_timeout {
            return bad(
                "claim_lease",
                "must exceed confirm_timeout (a healthy batch sits idle up to that long)",
            );
        }
        self.retry_backoff.validate("retry_backoff")?;
        self.error_backoff.validate("error_backoff")?;
        if let Some(poll) = &self.adaptive_poll {
            poll.validate("adaptive_poll")?;
        }
        if let Cleanup::Keep { retention } = self.cleanup {
            positive("retention", retention)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(config: RelayConfig) -> &'static str {
        match config.validate() {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        RelayConfig::default().validate().expect("defaults");
    }

    #[test]
    fn each_bad_setting_is_named() {
        let d = RelayConfig::default;
        assert_eq!(field_of(d().with_batch_size(0)), "batch_size");
        assert_eq!(field_of(d().with_batch_size(10_001)), "batch_size");
        assert_eq!(field_of(d().with_max_attempts(0)), "max_attempts");
        assert_eq!(field_of(d().with_concurrency(0)), "concurrency");
        assert_eq!(
            field_of(d().with_poll_interval(Duration::ZERO)),
            "poll_interval"
        );
        assert_eq!(field_of(d().with_max_message_bytes(0)), "max_message_bytes");
        assert_eq!(
            field_of(d().with_confirm_timeout(Duration::ZERO)),
            "confirm_timeout"
        );
        assert_eq!(field_of(d().with_exchange("")), "exchange");
        assert_eq!(
            field_of(d().with_claim_lease(Duration::from_secs(15))),
            "claim_lease"
        );
        let short = d()
            .with_confirm_timeout(Duration::from_secs(2))
            .with_claim_lease(Duration::from_secs(3));
        short.validate().expect("a lease above the confirm timeout");
        assert_eq!(
            d().claim_lease(),
            Duration::from_secs(30),
            "twice the default"
        );
        assert_eq!(field_of(d().with_exchange("amq.topic")), "exchange");
        assert_eq!(field_of(d().with_exchange("bad name")), "exchange");
        assert_eq!(
            field_of(d().with_retry_backoff(Duration::from_secs(2), Duration::from_secs(1))),
            "retry_backoff"
        );
        assert_eq!(
            field_of(d().with_adaptive_poll(Duration::ZERO, Duration::from_millis(100))),
            "adaptive_poll"
        );
        assert_eq!(
            field_of(d().with_adaptive_poll(Duration::from_secs(1), Duration::from_millis(100))),
            "adaptive_poll"
        );
        d().with_adaptive_poll(Duration::from_millis(2), Duration::from_millis(100))
            .validate()
            .expect("a positive minimum below the maximum");
        assert_eq!(
            field_of(d().with_cleanup(Cleanup::Keep {
                retention: Duration::ZERO
            })),
            "retention"
        );
    }
}
