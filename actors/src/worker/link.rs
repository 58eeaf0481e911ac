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
//! | `dlq_q` | durable, same type as `q` | quorum: `x-delivery-limit` = [`DLQ_DELIVERY_LIMIT`] | to `X.dlx` with key `dlq_q` |
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
//! with a policy. The same holds for a dead-letter queue declared without its delivery limit.
//!
//! The objects themselves are described once, in [`Topology`]: what is declared here is
//! what `actix-outbox topology export` prints.

use std::time::Duration;

use actix::{Addr, Message, SpawnHandle};
use actix_outbox::{Error, Result};
use futures_util::{Stream, StreamExt, stream};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Consumer};
use tracing::warn;

use super::listen::{ConsumerSpec, SharedSpec};
use crate::broker::{self, ConnectionSupervisor};
use crate::exchange::{
    DLQ_DELIVERY_LIMIT, QueueLayout, Topology, dead_letter_queue, declare_exchange,
    note_legacy_store,
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
    let mut legacy = Legacy::default();
    loop {
        let channel = broker::channel(&supervisor, spec.channel_timeout).await?;
        let e = match set_up(&channel, &spec, legacy).await {
            Ok(consumer) => return Ok((channel, consumer)),
            Err(e) => e,
        };
        close(channel).await;
        // A queue that exists from an earlier version, with other arguments: keep it as it
        // is (the broker closed the channel over the mismatch, so take a new one).
        let dlq = dead_letter_queue(&spec.queue);
        if !legacy.queue && declared_with_other_arguments(&e, &spec.queue) {
            legacy.queue = true;
            warn!(
                queue = %spec.queue,
                "queue {q} was declared without at-least-once dead-lettering (by an earlier version); \
                 using it as it is. Upgrade it in place with a policy: rabbitmqctl set_policy \
                 outbox-at-least-once '^{q}$' '{{\"dead-letter-strategy\":\"at-least-once\",\"overflow\":\"reject-publish\"}}' \
                 --apply-to quorum_queues",
                q = spec.queue
            );
        } else if !legacy.dlq && declared_with_other_arguments(&e, &dlq) {
            legacy.dlq = true;
            warn!(
                queue = %spec.queue,
                "dead-letter queue {dlq} was declared without a delivery limit (by an earlier \
                 version); using it as it is. On RabbitMQ 4 its default limit of 20 deliveries \
                 can drop dead letters that are listed often; lift it with a policy: \
                 rabbitmqctl set_policy outbox-dlq-limit '^dlq_' '{{\"delivery-limit\":{DLQ_DELIVERY_LIMIT}}}' \
                 --apply-to quorum_queues"
            );
        } else if !legacy.store && note_legacy_store(&e, &spec.exchange) {
            legacy.store = true;
        } else {
            return Err(e);
        }
    }
}

/// Which of a consumer's queues exist from an earlier version, with other arguments.
#[derive(Debug, Clone, Copy, Default)]
struct Legacy {
    /// The handler queue lacks at-least-once dead-lettering.
    queue: bool,
    /// The dead-letter queue lacks its delivery limit.
    dlq: bool,
    /// The exchange's unroutable store is a classic queue.
    store: bool,
}

/// Whether `e` is RabbitMQ refusing to redeclare `queue` with other arguments.
fn declared_with_other_arguments(e: &Error, queue: &str) -> bool {
    matches!(e, Error::BrokerRefused { object: "queue", name, reason }
        if name == queue && reason.contains("PRECONDITION_FAILED"))
}

async fn set_up(channel: &Channel, spec: &ConsumerSpec, legacy: Legacy) -> Result<Consumer> {
    channel
        .basic_qos(spec.prefetch, BasicQosOptions::default())
        .await?;
    declare_consumer_topology(channel, spec, legacy).await?;
    let consumer = channel
        .basic_consume(
            spec.consume.as_str().into(),
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
async fn declare_consumer_topology(
    channel: &Channel,
    spec: &ConsumerSpec,
    legacy: Legacy,
) -> Result<()> {
    declare_exchange(channel, &spec.exchange, spec.unroutable, spec.topology).await?;
    let mut topology = Topology::default();
    topology.add_queue(&layout(spec, legacy));
    topology.apply(channel, spec.topology).await
}

/// The objects of `spec`'s queue (its exchange aside), as [`Topology::add_queue`] takes them.
fn layout(spec: &ConsumerSpec, legacy: Legacy) -> QueueLayout<'_> {
    QueueLayout {
        exchange: &spec.exchange,
        queue: &spec.queue,
        keys: &spec.keys,
        queue_type: spec.queue_type.as_str(),
        delays: &spec.policy.delays,
        legacy_queue: legacy.queue,
        legacy_dlq: legacy.dlq,
        partitions: spec.partitions,
    }
}

/// Everything `specs` need, the exchange included, as a fresh declaration would make it.
pub(crate) fn topology_of<'a>(specs: impl IntoIterator<Item = &'a ConsumerSpec>) -> Topology {
    let mut topology = Topology::default();
    for spec in specs {
        topology.merge(Topology::for_exchange_with(
            &spec.exchange,
            spec.unroutable,
            false,
        ));
        topology.add_queue(&layout(spec, Legacy::default()));
    }
    topology
}
