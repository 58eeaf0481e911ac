//! Moving messages out of a queue the safe way, shared by the dead-letter and unroutable
//! replays: fetch one, publish its copy, wait for the broker's confirm, and only then ack the
//! original. Killed at any point, the move has lost nothing; at worst one message is in both
//! places (at least once).

use std::sync::Arc;
use std::time::Duration;

use actix_outbox::{BindingKey, Error, Result, headers as h};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde::Serialize;

use crate::worker::{DeliveryMeta, copy_properties};

/// How far a replay got; handed to [`ReplayOptions::with_progress`](super::ReplayOptions::with_progress)'s
/// callback after each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Progress {
    /// Messages moved so far.
    pub moved: u64,
    /// Messages looked at so far (moved or left where they were).
    pub examined: u64,
    /// Messages the queue held when the replay began (it looks at no more).
    pub waiting: u64,
}

/// The callback of a long move.
pub(super) type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Which messages of the queue to move, and how many.
pub(super) struct Selection<'a> {
    /// At most this many.
    pub(super) limit: u64,
    /// Only the message with this id.
    pub(super) message_id: Option<&'a str>,
    /// Only messages whose routing key matches.
    pub(super) key: Option<&'a BindingKey>,
    /// Told after each message.
    pub(super) progress: Option<&'a ProgressFn>,
}

impl Selection<'_> {
    fn takes(&self, delivery: &Delivery, routing_key: &str) -> bool {
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str());
        self.message_id.is_none_or(|want| id == Some(want))
            && self.key.is_none_or(|key| key.matches(routing_key))
    }
}

/// Where copies go: `exchange` under each message's original routing key, or (with no
/// routing key given) under `routing_key`.
pub(super) struct Target<'a> {
    /// The exchange (`""`: the default exchange, which routes by queue name).
    pub(super) exchange: &'a str,
    /// A fixed routing key (the queue name on the default exchange), else the message's own.
    pub(super) routing_key: Option<&'a str>,
    /// Drop the copies' deadline.
    pub(super) reset_deadline: bool,
    /// Names the target in errors: (`"queue"`, name) or (`"exchange"`, name).
    pub(super) object: (&'static str, &'a str),
}

/// Moves the selected messages of `from` to `target`, looking at no more than were there at
/// the start; messages not selected are given back untouched. Returns how many moved.
pub(super) async fn move_messages(
    channel: &Channel,
    from: &str,
    selection: &Selection<'_>,
    target: &Target<'_>,
) -> Result<u64> {
    let (waiting, _) = crate::exchange::queue_counts(channel, from).await?;
    let mut progress = Progress {
        moved: 0,
        examined: 0,
        waiting: u64::from(waiting),
    };
    let mut skipped = Vec::new();
    let moved = async {
        while progress.examined < progress.waiting && progress.moved < selection.limit {
            let Some(delivery) = fetch(channel, from).await? else {
                break;
            };
            progress.examined += 1;
            let meta = DeliveryMeta::read(
                delivery.routing_key.as_str(),
                &delivery.properties,
                &delivery.data,
            );
            if !selection.takes(&delivery, &meta.routing_key) {
                skipped.push(delivery);
                continue;
            }
            let key = target.routing_key.unwrap_or(&meta.routing_key);
            let props = replay_properties(&delivery, &meta, target.reset_deadline);
            if let Err(e) = publish_confirmed(channel, target, key, &delivery.data, props).await {
                give_back(vec![delivery]).await;
                return Err(e);
            }
            delivery.acker.ack(BasicAckOptions::default()).await?;
            progress.moved += 1;
            if let Some(report) = selection.progress {
                report(progress);
            }
        }
        Ok::<(), Error>(())
    }
    .await;
    give_back(skipped).await;
    moved.map(|()| progress.moved)
}

async fn publish_confirmed(
    channel: &Channel,
    target: &Target<'_>,
    routing_key: &str,
    data: &[u8],
    props: BasicProperties,
) -> Result<()> {
    let mandatory = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let confirm = channel
        .basic_publish(
            target.exchange.into(),
            routing_key.into(),
            mandatory,
            data,
            props,
        )
        .await?
        .await?;
    if confirm.is_ack() && confirm.take_message().is_none() {
        return Ok(());
    }
    let (object, name) = target.object;
    Err(Error::BrokerRefused {
        object,
        name: name.to_owned(),
        reason: format!(
            "the copy under key {routing_key:?} was returned (no queue is bound for it) or nacked; the original is kept"
        ),
    })
}

/// A message's properties for its replay: attempt 1, the dead-letter headers gone, the
/// deadline kept (as what is left of it) or, when asked, dropped.
fn replay_properties(
    delivery: &Delivery,
    meta: &DeliveryMeta,
    reset_deadline: bool,
) -> BasicProperties {
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
pub(super) async fn fetch(channel: &Channel, queue: &str) -> Result<Option<Delivery>> {
    let got = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await?;
    Ok(got.map(|g| g.delivery))
}

/// Gives fetched messages back to their queue, untouched (best effort: closing the channel
/// gives back whatever is left).
pub(super) async fn give_back(deliveries: Vec<Delivery>) {
    let requeue = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    for delivery in deliveries {
        let _ = delivery.acker.nack(requeue).await;
    }
}

/// Closes a throwaway channel, bounded by 2 s.
pub(super) async fn close(channel: Channel) {
    if channel.status().connected() {
        let _ = tokio::time::timeout(Duration::from_secs(2), channel.close(200, "".into())).await;
    }
}
