//! `WorkerConfig`: the settings every queue of a [`Worker`](crate::Worker) shares, and the
//! defaults a [`Listen`](crate::Listen) may override per queue.

use std::time::Duration;

use actix_outbox::{Error, Result};

use super::retry::{RetryDelay, RetryPolicy, resolve_delays};
use crate::backoff::Backoff;
use crate::exchange::{TopologyMode, Unroutable, check_exchange_name};

/// The kind of queue declared for each handler and its dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueType {
    /// Replicated, durable queues: RabbitMQ's recommendation for anything that must not be
    /// lost. The default.
    ///
    /// Newer RabbitMQ versions (4.0+) give quorum queues a delivery limit of their own (20 by
    /// default): a message requeued that often is dead-lettered by the broker into
    /// `dlq_<queue>`. The worker requeues only when it could not settle a message (broker
    /// trouble, a handler actor that is gone), so the limit is a safety net, not a retry tier.
    #[default]
    Quorum,
    /// Classic durable queues (single node; lighter).
    Classic,
}

impl QueueType {
    /// The `x-queue-type` argument value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// Settings of a [`Worker`](crate::Worker). `Default` + consuming `with_*` setters; checked
/// once by [`Worker::new`](crate::Worker::new).
///
/// The retry settings are worker-wide defaults that each [`Listen`](crate::Listen) may
/// override.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use actix_outbox_actors::{QueueType, WorkerConfig};
///
/// let config = WorkerConfig::default()
///     .with_exchange("events")
///     .with_prefetch(50)
///     .with_queue_type(QueueType::Classic)
///     .with_retry_delays(["500ms", "5s", "1m"])
///     .with_grace_period(Duration::from_secs(10));
/// config.validate()?;
/// # Ok::<(), actix_outbox::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The topic exchange the relay publishes to; queues are bound to it.
    pub(crate) exchange: String,
    /// Unacked deliveries per queue (also how many handlers may run at once per queue).
    pub(crate) prefetch: u16,
    /// Quorum or classic queues.
    pub(crate) queue_type: QueueType,
    /// Declare the topology, or only check that it exists.
    pub(crate) topology: TopologyMode,
    /// Must match the relay's setting: the exchange is declared with the same arguments.
    pub(crate) unroutable: Unroutable,
    /// Whether plain handler errors are retried.
    pub(crate) retry_on_error: bool,
    /// Retry delays, as configured (checked by `validate`).
    pub(crate) retry_delays: Vec<RetryDelay>,
    /// How long `stop` waits for handlers in flight.
    pub(crate) grace_period: Duration,
    /// Longest wait for a channel from the connection supervisor.
    pub(crate) channel_timeout: Duration,
    /// Longest wait for the broker to confirm a retry or dead-letter copy.
    pub(crate) confirm_timeout: Duration,
    /// Longest wait for a handler's answer, unless a listener sets its own.
    pub(crate) handler_timeout: Duration,
    /// Longest time a handled delivery's ack waits to be coalesced with others.
    pub(crate) ack_linger: Duration,
    /// Unsettled deliveries of one message after which it is dead-lettered.
    pub(crate) max_redeliveries: u32,
    /// Pause between attempts to get consuming again after a lost channel.
    pub(crate) reconnect: Backoff,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            exchange: "outbox".to_owned(),
            prefetch: 10,
            queue_type: QueueType::Quorum,
            topology: TopologyMode::Declare,
            unroutable: Unroutable::AlternateExchange,
            retry_on_error: true,
            retry_delays: ["1s", "10s", "1m", "5m"].map(RetryDelay::from).to_vec(),
            grace_period: Duration::from_secs(30),
            channel_timeout: Duration::from_secs(15),
            confirm_timeout: Duration::from_secs(15),
            handler_timeout: Duration::from_secs(300),
            ack_linger: DEFAULT_ACK_LINGER,
            max_redeliveries: 20,
            reconnect: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
        }
    }
}

impl WorkerConfig {
    /// Sets the topic exchange to consume from (the relay's). Defaults to `outbox`.
    #[must_use]
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// Sets how many unacked deliveries each queue may hold, which is also how many of its
    /// handlers may run at once (1..=65,535). Defaults to 10.
    #[must_use]
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Sets the queue type of handler and dead-letter queues. Defaults to
    /// [`QueueType::Quorum`].
    #[must_use]
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// Sets whether the topology is declared or only checked (least privilege). Defaults to
    /// [`TopologyMode::Declare`].
    #[must_use]
    pub fn with_topology(mut self, mode: TopologyMode) -> Self {
        self.topology = mode;
        self
    }

    /// Sets how the exchange treats unroutable messages; must match the relay's, because both
    /// declare the exchange with the same arguments. Defaults to
    /// [`Unroutable::AlternateExchange`].
    #[must_use]
    pub fn with_unroutable(mut self, unroutable: Unroutable) -> Self {
        self.unroutable = unroutable;
        self
    }

    /// Sets whether plain handler errors are retried (`false`: dead-lettered at once;
    /// [`HandlerError::Retry`](actix_outbox::HandlerError::Retry) still retries). Defaults to
    /// `true`.
    #[must_use]
    pub fn with_retry_on_error(mut self, retry: bool) -> Self {
        self.retry_on_error = retry;
        self
    }

    /// Sets the retry delays: the n-th retry waits the n-th delay, and a message that fails
    /// once more after the last one is dead-lettered. Accepts [`Duration`]s and text such as
    /// `"500ms"` or `"1m30s"`; an empty list means no retries. Defaults to 1s, 10s, 1m, 5m.
    #[must_use]
    pub fn with_retry_delays<I>(mut self, delays: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<RetryDelay>,
    {
        self.retry_delays = delays.into_iter().map(Into::into).collect();
        self
    }

    /// Sets how long a graceful stop waits for handlers in flight before closing the channel
    /// anyway (their messages are then redelivered). Defaults to 30 s.
    #[must_use]
    pub fn with_grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }

    /// Sets the longest wait for a channel from the connection supervisor. Defaults to 15 s.
    #[must_use]
    pub fn with_channel_timeout(mut self, timeout: Duration) -> Self {
        self.channel_timeout = timeout;
        self
    }

    /// Sets the longest wait for the broker to confirm a retry or dead-letter copy. Defaults
    /// to 15 s.
    #[must_use]
    pub fn with_confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Sets how long a handler may take to answer before the delivery counts as a failed
    /// attempt (retried, or dead-lettered once the tiers are used up). A hung handler would
    /// otherwise pin its prefetch slot for ever; actix cannot take an event back, so the
    /// handler actor still has it and may still finish it (at-least-once: the retry may then
    /// be a duplicate). Each [`Listen`](crate::Listen) may set its own. Defaults to 5 min.
    #[must_use]
    pub fn with_handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = timeout;
        self
    }

    /// Sets how long the ack of a handled delivery may wait to go out together with others,
    /// in one `multiple` ack. The acks owed go at once when a quarter of the prefetch (at
    /// most 128) has gathered, else when the oldest has waited this long. A longer linger
    /// means fewer ack frames on a slow stream and a longer window in which a killed worker
    /// gets handled messages redelivered (duplicates, never losses). `Duration::ZERO` sends
    /// the acks at the end of each actor turn. At most 1 s. Defaults to 2 ms.
    #[must_use]
    pub fn with_ack_linger(mut self, linger: Duration) -> Self {
        self.ack_linger = linger;
        self
    }

    /// Sets after how many unsettled deliveries a message is dead-lettered without calling
    /// its handler: deliveries that ended in a crashed process, a closed channel or a requeue
    /// (its retry copy could not be confirmed), counted by the broker in `x-delivery-count`.
    /// This bounds every loop, a message that kills the process included. Quorum queues
    /// count; classic queues do not, so there the limit never applies. Defaults to 20.
    #[must_use]
    pub fn with_max_redeliveries(mut self, redeliveries: u32) -> Self {
        self.max_redeliveries = redeliveries;
        self
    }

    /// Sets the pause before getting a channel again after one was lost: `min` doubling up
    /// to `max`, with jitter. Defaults to 100 ms up to 10 s.
    #[must_use]
    pub fn with_reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect = Backoff::new(min, max);
        self
    }

    /// The retry delays, parsed.
    ///
    /// # Errors
    ///
    /// As [`WorkerConfig::validate`] for the delays.
    pub fn retry_delays(&self) -> Result<Vec<Duration>> {
        resolve_delays(&self.retry_delays)
    }

    /// The exchange the worker consumes from.
    #[must_use]
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// Checks every setting.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the first bad setting (an invalid exchange name, a
    /// prefetch of 0, a zero duration, a backoff whose minimum exceeds its maximum, a delay
    /// outside 1 ms ..= 49 days), or [`Error::InvalidDuration`] for delay text that does not
    /// parse.
    pub fn validate(&self) -> Result<()> {
        check_exchange_name(&self.exchange)?;
        check_prefetch(self.prefetch)?;
        let positive = actix_outbox::__private::require_positive;
        positive("grace_period", self.grace_period)?;
        positive("channel_timeout", self.channel_timeout)?;
        positive("confirm_timeout", self.confirm_timeout)?;
        positive("handler_timeout", self.handler_timeout)?;
        if self.ack_linger > MAX_ACK_LINGER {
            return Err(Error::InvalidConfig {
                field: "ack_linger",
                reason: format!(
                    "{:?} is longer than {MAX_ACK_LINGER:?}: handled messages would wait that long \
                     for their ack, and be redelivered if the worker dies meanwhile",
                    self.ack_linger
                ),
            });
        }
        if self.max_redeliveries == 0 {
            return Err(Error::InvalidConfig {
                field: "max_redeliveries",
                reason: "must be at least 1 (0 would dead-letter every message unhandled)"
                    .to_owned(),
            });
        }
        self.reconnect.validate("reconnect_backoff")?;
        resolve_delays(&self.retry_delays)?;
        Ok(())
    }

    /// The worker-wide retry policy (assumes `validate` passed).
    pub(crate) fn policy(&self) -> Result<RetryPolicy> {
        Ok(RetryPolicy {
            retry_on_error: self.retry_on_error,
            delays: resolve_delays(&self.retry_delays)?,
        })
    }
}

/// How long an owed ack waits by default.
const DEFAULT_ACK_LINGER: Duration = Duration::from_millis(2);

/// The longest linger `validate` accepts.
const MAX_ACK_LINGER: Duration = Duration::from_secs(1);

/// A prefetch of 0 would mean "unlimited" to RabbitMQ: refused.
pub(crate) fn check_prefetch(prefetch: u16) -> Result<()> {
    if prefetch == 0 {
        return Err(Error::InvalidConfig {
            field: "prefetch",
            reason: "must be at least 1 (0 would let the broker push unlimited messages)"
                .to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(config: WorkerConfig) -> &'static str {
        match config.validate() {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_documented() {
        let config = WorkerConfig::default();
        config.validate().expect("defaults");
        let policy = config.policy().expect("policy");
        assert!(policy.retry_on_error);
        let secs: Vec<u64> = policy.delays.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 10, 60, 300]);
        assert_eq!(config.prefetch, 10);
        assert_eq!(config.queue_type, QueueType::Quorum);
    }

    #[test]
    fn each_bad_setting_is_named() {
        let d = WorkerConfig::default;
        assert_eq!(field_of(d().with_exchange("amq.topic")), "exchange");
        assert_eq!(field_of(d().with_exchange("")), "exchange");
        assert_eq!(field_of(d().with_prefetch(0)), "prefetch");
        assert_eq!(
            field_of(d().with_grace_period(Duration::ZERO)),
            "grace_period"
        );
        assert_eq!(
            field_of(d().with_channel_timeout(Duration::ZERO)),
            "channel_timeout"
        );
        assert_eq!(
            field_of(d().with_handler_timeout(Duration::ZERO)),
            "handler_timeout"
        );
        assert_eq!(
            field_of(d().with_ack_linger(Duration::from_millis(1_001))),
            "ack_linger"
        );
        d().with_ack_linger(Duration::ZERO)
            .validate()
            .expect("zero linger: acks at the end of each turn");
        d().with_ack_linger(Duration::from_secs(1))
            .validate()
            .expect("the longest linger");
        assert_eq!(
            field_of(d().with_reconnect_backoff(Duration::from_secs(2), Duration::from_secs(1))),
            "reconnect_backoff"
        );
        assert_eq!(
            field_of(d().with_retry_delays([Duration::ZERO])),
            "retry_delays"
        );
        assert!(matches!(
            d().with_retry_delays(["1 minute"]).validate(),
            Err(Error::InvalidDuration { .. })
        ));
    }

    #[test]
    fn mixed_delay_inputs_are_accepted() {
        let config = WorkerConfig::default().with_retry_delays([
            RetryDelay::from("100ms"),
            RetryDelay::from(Duration::from_millis(200)),
        ]);
        let policy = config.policy().expect("valid");
        assert_eq!(
            policy.delays,
            [Duration::from_millis(100), Duration::from_millis(200)]
        );
        let none = WorkerConfig::default().with_retry_delays(Vec::<RetryDelay>::new());
        assert!(none.policy().expect("empty is valid").delays.is_empty());
    }
}
