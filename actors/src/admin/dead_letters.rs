//! Dead letters: list them, move them back to their queue with a fresh attempt count, purge
//! them.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_outbox::{BindingKey, Error, Result, headers as h};
use lapin::message::Delivery;
use lapin::options::QueuePurgeOptions;
use lapin::types::AMQPValue;
use serde::Serialize;

use super::moving::{
    Progress, ProgressFn, Selection, Target, close, fetch, give_back, move_messages,
};
use crate::broker::{self, ConnectionSupervisor};
use crate::exchange::dead_letter_queue;
use crate::worker::DeliveryMeta;

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

/// What [`dlq_replay`] and [`unroutable_replay`](super::unroutable_replay) move.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ReplayOptions {
    /// At most this many messages (`None`: all that were there when the replay began).
    pub limit: Option<u64>,
    /// Only the message with this id.
    pub message_id: Option<String>,
    /// Only messages whose routing key matches this binding key.
    pub key: Option<BindingKey>,
    /// Drop the copies' deadline (`x-outbox-deadline`), so expired events are handled
    /// instead of dead-lettered again as expired.
    pub reset_deadline: bool,
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for ReplayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayOptions")
            .field("limit", &self.limit)
            .field("message_id", &self.message_id)
            .field("key", &self.key)
            .field("reset_deadline", &self.reset_deadline)
            .field("progress", &self.progress.is_some())
            .finish()
    }
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

    /// Only messages whose routing key matches `key` (`order.*`, `#`).
    #[must_use]
    pub fn with_key(mut self, key: BindingKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Drop the copies' deadline.
    #[must_use]
    pub fn with_reset_deadline(mut self, reset: bool) -> Self {
        self.reset_deadline = reset;
        self
    }

    /// Calls `report` after each message moved (a long replay can show its progress).
    #[must_use]
    pub fn with_progress(mut self, report: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(report));
        self
    }

    pub(super) fn selection(&self) -> Selection<'_> {
        Selection {
            limit: self.limit.unwrap_or(u64::MAX),
            message_id: self.message_id.as_deref(),
            key: self.key.as_ref(),
            progress: self.progress.as_ref(),
        }
    }
}

/// Up to `limit` dead letters of `queue`, oldest first. They are fetched unacknowledged and
/// given back afterwards (the broker marks them redelivered; nothing else changes).
///
/// A message given back counts as a delivery on quorum queues. RabbitMQ 4 drops a message
/// past a quorum queue's delivery limit (20 unless declared otherwise), so dead-letter queues
/// are declared with a limit of [`DLQ_DELIVERY_LIMIT`](crate::exchange::DLQ_DELIVERY_LIMIT).
/// A dead-letter queue declared by an earlier version lacks it: lift its limit with a policy
/// (the worker's start-up warning gives the command).
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
/// message is in both queues: at least once). Messages not selected (`message_id`, `key`)
/// are given back untouched. Returns how many were replayed.
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
    let target = Target {
        exchange: "",
        routing_key: Some(queue),
        reset_deadline: options.reset_deadline,
        object: ("queue", queue),
    };
    replay_to(broker, queue, options, &target, wait).await
}

/// Moves the selected dead letters of `queue` to `target` on a channel of its own.
async fn replay_to(
    broker: &Addr<ConnectionSupervisor>,
    queue: &str,
    options: &ReplayOptions,
    target: &Target<'_>,
    wait: Duration,
) -> Result<u64> {
    let channel = broker::channel(broker, wait).await?;
    let from = dead_letter_queue(queue);
    let moved = move_messages(&channel, &from, &options.selection(), target).await;
    close(channel).await;
    moved
}

/// As [`dlq_replay`], for an ordered listener (`Listen::ordered`) of `queue` on `exchange`:
/// the copies go through its consistent-hash exchange `<exchange>.ordered.<queue>`, so each
/// lands in the partition of its ordering key. It arrives there after the events of its key
/// that were handled meanwhile: a replay restores the event, not its place in the order.
///
/// # Errors
///
/// As [`dlq_replay`]; [`Error::BrokerRefused`] names the hash exchange when it is missing.
pub async fn dlq_replay_ordered(
    broker: &Addr<ConnectionSupervisor>,
    exchange: &str,
    queue: &str,
    options: &ReplayOptions,
    wait: Duration,
) -> Result<u64> {
    let hash = crate::exchange::partition_exchange(exchange, queue);
    let target = Target {
        exchange: &hash,
        routing_key: None,
        reset_deadline: options.reset_deadline,
        object: ("exchange", &hash),
    };
    replay_to(broker, queue, options, &target, wait).await
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
