//! What an operator asks of a running outbox, as library calls: the `actix-outbox` command
//! (feature `cli`) is built on them, and an application can call them from an admin endpoint.
//!
//! Parked rows are handled by the emit side's [`Outbox::parked`](actix_outbox::Outbox::parked),
//! [`Outbox::retry_parked`](actix_outbox::Outbox::retry_parked) and
//! [`Outbox::discard_parked`](actix_outbox::Outbox::discard_parked); this module adds what
//! needs the relay's SQL or the broker.

use std::time::Duration;

use actix::Addr;
use actix_outbox::{Error, Result, TableName, headers as h};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use sea_orm::{DatabaseConnection, DbBackend};
use serde::Serialize;

use crate::broker::{self, ConnectionSupervisor};
use crate::exchange::{dead_letter_queue, unroutable_name};
use crate::relay::{RelaySql, gauges};
use crate::worker::{DeliveryMeta, copy_properties};

/// What the outbox table holds now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TableStatus {
    /// The table.
    pub table: String,
    /// Rows due now, not sent and not parked.
    pub due: u64,
    /// How long the oldest of them has waited, in seconds (0 when none).
    pub oldest_due_age_seconds: f64,
    /// Parked rows (they wait for an operator).
    pub parked: u64,
    /// Sent rows kept for their retention (keep mode).
    pub kept: u64,
}

/// Reads the table's counts: four counts on its partial indexes.
///
/// # Errors
///
/// [`Error::UnsupportedBackend`] for databases other than PostgreSQL and SQLite,
/// [`Error::Db`] when a query fails (a missing table among them: run `setup`).
pub async fn table_status(db: &DatabaseConnection, table: &TableName) -> Result<TableStatus> {
    let backend = db.get_database_backend();
    if !matches!(backend, DbBackend::Postgres | DbBackend::Sqlite) {
        return Err(Error::UnsupportedBackend(format!("{backend:?}")));
    }
    let g = gauges(db, &RelaySql::new(backend, table.clone())).await?;
    Ok(TableStatus {
        table: table.to_string(),
        due: g.due,
        oldest_due_age_seconds: g.oldest_due_age.as_secs_f64(),
        parked: g.parked,
        kept: g.kept,
    })
}

/// One handler queue on the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct QueueStatus {
    /// The queue.
    pub queue: String,
    /// Messages ready in it.
    pub ready: u32,
    /// Consumers on it.
    pub consumers: u32,
    /// Messages in `dlq_<queue>` (`None` when that queue does not exist).
    pub dead_letters: Option<u32>,
}

/// Counts of `queue` and its dead-letter queue, each asked on a throwaway channel.
///
/// # Errors
///
/// [`Error::Amqp`] when the queue does not exist (the broker answers 404), [`Error::Timeout`]
/// when no channel came within `wait`.
pub async fn queue_status(
    broker: &Addr<ConnectionSupervisor>,
    queue: &str,
    wait: Duration,
) -> Result<QueueStatus> {
    let (ready, consumers) = broker::queue_counts(broker, wait, queue).await?;
    let dead_letters = broker::queue_counts(broker, wait, &dead_letter_queue(queue))
        .await
        .ok()
        .map(|(n, _)| n);
    Ok(QueueStatus {
        queue: queue.to_owned(),
        ready,
        consumers,
        dead_letters,
    })
}

/// Messages waiting in `<exchange>.unroutable` (`None` when that queue does not exist: the
/// relay then runs without an alternate exchange).
///
/// # Errors
///
/// [`Error::Timeout`] when no channel came within `wait` (the broker is unreachable).
pub async fn unroutable_waiting(
    broker: &Addr<ConnectionSupervisor>,
    exchange: &str,
    wait: Duration,
) -> Result<Option<u32>> {
    match broker::queue_counts(broker, wait, &unroutable_name(exchange)).await {
        Ok((n, _)) => Ok(Some(n)),
        Err(Error::Amqp(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One dead letter, as an operator sees it (the payload is left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The message id (stable across retries and replays).
    pub message_id: String,
    /// The routing key it was emitted with.
    pub routing_key: String,
    /// The attempt that was dead-lettered.
    pub attempt: u32,
    /// Why (`x-outbox-reason`).
    pub reason: Option<String>,
    /// Which queue's handler dead-lettered it (`x-outbox-handler`).
    pub handler: Option<String>,
    /// The payload's size in bytes.
    pub payload_bytes: usize,
}

/// What [`dlq_replay`] moves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayOptions {
    /// At most this many messages (`None`: all that were there when the replay began).
    pub limit: Option<u64>,
    /// Only the message with this id.
    pub message_id: Option<String>,
    /// Drop the copies' deadline (`x-outbox-deadline`), so expired events are handled
    /// instead of dead-lettered again as expired.
    pub reset_deadline: bool,
}

impl ReplayOptions {
    /// Every message, deadlines kept.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `limit` messages.
    #[must_use]
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Only the message with this id.
    #[must_use]
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Drop the copies' deadline.
    #[must_use]
    pub fn with_reset_deadline(mut self, reset: bool) -> Self {
        self.reset_deadline = reset;
        self
    }
}

/// Up to `limit` dead letters of `queue`, oldest first. They are fetched unacknowledged and
/// given back afterwards (the broker marks them redelivered; nothing else changes).
///
/// **Caveat (quorum queues on RabbitMQ 4):** a message given back counts as a delivery, and
/// RabbitMQ 4 gives quorum queues a default delivery limit of 20, past which a message is
/// dropped (dead-letter queues have no dead-letter exchange of their own). List sparingly
/// there, or lift the limit for the dead-letter queues with a policy
/// (`rabbitmqctl set_policy dlq-no-limit '^dlq_' '{"delivery-limit":-1}' --apply-to quorum_queues`).
/// RabbitMQ 3.x sets no such limit.
///
/// # Errors
///
/// [`Error::Amqp`] when `dlq_<queue>` does not exist, [`Error::Timeout`] when no channel came
/// within `wait`.
pub async fn dlq_list(
    broker: &Addr<ConnectionSupervisor>,
    queue: &str,
    limit: u32,
    wait: Duration,
) -> Result<Vec<DeadLetter>> {
    let channel = broker::channel(broker, wait).await?;
    let dlq = dead_letter_queue(queue);
    let mut held = Vec::new();
    let mut letters = Vec::new();
    let listed = async {
        while letters.len() < limit as usize {
            let Some(delivery) = fetch(&channel, &dlq).await? else {
                break;
            };
            letters.push(describe(&delivery));
            held.push(delivery);
        }
        Ok::<(), Error>(())
    }
    .await;
    give_back(held).await;
    close(channel).await;
    listed.map(|()| letters)
}

/// Moves dead letters of `queue` back to it with a fresh attempt count (and, with
/// `reset_deadline`, no deadline): each copy is published to the queue and **confirmed
/// before** its dead letter is acked, so an interrupted replay loses nothing (at worst one
/// message is in both queues: at least once). Messages skipped by `message_id` are given back
/// untouched. Returns how many were replayed.
///
/// # Errors
///
/// [`Error::Amqp`] when a queue does not exist, [`Error::BrokerRefused`] when a copy is
/// returned or nacked (its dead letter is then kept), [`Error::Timeout`] when no channel
/// came within `wait`.
pub async fn dlq_replay(
    broker: &Addr<ConnectionSupervisor>,
    queue: &str,
    options: &ReplayOptions,
    wait: Duration,
) -> Result<u64> {
    let channel = broker::channel(broker, wait).await?;
    let dlq = dead_letter_queue(queue);
    // Each message is fetched once: no more than were there at the start.
    let (waiting, _) = crate::exchange::queue_counts(&channel, &dlq).await?;
    let limit = options.limit.unwrap_or(u64::MAX);
    let mut skipped = Vec::new();
    let mut replayed = 0;
    let moved = async {
        for _ in 0..waiting {
            if replayed >= limit {
                break;
            }
            let Some(delivery) = fetch(&channel, &dlq).await? else {
                break;
            };
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string());
            if options.message_id.is_some() && options.message_id != id {
                skipped.push(delivery);
                continue;
            }
            let props = replay_properties(&delivery, options.reset_deadline);
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &delivery.data,
                    props,
                )
                .await?
                .await?;
            if !confirm.is_ack() || confirm.take_message().is_some() {
                give_back(vec![delivery]).await;
                return Err(Error::BrokerRefused {
                    object: "queue",
                    name: queue.to_owned(),
                    reason: "the replayed copy was returned or nacked; its dead letter is kept"
                        .to_owned(),
                });
            }
            delivery.acker.ack(BasicAckOptions::default()).await?;
            replayed += 1;
        }
        Ok::<(), Error>(())
    }
    .await;
    give_back(skipped).await;
    close(channel).await;
    moved.map(|()| replayed)
}

/// Deletes every dead letter of `queue`; returns how many.
///
/// # Errors
///
/// [`Error::Amqp`] when `dlq_<queue>` does not exist, [`Error::Timeout`] when no channel came
/// within `wait`.
pub async fn dlq_purge(
    broker: &Addr<ConnectionSupervisor>,
    queue: &str,
    wait: Duration,
) -> Result<u32> {
    let channel = broker::channel(broker, wait).await?;
    let purged = channel
        .queue_purge(
            dead_letter_queue(queue).as_str().into(),
            QueuePurgeOptions::default(),
        )
        .await;
    close(channel).await;
    Ok(purged?)
}

fn describe(delivery: &Delivery) -> DeadLetter {
    let meta = DeliveryMeta::read(
        delivery.routing_key.as_str(),
        &delivery.properties,
        &delivery.data,
    );
    let header = |name: &str| {
        delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|t| t.inner().get(name))
            .and_then(|v| match v {
                AMQPValue::LongString(s) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
                _ => None,
            })
    };
    DeadLetter {
        message_id: delivery
            .properties
            .message_id()
            .as_ref()
            .map_or_else(|| meta.message_id.to_string(), |s| s.to_string()),
        routing_key: meta.routing_key,
        attempt: meta.attempt,
        reason: header(h::REASON),
        handler: header(h::HANDLER),
        payload_bytes: delivery.data.len(),
    }
}

/// A dead letter's properties for its replay: attempt 1, the dead-letter headers gone, and
/// (when asked) the deadline too.
fn replay_properties(delivery: &Delivery, reset_deadline: bool) -> BasicProperties {
    let meta = DeliveryMeta::read(
        delivery.routing_key.as_str(),
        &delivery.properties,
        &delivery.data,
    );
    let left = match (reset_deadline, meta.deadline) {
        (false, Some(d)) => Some((d - chrono::Utc::now()).num_milliseconds().max(0)),
        _ => None,
    };
    let props = copy_properties(&delivery.properties, &meta.routing_key, 1, left, &[]);
    let mut table = props
        .headers()
        .as_ref()
        .map(|t| t.inner().clone())
        .unwrap_or_default();
    table.remove(h::REASON);
    table.remove(h::HANDLER);
    if reset_deadline {
        table.remove(h::DEADLINE);
    }
    props.with_headers(FieldTable::from(table))
}

/// The next message of `queue`, unacknowledged (`None` when it is empty).
async fn fetch(channel: &lapin::Channel, queue: &str) -> Result<Option<Delivery>> {
    let got = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await?;
    Ok(got.map(|g| g.delivery))
}

/// Gives fetched messages back to their queue, untouched (best effort: closing the channel
/// gives back whatever is left).
async fn give_back(deliveries: Vec<Delivery>) {
    let requeue = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    for delivery in deliveries {
        let _ = delivery.acker.nack(requeue).await;
    }
}

async fn close(channel: lapin::Channel) {
    if channel.status().connected() {
        let _ = tokio::time::timeout(Duration::from_secs(2), channel.close(200, "".into())).await;
    }
}
