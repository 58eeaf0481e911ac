//! `Listen`: which events one handler gets (binding keys), through which queue, with which
//! retry rules; and `ConsumerSpec`, the checked result a consumer actor runs on.

use std::sync::Arc;
use std::time::Duration;

use actix_outbox::{BindingKey, Error, Result};

use super::config::{QueueType, WorkerConfig, check_prefetch};
use super::retry::{RetryDelay, RetryPolicy, resolve_delays};
use crate::backoff::Backoff;
use crate::exchange::{MAX_NAME_LEN, TopologyMode, Unroutable, check_queue_name};

/// One registration of a handler with a [`Worker`](crate::Worker): its binding keys, and
/// optionally its queue name, prefetch and retry rules (otherwise the worker's).
///
/// Binding keys are checked here; everything else when the handler is registered with
/// [`Worker::listen`](crate::Worker::listen).
///
/// # Examples
///
/// ```
/// use actix_outbox_actors::Listen;
///
/// let listen = Listen::new(["user.created", "user.deleted"])?
///     .with_queue("welcome_mailer")
///     .with_prefetch(20)
///     .with_retry_delays(["500ms", "5s"]);
/// # let _ = listen;
/// assert!(Listen::new(["user.cre*"]).is_err());
/// # Ok::<(), actix_outbox::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Listen {
    /// The topic patterns the queue is bound with.
    keys: Vec<BindingKey>,
    /// Explicit queue name; derived from the handler's type when `None`.
    queue: Option<String>,
    /// Per-queue prefetch, else the worker's.
    prefetch: Option<u16>,
    /// Per-queue `retry_on_error`, else the worker's.
    retry_on_error: Option<bool>,
    /// Per-queue delays, else the worker's.
    retry_delays: Option<Vec<RetryDelay>>,
    /// Per-queue handler timeout, else the worker's.
    handler_timeout: Option<Duration>,
    /// Ordered listener: the number of partition queues.
    partitions: Option<u16>,
}

impl Listen {
    /// Listens for events whose routing key matches any of `keys` (`user.created`,
    /// `user.*`, `order.#`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBindingKey`] for a malformed key, [`Error::InvalidConfig`]
    /// (`binding_keys`) when `keys` is empty.
    pub fn new<I>(keys: I) -> Result<Self>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let keys = keys
            .into_iter()
            .map(BindingKey::new)
            .collect::<Result<Vec<_>>>()?;
        if keys.is_empty() {
            return Err(Error::InvalidConfig {
                field: "binding_keys",
                reason: "a listener needs at least one binding key, such as `user.*`".to_owned(),
            });
        }
        Ok(Self {
            keys,
            queue: None,
            prefetch: None,
            retry_on_error: None,
            retry_delays: None,
            handler_timeout: None,
            partitions: None,
        })
    }

    /// Sets the queue name. Defaults to the handler actor's type name in snake case
    /// (`WelcomeMailer` → `welcome_mailer`).
    #[must_use]
    pub fn with_queue(mut self, name: impl Into<String>) -> Self {
        self.queue = Some(name.into());
        self
    }

    /// Sets this queue's prefetch. Defaults to the worker's.
    #[must_use]
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    /// Sets whether this handler's plain errors are retried. Defaults to the worker's.
    #[must_use]
    pub fn with_retry_on_error(mut self, retry: bool) -> Self {
        self.retry_on_error = Some(retry);
        self
    }

    /// Sets this handler's retry delays (durations or text such as `"500ms"`). Defaults to
    /// the worker's.
    #[must_use]
    pub fn with_retry_delays<I>(mut self, delays: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<RetryDelay>,
    {
        self.retry_delays = Some(delays.into_iter().map(Into::into).collect());
        self
    }

    /// Sets how long this handler may take to answer (see
    /// [`WorkerConfig::with_handler_timeout`](crate::WorkerConfig::with_handler_timeout)).
    /// Defaults to the worker's.
    #[must_use]
    pub fn with_handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = Some(timeout);
        self
    }

    /// Hands the events of one ordering key
    /// ([`OutboxEvent::with_ordering_key`](actix_outbox::OutboxEvent::with_ordering_key)) to the
    /// handler one at a time, in emit order, while events of different keys are handled in
    /// parallel across `partitions` queues.
    ///
    /// The queue becomes `partitions` quorum queues `<queue>.p0` … behind a consistent-hash
    /// exchange `<exchange>.ordered.<queue>` that the topic exchange feeds with the binding
    /// keys and that hashes the `x-outbox-ordering-key` header, so one key always lands in
    /// the same partition. Each partition has `x-single-active-consumer`: however many
    /// worker processes run this listener, one consumer at a time gets a partition's
    /// messages, and another takes over when it goes. Within a partition the handler gets one
    /// event at a time, the next only once the one before is settled.
    ///
    /// **Prefetch.** By default a partition's consumer holds one unacked message (prefetch 1,
    /// whatever the worker's prefetch): after a crash, only the event in hand is delivered
    /// again. [`with_prefetch`](Self::with_prefetch) on this listener lets the broker send
    /// more ahead, which is several times faster (the next message is already there when the
    /// handler is done); events still reach the handler one at a time and in order, but a
    /// crash then redelivers every handled event whose ack had not reached the broker, so the
    /// handler can see a run of events again (an older event after a newer one) — harmless
    /// with an [`Inbox`](actix_outbox::Inbox), which skips them.
    ///
    /// **Retries hold the partition.** A failed event is retried in place, after the same
    /// delays as elsewhere, without being acked, so no later event of its key can pass it —
    /// nor any other event of its partition: a partition stalls for as long as one of its
    /// events is retried. More partitions spread that cost. An event that runs out of retries
    /// is dead-lettered to `dlq_<queue>` (one for all partitions), and the next event of its
    /// key then goes on: replaying it later delivers it out of order.
    ///
    /// Needs RabbitMQ's `rabbitmq_consistent_hash_exchange` plugin (shipped with RabbitMQ,
    /// `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange`) and quorum queues.
    /// Events without an ordering key all hash alike and share one partition: give every
    /// event an ordered listener takes a key. The number of partitions is part of the
    /// topology: changing it moves keys between partitions, so drain the queues first.
    ///
    /// `partitions` must be 1 to 64; checked when the handler is registered.
    #[must_use]
    pub fn ordered(mut self, partitions: u16) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// The binding keys.
    #[must_use]
    pub fn keys(&self) -> &[BindingKey] {
        &self.keys
    }

    /// Whether the queue was named (`with_queue`) rather than left to the handler's type.
    pub(crate) fn has_queue(&self) -> bool {
        self.queue.is_some()
    }

    /// Merges this listener with the worker's settings into what a consumer runs on.
    pub(crate) fn resolve(&self, config: &WorkerConfig, type_name: &str) -> Result<ConsumerSpec> {
        let queue = match &self.queue {
            Some(name) => name.clone(),
            None => queue_name_for(type_name),
        };
        check_queue_name(&queue)?;
        let mut prefetch = self.prefetch.unwrap_or(config.prefetch);
        check_prefetch(prefetch)?;
        let partitions = self.partitions.unwrap_or(0);
        if let Some(n) = self.partitions {
            check_partitions(n, config, &queue)?;
            // One message of a partition in hand at a time, unless asked for more.
            prefetch = self.prefetch.unwrap_or(1);
        }
        if let Some(timeout) = self.handler_timeout {
            actix_outbox::__private::require_positive("handler_timeout", timeout)?;
        }
        let delays = match &self.retry_delays {
            Some(delays) => resolve_delays(delays)?,
            None => config.policy()?.delays,
        };
        Ok(ConsumerSpec {
            handler: short_type_name(type_name).to_owned(),
            keys: self.keys.clone(),
            exchange: config.exchange.clone(),
            prefetch,
            queue_type: config.queue_type,
            topology: config.topology,
            unroutable: config.unroutable,
            policy: RetryPolicy {
                retry_on_error: self.retry_on_error.unwrap_or(config.retry_on_error),
                delays,
            },
            grace_period: config.grace_period,
            channel_timeout: config.channel_timeout,
            confirm_timeout: config.confirm_timeout,
            handler_timeout: self.handler_timeout.unwrap_or(config.handler_timeout),
            ack_linger: config.ack_linger,
            max_redeliveries: config.max_redeliveries,
            reconnect: config.reconnect,
            consume: queue.clone(),
            partitions,
            queue,
        })
    }
}

/// Everything one consumer actor needs, checked: a [`Listen`] merged with the worker's
/// config.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerSpec {
    /// The listener's queue: its dead-letter queue's name, the handler header, the inbox key,
    /// and (unordered) the retry copies' routing key.
    pub(crate) queue: String,
    /// The queue this consumer takes deliveries from: `queue`, or one partition of it.
    pub(crate) consume: String,
    /// Ordered listener: its number of partitions (0: unordered).
    pub(crate) partitions: u16,
    /// The handler actor's type, for logs and the `x-outbox-handler` header.
    pub(crate) handler: String,
    /// The topic patterns the queue is bound with.
    pub(crate) keys: Vec<BindingKey>,
    /// The topic exchange.
    pub(crate) exchange: String,
    /// Unacked deliveries at once.
    pub(crate) prefetch: u16,
    /// Queue type of the queue and its dead-letter queue.
    pub(crate) queue_type: QueueType,
    /// Declare or check.
    pub(crate) topology: TopologyMode,
    /// The exchange's unroutable handling (declaration arguments).
    pub(crate) unroutable: Unroutable,
    /// Retry rules.
    pub(crate) policy: RetryPolicy,
    /// Stop: longest wait for handlers in flight.
    pub(crate) grace_period: Duration,
    /// Longest wait for a channel.
    pub(crate) channel_timeout: Duration,
    /// Longest wait for a copy's confirm.
    pub(crate) confirm_timeout: Duration,
    /// Longest wait for the handler's answer.
    pub(crate) handler_timeout: Duration,
    /// Longest wait of an owed ack.
    pub(crate) ack_linger: Duration,
    /// Unsettled deliveries after which a message is dead-lettered.
    pub(crate) max_redeliveries: u32,
    /// Pause between attempts to consume again.
    pub(crate) reconnect: Backoff,
}

/// Checks an ordered listener's settings: 1 to 64 partitions, quorum queues, and names that
/// fit in AMQP's 255 bytes.
fn check_partitions(n: u16, config: &WorkerConfig, queue: &str) -> Result<()> {
    let bad = |reason: String| Error::InvalidConfig {
        field: "partitions",
        reason,
    };
    if !(1..=64).contains(&n) {
        return Err(bad(format!(
            "an ordered listener needs 1 to 64 partitions, not {n}"
        )));
    }
    if config.queue_type != QueueType::Quorum {
        return Err(bad(
            "ordered listeners need quorum queues (a classic queue's redelivery bookkeeping \
             publishes messages back to its tail, out of order)"
                .to_owned(),
        ));
    }
    let exchange = crate::exchange::partition_exchange(&config.exchange, queue);
    if exchange.len() > 255 {
        return Err(bad(format!(
            "the partition exchange name {exchange:?} would be longer than 255 bytes: use a shorter queue or exchange name"
        )));
    }
    Ok(())
}

/// Shared, read-only spec.
pub(crate) type SharedSpec = Arc<ConsumerSpec>;

/// The queue name derived from a Rust type name: its last path segment without generics, in
/// snake case, limited to `[a-z0-9_.-]`.
pub(crate) fn queue_name_for(type_name: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in short_type_name(type_name).chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
            prev_lower = true;
        } else {
            if !out.ends_with('_') && !out.is_empty() {
                out.push('_');
            }
            prev_lower = false;
        }
    }
    let trimmed = out.trim_matches('_');
    if trimmed.is_empty() {
        "handler".to_owned()
    } else {
        trimmed.chars().take(MAX_NAME_LEN).collect()
    }
}

/// `my_app::mail::WelcomeMailer<Foo>` → `WelcomeMailer`.
fn short_type_name(type_name: &str) -> &str {
    let base = type_name.split('<').next().unwrap_or(type_name);
    base.rsplit("::").next().unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_derive_from_type_names() {
        let cases = [
            ("my_app::mail::WelcomeMailer", "welcome_mailer"),
            ("AuditLog", "audit_log"),
            ("crate::HTTPSender", "httpsender"),
            ("x::Handler2Go<alloc::string::String>", "handler2_go"),
            ("x::V2Mailer", "v2_mailer"),
            ("::", "handler"),
        ];
        for (type_name, want) in cases {
            assert_eq!(queue_name_for(type_name), want, "{type_name}");
            check_queue_name(&queue_name_for(type_name)).expect("derived names are valid");
        }
    }

    #[test]
    fn bad_queue_names_are_refused() {
        for bad in ["", "amq.gen-1", "a b", "émoji", &"q".repeat(201)] {
            assert!(
                matches!(
                    check_queue_name(bad),
                    Err(Error::InvalidConfig { field: "queue", .. })
                ),
                "{bad:?}"
            );
        }
        check_queue_name("orders.v2:eu-west_1").expect("valid");
    }

    #[test]
    fn binding_keys_are_checked_at_once() {
        assert!(matches!(
            Listen::new(["user..created"]),
            Err(Error::InvalidBindingKey { .. })
        ));
        assert!(matches!(
            Listen::new(Vec::<String>::new()),
            Err(Error::InvalidConfig {
                field: "binding_keys",
                ..
            })
        ));
    }

    #[test]
    fn ordered_listeners_are_checked() {
        let config = WorkerConfig::default().with_prefetch(50);
        let spec = Listen::new(["order.*"])
            .expect("keys")
            .ordered(4)
            .resolve(&config, "app::Shipping")
            .expect("valid");
        assert_eq!(
            (spec.partitions, spec.prefetch),
            (4, 1),
            "not the worker's 50"
        );
        let ahead = Listen::new(["order.*"])
            .expect("keys")
            .ordered(4)
            .with_prefetch(100)
            .resolve(&config, "app::Shipping")
            .expect("valid");
        assert_eq!(ahead.prefetch, 100, "asked for on the listener");
        for n in [0, 65] {
            let err = Listen::new(["x"])
                .expect("keys")
                .ordered(n)
                .resolve(&config, "A")
                .expect_err("out of range");
            assert!(
                matches!(
                    err,
                    Error::InvalidConfig {
                        field: "partitions",
                        ..
                    }
                ),
                "{err}"
            );
        }
        let classic = WorkerConfig::default().with_queue_type(QueueType::Classic);
        let err = Listen::new(["x"])
            .expect("keys")
            .ordered(2)
            .resolve(&classic, "A")
            .expect_err("classic");
        assert!(err.to_string().contains("quorum"), "{err}");
    }

    #[test]
    fn listen_overrides_the_worker_defaults() {
        let config = WorkerConfig::default().with_prefetch(5);
        let listen = Listen::new(["order.#"])
            .expect("keys")
            .with_retry_on_error(false)
            .with_retry_delays(["100ms"]);
        let spec = listen.resolve(&config, "app::OrderAudit").expect("valid");
        assert_eq!(spec.queue, "order_audit");
        assert_eq!(spec.handler, "OrderAudit");
        assert_eq!(spec.prefetch, 5);
        assert!(!spec.policy.retry_on_error);
        assert_eq!(spec.policy.delays, [Duration::from_millis(100)]);

        let plain = Listen::new(["order.#"]).expect("keys").with_queue("audit");
        let spec = plain.resolve(&config, "app::OrderAudit").expect("valid");
        assert_eq!(spec.queue, "audit");
        assert_eq!(spec.policy.delays.len(), 4, "worker defaults");

        let zero = Listen::new(["x"]).expect("keys").with_prefetch(0);
        assert!(zero.resolve(&config, "A").is_err());
        let bad_delay = Listen::new(["x"]).expect("keys").with_retry_delays(["0s"]);
        assert!(bad_delay.resolve(&config, "A").is_err());
    }
}
