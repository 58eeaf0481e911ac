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
//! | `q` | durable, quorum (or classic) | `x-dead-letter-exchange = X.dlx`, `x-dead-letter-routing-key = dlq_q` | to `X` with each binding key |
//! | `X.dlx` | direct, durable | | |
//! | `dlq_q` | durable, same type as `q` | | to `X.dlx` with key `dlq_q` |
//! | `X.delay.<ms>ms` | fanout, durable, one per distinct delay | | |
//! | `X.delay.<ms>ms` | classic durable queue | `x-message-ttl = ms`, `x-dead-letter-exchange = ""` | to the exchange of the same name |
//!
//! A retry copy is published to the delay exchange with routing key `q`. When its TTL runs
//! out, the delay queue dead-letters it to the default exchange under that same key, which
//! routes it to `q` alone: other queues bound to the original key never see the retry.
//! The dead-letter arguments on `q` make messages that expire inside `q` (per-message
//! expiration set by the relay) land in `dlq_q` too.

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
    match set_up(&channel, &spec).await {
        Ok(consumer) => Ok((channel, consumer)),
        Err(e) => {
            close(channel).await;
            Err(e)
        }
    }
}

async fn set_up(channel: &Channel, spec: &ConsumerSpec) -> Result<Consumer> {
    channel
        .basic_qos(spec.prefetch, BasicQosOptions::default())
        .await?;
    declare_consumer_topology(channel, spec).await?;
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
    queue(channel, &spec.queue, main_args, check).await?;
    let mut delays = spec.policy.delays.clone();
    delays.sort();
    delays.dedup();
    for delay in delays {
        let name = delay_name(&spec.exchange, delay);
        exchange(channel, &name, ExchangeKind::Fanout, check).await?;
        queue(channel, &name, delay_args(delay), check).await?;
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

/// A delay queue: classic, TTL = the delay, dead-lettering to the default exchange with the
/// message's own routing key (no `x-dead-letter-routing-key`).
fn delay_args(delay: Duration) -> FieldTable {
    let ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    let mut args = queue_args(QueueType::Classic);
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms));
    args.insert("x-dead-letter-exchange".into(), long(""));
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
        let args = delay_args(Duration::from_millis(250));
        let map = args.inner();
        assert_eq!(map.get("x-message-ttl"), Some(&AMQPValue::LongLongInt(250)));
        assert_eq!(map.get("x-dead-letter-exchange"), Some(&long("")));
        assert!(!map.contains_key("x-dead-letter-routing-key"));
        assert_eq!(map.get("x-queue-type"), Some(&long("classic")));
    }

    #[test]
    fn queue_type_argument() {
        let args = queue_args(QueueType::Quorum);
        assert_eq!(args.inner().get("x-queue-type"), Some(&long("quorum")));
    }
}
