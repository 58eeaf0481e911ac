//! One delivery, start to finish: read its envelope, decode `Event<T>`, call the handler,
//! [`decide`] what to do, and settle it on the broker.
//!
//! Settling never loses a message: a retry or dead-letter copy is published on the
//! consumer's confirm-mode channel and the original is acked only once the broker confirmed
//! the copy. If the copy is refused or unconfirmed, the original is requeued; if the channel
//! broke, the broker redelivers the original by itself. The original's ack is left to the
//! consumer ([`Settled::AckOwed`]), which coalesces the acks of its channel
//! (`worker::acks`).

use std::future::Future;
use std::time::{Duration, Instant};

use actix::Recipient;
use actix_outbox::{Event, headers as h};
use chrono::{DateTime, Utc};
use futures_util::future::Either;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::{BasicProperties, Channel};
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, field, info_span, warn};

use super::acks::AckFrames;
use super::config::QueueType;
use super::envelope::{DeliveryMeta, copy_properties, decode_payload, time_left_ms};
use super::handler::Sends;
use super::link::CopyTurn;
use super::listen::SharedSpec;
use super::retry::{Fate, Outcome, decide, expire_if_past};
use crate::exchange::{
    Answer, Completed, ReturnKey, bounded_reason, dead_letter_exchange, dead_letter_queue,
    delay_name, resolve,
};

/// The longest pause before requeueing an original whose copy was not confirmed (jittered
/// between half and all of it).
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// What a delivery needs from its consumer.
pub(crate) struct Job<T: Send + 'static> {
    /// The channel the delivery came on (confirm mode): copies are published on it.
    pub(crate) channel: Channel,
    /// Held while a copy is published and confirmed: one copy at a time per channel, so a
    /// returned copy is never mistaken for another (see `exchange::answer`).
    pub(crate) copy_turn: CopyTurn,
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
    /// The fate was carried out.
    Done,
    /// The fate was carried out but for the original's ack, which is owed: the consumer
    /// sends it, coalesced with others (see `worker::acks`).
    AckOwed,
    /// The original was given back to the queue instead (the copy was not confirmed, or the
    /// fate was a requeue).
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
    pub(crate) fate: Fate,
    /// Whether it was carried out.
    pub(crate) settled: Settled,
    /// How long the handler took to answer (`None` when it was not called).
    pub(crate) handler_time: Option<Duration>,
    /// The delivery's tag on its channel.
    pub(crate) tag: u64,
}

/// Runs one delivery through the handler and settles it, inside a `delivery` span that
/// records queue, routing key, message id, attempt, outcome (`handled`, `failed`, `retry`,
/// `abort`, `reject`, `panicked`, `handler_gone`, `undecodable`, `expired`), the fate decided
/// and the duration — never the payload.
pub(crate) async fn run<T>(job: Job<T>, delivery: Delivery) -> Report
where
    T: DeserializeOwned + Send + 'static,
{
    let meta = DeliveryMeta::read(
        delivery.routing_key.as_str(),
        &delivery.properties,
        &delivery.data,
    );
    // A CONSUMER span in OpenTelemetry's messaging terms (`otel.*`, `messaging.*`), a child
    // of the trace context the event was emitted in (feature `otel`).
    let span = info_span!(
        "delivery",
        queue = %job.spec.queue,
        routing_key = %meta.routing_key,
        message_id = %meta.message_id,
        attempt = meta.attempt,
        outcome = field::Empty,
        fate = field::Empty,
        duration_ms = field::Empty,
        otel.name = %format_args!("process {}", job.spec.queue),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = %job.spec.queue,
        messaging.rabbitmq.destination.routing_key = %meta.routing_key,
        messaging.message.id = %meta.message_id,
    );
    #[cfg(feature = "otel")]
    if let Some(parent) = actix_outbox::otel::extract(&meta.user_headers) {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let _ = span.set_parent(parent);
    }
    let started = Instant::now();
    async move {
        let deadline = meta.deadline;
        let routing_key = meta.routing_key.clone();
        let mut next = Some(meta);
        let (outcome, handler_time, fate, attempt) = loop {
            let Some(meta) = next.take() else {
                unreachable!("every pass that loops sets the next attempt's metadata")
            };
            let attempt = meta.attempt;
            // Only an ordered listener tries again in place and needs the metadata again.
            let kept = (job.spec.partitions > 0).then(|| meta.clone());
            let (outcome, handler_time) = handle(&job, &delivery, meta).await;
            let fate = decide(&outcome, attempt, &job.spec.policy);
            let fate = expire_if_past(fate, deadline, Utc::now());
            match fate {
                // Ordered listener: a failure is retried in place, unacked, so that nothing
                // of its partition passes it (see `Listen::ordered`).
                Fate::Retry { delay } if job.spec.partitions > 0 => {
                    if !matches!(outcome, Outcome::Failed(_)) {
                        // A dead or stuck handler actor: back to the head of the queue for
                        // the consumer to restart it (bounded by the redelivery limit).
                        break (outcome, handler_time, Fate::Requeue, attempt);
                    }
                    debug!(?delay, attempt, "retrying in place (ordered listener)");
                    tokio::time::sleep(delay).await;
                    next = kept.map(|mut meta| {
                        meta.attempt = attempt.saturating_add(1);
                        meta
                    });
                }
                fate => break (outcome, handler_time, fate, attempt),
            }
        };
        let copy = CopyFacts {
            routing_key: &routing_key,
            attempt,
            deadline,
        };
        let settled = settle(&job, &delivery, &copy, &fate).await;
        let span = tracing::Span::current();
        span.record("outcome", outcome.name());
        span.record("fate", field::display(&fate));
        span.record("duration_ms", started.elapsed().as_millis() as u64);
        log(&outcome, &fate, &settled, &job.spec.queue);
        Report {
            outcome,
            fate,
            settled,
            handler_time,
            tag: delivery.delivery_tag,
        }
    }
    .instrument(span)
    .await
}

/// Expiry and redelivery checks, decoding and the handler call (timed).
async fn handle<T>(
    job: &Job<T>,
    delivery: &Delivery,
    meta: DeliveryMeta,
) -> (Outcome, Option<Duration>)
where
    T: DeserializeOwned + Send + 'static,
{
    match precheck(job, delivery, &meta) {
        Some(outcome) => (outcome, None),
        None => {
            let started = Instant::now();
            let outcome = call(job, delivery, meta).await;
            (outcome, Some(started.elapsed()))
        }
    }
}

/// What happens to a delivery before the handler would see it: expired, over the redelivery
/// limit, or (classic queues) to be recounted. `None`: decode and call the handler.
fn precheck<T: Send + 'static>(
    job: &Job<T>,
    delivery: &Delivery,
    meta: &DeliveryMeta,
) -> Option<Outcome> {
    if meta.expired_at(Utc::now()) {
        return Some(Outcome::Expired);
    }
    if meta.redeliveries >= job.spec.max_redeliveries {
        return Some(Outcome::Redelivered(meta.redeliveries));
    }
    if job.spec.queue_type == QueueType::Classic && delivery.redelivered {
        // The broker keeps no count here: this delivery is the count's next step.
        let count = meta.redeliveries.saturating_add(1);
        return Some(match count >= job.spec.max_redeliveries {
            true => Outcome::Redelivered(count),
            false => Outcome::Uncounted(count),
        });
    }
    None
}

/// Decodes the payload and calls the handler, bounded by the handler timeout.
async fn call<T>(job: &Job<T>, delivery: &Delivery, meta: DeliveryMeta) -> Outcome
where
    T: DeserializeOwned + Send + 'static,
{
    let content_type = delivery.properties.content_type().as_ref();
    let payload = match decode_payload::<T>(content_type.map(|c| c.as_str()), &delivery.data) {
        Ok(payload) => payload,
        Err(reason) => return Outcome::Undecodable(reason),
    };
    job.sends.borrow_mut().begin();
    let sent = job.handler.send(meta.into_event(payload, &job.spec.queue));
    let answer = tokio::time::timeout(job.spec.handler_timeout, sent).await;
    let mut sends = job.sends.borrow_mut();
    let outcome = match answer {
        // The handler keeps the event (actix cannot take it back); the delivery goes on.
        Err(_) => Outcome::TimedOut,
        Ok(Ok(Ok(()))) => Outcome::Handled,
        Ok(Ok(Err(err))) => Outcome::Failed(err),
        Ok(Err(_)) if job.restartable && sends.crash_was_alone() => Outcome::Crashed,
        Ok(Err(_)) if job.restartable => Outcome::Displaced,
        Ok(Err(_)) => Outcome::HandlerGone,
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

/// Carries out `fate` for `delivery`.
async fn settle<T: Send + 'static>(
    job: &Job<T>,
    delivery: &Delivery,
    copy: &CopyFacts<'_>,
    fate: &Fate,
) -> Settled {
    let spec = &job.spec;
    let props = &delivery.properties;
    let published = match fate {
        Fate::Ack => return Settled::AckOwed,
        Fate::Requeue => {
            return requeue(
                delivery,
                "the handler actor died before answering".to_owned(),
            )
            .await;
        }
        Fate::Retry { delay } => {
            let left = copy.deadline.map(|d| time_left_ms(d, Utc::now()));
            let next = copy.attempt.saturating_add(1);
            let props = copy_properties(props, copy.routing_key, next, left, &[]);
            let exchange = delay_name(&spec.exchange, *delay);
            publish(job, &exchange, &spec.queue, &delivery.data, props).await
        }
        Fate::Recount { redeliveries } => {
            let left = copy.deadline.map(|d| time_left_ms(d, Utc::now()));
            let extra = [(h::REDELIVERIES, redeliveries.to_string())];
            let props = copy_properties(props, copy.routing_key, copy.attempt, left, &extra);
            publish(job, "", &spec.queue, &delivery.data, props).await
        }
        Fate::DeadLetter { reason } => {
            let extra = [
                (h::REASON, bounded_reason(reason).into_owned()),
                (h::HANDLER, spec.queue.clone()),
            ];
            let props = copy_properties(props, copy.routing_key, copy.attempt, None, &extra);
            let dlq = dead_letter_queue(&spec.queue);
            let exchange = dead_letter_exchange(&spec.exchange);
            publish(job, &exchange, &dlq, &delivery.data, props).await
        }
    };
    let why = match published {
        Answer::Confirmed => return Settled::AckOwed,
        Answer::Returned => "the copy was unroutable".to_owned(),
        Answer::Nacked => "the copy was nacked".to_owned(),
        Answer::Unknown(why) | Answer::Failed(why) => why,
    };
    // The original comes straight back when requeued: pause first, so a copy that cannot be
    // placed (a deleted delay queue, a full dead-letter queue) does not loop at full speed.
    // Its redeliveries are counted by the broker and bounded by the redelivery limit.
    tokio::time::sleep(REQUEUE_PAUSE.mul_f64(0.5 + fastrand::f64() * 0.5)).await;
    requeue(delivery, why).await
}

/// Publishes a copy (`mandatory`) and waits for its confirm, bounded by the confirm timeout,
/// while holding the channel's copy turn: with one copy in flight per channel, every return
/// the confirm could carry is this copy's own, and [`resolve`] checks it is.
///
/// A copy whose answer is unknown gets its original requeued (above); when the channel
/// itself has failed, that requeue fails too and the consumer learns of the loss from it.
async fn publish<T: Send + 'static>(
    job: &Job<T>,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Answer {
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let id = props.message_id().as_ref().map_or("", |s| s.as_str());
    let key = ReturnKey::new(exchange, routing_key, id);
    let _turn = job.copy_turn.lock().await;
    let confirm = match job
        .channel
        .basic_publish(exchange.into(), routing_key.into(), options, body, props)
        .await
    {
        Ok(confirm) => confirm,
        Err(e) => return Answer::Failed(e.to_string()),
    };
    let wait: Duration = job.spec.confirm_timeout;
    let completed = Completed::read(tokio::time::timeout(wait, confirm).await, wait);
    let mut answers = resolve(|_| key.clone(), vec![completed]);
    answers
        .pop()
        .unwrap_or(Answer::Unknown("no answer".to_owned()))
}

/// Sends the consumer's coalesced acks on `channel`: the multiple ack first, then the
/// single ones. Every frame is queued on the channel **before this returns**, in that
/// order; the future only waits for them to be written. So the acks of one
/// [`AckFrames`] can never be overtaken by a later one: a multiple ack that passed over a
/// single ack not yet sent would make that single ack name an unknown delivery tag, which
/// the broker answers by closing the channel. The future's error says why the acks could
/// not be written (the channel is gone).
pub(crate) fn send_acks(
    channel: &Channel,
    frames: &AckFrames,
) -> impl Future<Output = Result<(), String>> + use<> {
    let multiple = frames.up_to.map(|tag| (tag, true));
    let singles = frames.singles.iter().map(|&tag| (tag, false));
    let mut writes = Vec::with_capacity(frames.frames());
    for (tag, multiple) in multiple.into_iter().chain(singles) {
        let channel = channel.clone();
        let mut ack =
            Box::pin(async move { channel.basic_ack(tag, BasicAckOptions { multiple }).await });
        // lapin queues the frame on the first poll, before its first await point.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        writes.push(match ack.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(done) => Either::Left(std::future::ready(done)),
            std::task::Poll::Pending => Either::Right(ack),
        });
    }
    async move {
        for write in writes {
            write
                .await
                .map_err(|e| format!("coalesced ack failed: {e}"))?;
        }
        Ok(())
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
fn log(outcome: &Outcome, fate: &Fate, settled: &Settled, queue: &str) {
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
        (_, Settled::Done | Settled::AckOwed) => match fate {
            Fate::DeadLetter { reason } => {
                let reason = bounded_reason(reason);
                warn!(%reason, dlq = %dead_letter_queue(queue), "message dead-lettered")
            }
            Fate::Retry { delay } => debug!(?delay, "retry scheduled"),
            Fate::Recount { redeliveries } => {
                debug!(
                    redeliveries,
                    "redelivered by a classic queue: published back with its count"
                )
            }
            Fate::Ack | Fate::Requeue => debug!("delivery settled"),
        },
    }
}
