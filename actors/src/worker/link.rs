//! A consumer's channel and the broker objects behind it: [`open_link`] gets a channel from
//! the supervisor, puts it in confirm mode, sets the prefetch, declares (or, least privilege,
//! only checks) the queue's topology and starts consuming — every time the consumer needs a
//! channel, so a restarted broker gets its objects back.
//!
//! For queue `q` on exchange `X`:
//!
//! | object | kind | arguments | bound |
//! |---|---|---|---|
//! | `X` | topic, durable | as the relay declares it (`exchange::declare_exchange`) | |
//! | `q` | durable, quorum (or classic) | `x-dead-letter-exchange = X.dlx`, `x-dead-letter-routing-key = dlq_q`; quorum: `x-dead-letter-strategy = at-least-once`, `x-overflow = reject-publish` | to `X` with each binding key |
//! | `X.dlx` | direct, durable | | |
//! | `dlq_q` | durable, same type as `q` | | to `X.dlx` with key `dlq_q` |
//! | `X.retry.<ms>ms` | fanout, durable, one per distinct delay | | |
//! | `X.retry.<ms>ms` | durable, same type as `q` | `x-message-ttl = ms`, `x-dead-letter-exchange = ""`; quorum: at-least-once dead-lettering as on `q` | to the exchange of the same name |
//!
//! A retry copy is published to the delay exchange with routing key `q`. When its TTL runs
//! out, the delay queue dead-letters it to the default exchange under that same key, which
//! routes it to `q` alone: other queues bound to the original key never see the retry.
//! The dead-letter arguments on `q` make messages that expire inside `q` (per-message
//! expiration set by the relay) land in `dlq_q` too.
//!
//! **At-least-once hops.** With quorum queues (the default) both broker-side dead-letter
//! hops, delay queue → `q` and `q` → `dlq_q`, are at-least-once: the broker keeps the
//! message until its target queue confirmed it, where classic dead-lettering drops it if the
//! target is unavailable at that moment. A queue `q` declared by an earlier version (without
//! those two arguments) is kept as it is: RabbitMQ refuses to redeclare a queue with other
//! arguments, so the consumer declares it the old way and warns how to upgrade it in place
//! with a policy.

use std::time::Duration;

use actix::{Addr, Message, SpawnHandle};
use actix_outbox::{Error, Result};
use futures_util::{Stream, StreamExt, stream};
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::ShortString;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Consumer, ExchangeKind};
use tracing::warn;

use super::config::QueueType;
use super::listen::{ConsumerSpec, SharedSpec};
use crate::broker::{self, ConnectionSupervisor};
use crate::exchange::{
    TopologyMode, dead_letter_exchange, dead_letter_queue, declare_exchange, delay_name, long,
    refused,
};

/// Gets a channel (bounded by the channel timeout) and starts consuming `spec`'s queue on it.
///
/// # Errors
///
/// [`Error::Timeout`] when no channel came in time, [`Error::BrokerRefused`] naming a missing
/// or mismatched object, [`Error::Amqp`] for other broker failures. The channel is closed on
/// any error after it was opened.
pub(crate) async fn open_link(
    supervisor: Addr<ConnectionSupervisor>,
    spec: SharedSpec,
) -> Result<(Channel, Consumer)> {
    let channel = broker::channel(&supervisor, spec.channel_timeout).await?;
    let e = match set_up(&channel, &spec, false).await {
        Ok(consumer) => return Ok((channel, consumer)),
        Err(e) => e,
    };
    close(channel).await;
    if !declared_with_other_arguments(&e, &spec.queue) {
        return Err(e);
    }
    // The queue exists from an earlier version, without at-least-once dead-lettering: keep
    // it as it is (the broker closed the channel over the mismatch, so take a new one).
    warn!(
        queue = %spec.queue,
        "queue {q} was declared without at-least-once dead-lettering (by an earlier version); \
         using it as it is. Upgrade it in place with a policy: rabbitmqctl set_policy \
         outbox-at-least-once '^{q}$' '{{\"dead-letter-strategy\":\"at-least-once\",\"overflow\":\"reject-publish\"}}' \
         --apply-to quorum_queues",
        q = spec.queue
    );
    let channel = broker::channel(&supervisor, spec.channel_timeout).await?;
    match set_up(&channel, &spec, true).await {
        Ok(consumer) => Ok((channel, consumer)),
        Err(e) => {
            close(channel).await;
            Err(e)
        }
    }
}

/// Whether `e` is RabbitMQ refusing to redeclare `queue` with other arguments.
fn declared_with_other_arguments(e: &Error, queue: &str) -> bool {
    matches!(e, Error::BrokerRefused { object: "queue", name, reason }
        if name == queue && reason.contains("PRECONDITION_FAILED"))
}

async fn set_up(channel: &Channel, spec: &ConsumerSpec, legacy_queue: bool) -> Result<Consumer> {
    channel
        .basic_qos(spec.prefetch, BasicQosOptions::default())
        .await?;
    declare_consumer_topology(channel, spec, legacy_queue).await?;
    let consumer = channel
        .basic_consume(
            spec.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(consumer)
}

/// One item of the consumer stream of channel `generation`.
#[allow(clippy::large_enum_variant)] // almost every item is a delivery: boxing it buys nothing
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) enum Incoming {
    /// A message to handle.
    Delivery(u64, Delivery),
    /// The stream failed (the channel or connection is gone).
    Failed(u64, String),
    /// The stream ended (the broker cancelled the consumer, or the channel closed).
    Ended(u64),
}

/// The consumer's deliveries as [`Incoming`] items of channel `generation`, ending with
/// [`Incoming::Ended`].
pub(crate) fn incoming(consumer: Consumer, generation: u64) -> impl Stream<Item = Incoming> {
    consumer
        .map(move |item| match item {
            Ok(delivery) => Incoming::Delivery(generation, delivery),
            Err(e) => Incoming::Failed(generation, e.to_string()),
        })
        .chain(stream::once(async move { Incoming::Ended(generation) }))
}

/// The live channel and its consumer.
pub(crate) struct Link {
    /// The consumer's channel (confirm mode).
    pub(crate) channel: Channel,
    /// One copy at a time on this channel (see [`CopyTurn`]).
    pub(crate) copy_turn: CopyTurn,
    /// The consumer tag, for the cancel.
    pub(crate) tag: ShortString,
    /// The stream added to the actor's context.
    pub(crate) stream: SpawnHandle,
}

/// Held while a retry or dead-letter copy is published and confirmed on a consumer's
/// channel: one copy at a time, so a returned copy is never mistaken for another.
pub(crate) type CopyTurn = std::sync::Arc<tokio::sync::Mutex<()>>;

/// Cancels consumer `tag` (bounded by 5 s): the broker sends no new deliveries.
pub(crate) async fn cancel(channel: Channel, tag: lapin::types::ShortString) {
    let cancelling = channel.basic_cancel(tag, BasicCancelOptions::default());
    let _ = tokio::time::timeout(Duration::from_secs(5), cancelling).await;
}

/// Closes a channel, bounded by 5 s (unacked deliveries on it go back to their queues).
pub(crate) async fn close(channel: Channel) {
    if channel.status().connected() {
        let closing = channel.close(200, "consumer closing its channel".into());
        let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
    }
}

/// Declares (or checks, in check-only mode) everything `spec`'s queue needs.
///
/// # Errors
///
/// [`Error::BrokerRefused`] naming the first object that is missing (check-only mode) or
/// exists with other arguments. The channel is closed by the broker after such an error.
pub(crate) async fn declare_consumer_topology(
    channel: &Channel,
    spec: &ConsumerSpec,
    legacy_queue: bool,
) -> Result<()> {
    declare_exchange(channel, &spec.exchange, spec.unroutable, spec.topology).await?;
    let check = spec.topology == TopologyMode::CheckOnly;
    let dlx = dead_letter_exchange(&spec.exchange);
    let dlq = dead_letter_queue(&spec.queue);
    exchange(channel, &dlx, ExchangeKind::Direct, check).await?;
    queue(channel, &dlq, queue_args(spec.queue_type), check).await?;
    let mut main_args = queue_args(spec.queue_type);
    main_args.insert("x-dead-letter-exchange".into(), long(&dlx));
    main_args.insert("x-dead-letter-routing-key".into(), long(&dlq));
    if !legacy_queue {
        at_least_once(&mut main_args, spec.queue_type);
    }
    queue(channel, &spec.queue, main_args, check).await?;
    let mut delays = spec.policy.delays.clone();
    delays.sort();
    delays.dedup();
    for delay in delays {
        let name = delay_name(&spec.exchange, delay);
        exchange(channel, &name, ExchangeKind::Fanout, check).await?;
        queue(channel, &name, delay_args(delay, spec.queue_type), check).await?;
        if !check {
            bind(channel, &name, &name, "").await?;
        }
    }
    if !check {
        bind(channel, &dlq, &dlx, &dlq).await?;
        for key in &spec.keys {
            bind(channel, &spec.queue, &spec.exchange, key.as_str()).await?;
        }
    }
    Ok(())
}

/// `x-queue-type` for handler and dead-letter queues.
fn queue_args(queue_type: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long(queue_type.as_str()));
    args
}

/// At-least-once dead-lettering (quorum queues only; RabbitMQ requires `reject-publish`
/// overflow for it).
fn at_least_once(args: &mut FieldTable, queue_type: QueueType) {
    if queue_type == QueueType::Quorum {
        args.insert("x-dead-letter-strategy".into(), long("at-least-once"));
        args.insert("x-overflow".into(), long("reject-publish"));
    }
}

/// A delay queue: TTL = the delay, dead-lettering to the default exchange with the
/// message's own routing key (no `x-dead-letter-routing-key`), at least once on quorum.
fn delay_args(delay: Duration, queue_type: QueueType) -> FieldTable {
    let ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    let mut args = queue_args(queue_type);
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms));
    args.insert("x-dead-letter-exchange".into(), long(""));
    at_least_once(&mut args, queue_type);
    args
}

async fn exchange(channel: &Channel, name: &str, kind: ExchangeKind, check: bool) -> Result<()> {
    let options = ExchangeDeclareOptions {
        passive: check,
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(name.into(), kind, options, FieldTable::default())
        .await
        .map_err(|e| declare_refused("exchange", name, check, &e))
}

async fn queue(channel: &Channel, name: &str, args: FieldTable, check: bool) -> Result<()> {
    let options = QueueDeclareOptions {
        passive: check,
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let args = if check { FieldTable::default() } else { args };
    channel
        .queue_declare(name.into(), options, args)
        .await
        .map(drop)
        .map_err(|e| declare_refused("queue", name, check, &e))
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> Result<()> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            refused(
                "binding",
                &format!("{queue} <- {exchange}"),
                format!("cannot bind with key {key:?}: {e}"),
            )
        })
}

/// A declaration the broker refused, with what to do about it.
fn declare_refused(object: &'static str, name: &str, check: bool, e: &lapin::Error) -> Error {
    let reason = if check {
        format!("missing or not accessible (check-only mode: create it first): {e}")
    } else {
        format!("cannot declare it (does it exist with other arguments?): {e}")
    };
    refused(object, name, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_queues_dead_letter_to_the_default_exchange_without_a_key() {
        let args = delay_args(Duration::from_millis(250), QueueType::Classic);
        let map = args.inner();
        assert_eq!(map.get("x-message-ttl"), Some(&AMQPValue::LongLongInt(250)));
        assert_eq!(map.get("x-dead-letter-exchange"), Some(&long("")));
        assert!(!map.contains_key("x-dead-letter-routing-key"));
        assert_eq!(map.get("x-queue-type"), Some(&long("classic")));
    }

    #[test]
    fn quorum_delay_queues_dead_letter_at_least_once() {
        let args = delay_args(Duration::from_millis(250), QueueType::Quorum);
        let map = args.inner();
        assert_eq!(map.get("x-queue-type"), Some(&long("quorum")));
        assert_eq!(
            map.get("x-dead-letter-strategy"),
            Some(&long("at-least-once"))
        );
        assert_eq!(map.get("x-overflow"), Some(&long("reject-publish")));
        let classic = delay_args(Duration::from_millis(250), QueueType::Classic);
        assert!(
            !classic.inner().contains_key("x-dead-letter-strategy"),
            "quorum only"
        );
    }

    #[test]
    fn queue_type_argument() {
        let args = queue_args(QueueType::Quorum);
        assert_eq!(args.inner().get("x-queue-type"), Some(&long("quorum")));
    }
}
