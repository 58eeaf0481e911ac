//! One delivery, start to finish: read its envelope, decode `Event<T>`, call the handler,
//! [`decide`] what to do, and settle it on the broker.
//!
//! Settling never loses a message: a retry or dead-letter copy is published on the
//! consumer's confirm-mode channel and the original is acked only once the broker confirmed
//! the copy. If the copy is refused or unconfirmed, the original is requeued; if the channel
//! broke, the broker redelivers the original by itself.

use std::time::{Duration, Instant};

use actix::Recipient;
use actix_outbox::{Event, headers as h};
use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::{BasicProperties, Channel, Confirmation};
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, field, info_span, warn};

use crate::consumer_envelope::{DeliveryMeta, copy_properties, decode_payload, time_left_ms};
use crate::consumer_handler::Sends;
use crate::retry_policy::{Action, Outcome, decide, expire_if_past};
use crate::worker_listen::SharedSpec;
use crate::worker_topology::{dead_letter_exchange, dead_letter_queue, delay_name};

/// What a delivery needs from its consumer.
pub(crate) struct Job<T: Send + 'static> {
    /// The channel the delivery came on (confirm mode): copies are published on it.
    pub(crate) channel: Channel,
    /// The queue's settings.
    pub(crate) spec: SharedSpec,
    /// Where the event goes.
    pub(crate) handler: Recipient<Event<T>>,
    /// Whether a dead handler will be replaced (decides crash vs. gone).
    pub(crate) restartable: bool,
    /// The sends to this handler actor (tells a crash's cause from its bystanders).
    pub(crate) sends: Sends,
}

/// How settling went on the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settled {
    /// The action was carried out.
    Done,
    /// The original was given back to the queue instead (the copy was not confirmed, or the
    /// action was a requeue).
    Requeued(String),
    /// The channel failed: nothing could be settled; the broker redelivers the message.
    Lost(String),
}

/// What happened to one delivery, for the consumer's counters and restarts.
#[derive(Debug)]
pub(crate) struct Report {
    /// How handling ended.
    pub(crate) outcome: Outcome,
    /// What was decided.
    pub(crate) action: Action,
    /// Whether it was carried out.
    pub(crate) settled: Settled,
}

/// Runs one delivery through the handler and settles it, inside a `delivery` span that
/// records queue, routing key, message id, attempt, outcome (`handled`, `failed`, `retry`,
/// `abort`, `reject`, `panicked`, `handler_gone`, `undecodable`, `expired`), the action taken
/// and the duration — never the payload.
pub(crate) async fn run<T>(job: Job<T>, delivery: Delivery) -> Report
where
    T: DeserializeOwned + Send + 'static,
{
    let meta = DeliveryMeta::read(delivery.routing_key.as_str(), &delivery.properties);
    let span = info_span!(
        "delivery",
        queue = %job.spec.queue,
        routing_key = %meta.routing_key,
        message_id = %meta.message_id,
        attempt = meta.attempt,
        outcome = field::Empty,
        action = field::Empty,
        duration_ms = field::Empty,
    );
    let started = Instant::now();
    async move {
        let (attempt, deadline) = (meta.attempt, meta.deadline);
        let routing_key = meta.routing_key.clone();
        let outcome = handle(&job, &delivery, meta).await;
        let action = decide(&outcome, attempt, &job.spec.policy);
        let action = expire_if_past(action, deadline, Utc::now());
        let copy = CopyFacts {
            routing_key: &routing_key,
            attempt,
            deadline,
        };
        let settled = settle(&job, &delivery, &copy, &action).await;
        let span = tracing::Span::current();
        span.record("outcome", outcome.name());
        span.record("action", field::display(&action));
        span.record("duration_ms", started.elapsed().as_millis() as u64);
        log(&outcome, &action, &settled, &job.spec.queue);
        Report {
            outcome,
            action,
            settled,
        }
    }
    .instrument(span)
    .await
}

/// Expiry check, decoding and the handler call.
async fn handle<T>(job: &Job<T>, delivery: &Delivery, meta: DeliveryMeta) -> Outcome
where
    T: DeserializeOwned + Send + 'static,
{
    if meta.expired_at(Utc::now()) {
        return Outcome::Expired;
    }
    let content_type = delivery.properties.content_type().as_ref();
    let payload = match decode_payload::<T>(content_type.map(|c| c.as_str()), &delivery.data) {
        Ok(payload) => payload,
        Err(reason) => return Outcome::Undecodable(reason),
    };
    job.sends.borrow_mut().begin();
    let answer = job.handler.send(meta.into_event(payload)).await;
    let mut sends = job.sends.borrow_mut();
    let outcome = match answer {
        Ok(Ok(())) => Outcome::Handled,
        Ok(Err(err)) => Outcome::Failed(err),
        Err(_) if job.restartable && sends.crash_was_alone() => Outcome::Crashed,
        Err(_) if job.restartable => Outcome::Displaced,
        Err(_) => Outcome::HandlerGone,
    };
    sends.end();
    outcome
}

/// The facts a copy of the delivery needs.
struct CopyFacts<'a> {
    routing_key: &'a str,
    attempt: u32,
    deadline: Option<DateTime<Utc>>,
}

/// Carries out `action` for `delivery`.
async fn settle<T: Send + 'static>(
    job: &Job<T>,
    delivery: &Delivery,
    copy: &CopyFacts<'_>,
    action: &Action,
) -> Settled {
    let spec = &job.spec;
    let props = &delivery.properties;
    let published = match action {
        Action::Ack => return ack(delivery).await,
        Action::Requeue => {
            return requeue(
                delivery,
                "the handler actor died before answering".to_owned(),
            )
            .await;
        }
        Action::Retry { delay } => {
            let left = copy.deadline.map(|d| time_left_ms(d, Utc::now()));
            let next = copy.attempt.saturating_add(1);
            let props = copy_properties(props, copy.routing_key, next, left, &[]);
            let exchange = delay_name(&spec.exchange, *delay);
            publish(job, &exchange, &spec.queue, &delivery.data, props).await
        }
        Action::DeadLetter { reason } => {
            let extra = [
                (h::REASON, reason.clone()),
                (h::HANDLER, spec.queue.clone()),
            ];
            let props = copy_properties(props, copy.routing_key, copy.attempt, None, &extra);
            let dlq = dead_letter_queue(&spec.queue);
            let exchange = dead_letter_exchange(&spec.exchange);
            publish(job, &exchange, &dlq, &delivery.data, props).await
        }
    };
    match published {
        Published::Confirmed => ack(delivery).await,
        Published::Refused(why) => requeue(delivery, why).await,
        Published::ChannelFailed(why) => Settled::Lost(why),
    }
}

enum Published {
    Confirmed,
    Refused(String),
    ChannelFailed(String),
}

/// Publishes a copy (`mandatory`) and waits for its confirm, bounded by the confirm timeout.
async fn publish<T: Send + 'static>(
    job: &Job<T>,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Published {
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let confirm = match job
        .channel
        .basic_publish(exchange.into(), routing_key.into(), options, body, props)
        .await
    {
        Ok(confirm) => confirm,
        Err(e) => return Published::ChannelFailed(e.to_string()),
    };
    let wait: Duration = job.spec.confirm_timeout;
    match tokio::time::timeout(wait, confirm).await {
        Ok(Ok(Confirmation::Ack(None))) => Published::Confirmed,
        Ok(Ok(Confirmation::Ack(Some(_)))) => {
            Published::Refused(format!("copy to {exchange:?} was unroutable"))
        }
        Ok(Ok(Confirmation::Nack(_))) => {
            Published::Refused(format!("copy to {exchange:?} was nacked"))
        }
        Ok(Ok(Confirmation::NotRequested)) => {
            Published::Refused("channel is not in confirm mode".to_owned())
        }
        Ok(Err(e)) => Published::ChannelFailed(e.to_string()),
        Err(_) => Published::Refused(format!(
            "copy to {exchange:?} not confirmed within {wait:?}"
        )),
    }
}

async fn ack(delivery: &Delivery) -> Settled {
    match delivery.acker.ack(BasicAckOptions::default()).await {
        Ok(true) => Settled::Done,
        Ok(false) => Settled::Lost("channel closed before the ack".to_owned()),
        Err(e) => Settled::Lost(e.to_string()),
    }
}

async fn requeue(delivery: &Delivery, why: String) -> Settled {
    let options = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    match delivery.acker.nack(options).await {
        Ok(true) => Settled::Requeued(why),
        Ok(false) => Settled::Lost("channel closed before the requeue".to_owned()),
        Err(e) => Settled::Lost(e.to_string()),
    }
}

/// Gives a delivery that arrived after the consumer was cancelled back to the queue,
/// without handling it (best effort: closing the channel requeues it anyway).
pub(crate) async fn requeue_unhandled(delivery: Delivery) {
    let _ = requeue(&delivery, String::new()).await;
}

/// One log line per noteworthy delivery. Decode errors are not logged verbatim (serde quotes
/// offending values, that is payload): their text goes only into the dead letter's header.
fn log(outcome: &Outcome, action: &Action, settled: &Settled, queue: &str) {
    match (outcome, settled) {
        (_, Settled::Lost(why)) => {
            warn!(%why, "channel failed before the delivery was settled; the broker redelivers it")
        }
        (_, Settled::Requeued(why)) => warn!(%why, "message requeued"),
        (Outcome::Failed(err @ actix_outbox::HandlerError::Abort(_)), _) => {
            warn!(reason = %err.reason(), "handler aborted the event; acked and dropped")
        }
        (Outcome::Undecodable(_), _) => {
            warn!(dlq = %dead_letter_queue(queue), "undecodable payload dead-lettered (reason in its x-outbox-reason header)")
        }
        (_, Settled::Done) => match action {
            Action::DeadLetter { reason } => {
                warn!(%reason, dlq = %dead_letter_queue(queue), "message dead-lettered")
            }
            Action::Retry { delay } => debug!(?delay, "retry scheduled"),
            Action::Ack | Action::Requeue => debug!("delivery settled"),
        },
    }
}
