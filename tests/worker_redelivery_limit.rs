//! No message loops for ever. A message whose retry copy can never be placed (here its delay
//! queue was deleted, so every copy is returned) is requeued after a pause, and the broker
//! counts its redeliveries (`x-delivery-count` on quorum queues; on classic queues, which keep
//! no count, the consumer publishes each redelivered message back to its queue with the count
//! in `x-outbox-redeliveries`): at the redelivery limit it is dead-lettered with the reason,
//! without calling the handler again. The same count bounds a message that crashes the whole
//! worker process on every delivery.
#![cfg(feature = "service-tests")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix_outbox::{HandlerError, headers as h};
use actix_outbox_actors::{Listen, QueueType, Worker};
use common::worker::{Log, WorkerEnv, header, message_id, scripted, wait_stats};
use serde_json::Value;

/// With `max_redeliveries(3)`, the message is handled on deliveries 0, 1 and 2 (each retry
/// copy returned, the original requeued), then dead-lettered on delivery 3.
#[actix_rt::test]
async fn a_message_that_cannot_be_settled_is_dead_lettered_at_the_limit() {
    cannot_be_settled(QueueType::Quorum).await;
}

/// The same on a classic queue: each redelivery is published back with its count (two
/// recounts between the three handlings). Before, it looped for ever there.
#[actix_rt::test]
async fn a_classic_queue_counts_redeliveries_too() {
    let stats = cannot_be_settled(QueueType::Classic).await;
    assert_eq!(stats.recounted, 2, "{stats:?}");
}

async fn cannot_be_settled(queue_type: QueueType) -> actix_outbox_actors::ConsumerStats {
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("looping");
    let log = Arc::new(Log::default());
    let running = Worker::new(
        env.supervisor.clone(),
        env.config()
            .with_queue_type(queue_type)
            .with_retry_delays(["100ms"])
            .with_max_redeliveries(3),
    )
    .expect("config")
    .listen(
        Listen::new(["job.#"])
            .expect("keys")
            .with_queue(queue.as_str()),
        scripted::<Value, _>(&log, |_| Err(HandlerError::failed("always"))),
    )
    .expect("listen")
    .start()
    .await
    .expect("worker starts");
    let delay_queue = format!("{}.retry.100ms", env.broker.exchange);
    // Delete the delay queue: every retry copy is returned.
    env.broker.delete_queue(&delay_queue).await;

    let id = env.publish("job.run", b"{}").await;
    let stats = wait_stats(&running, &queue, "the message to be dead-lettered", |s| {
        s.dead_lettered == 1
    })
    .await;
    assert_eq!((stats.retried, stats.requeued), (0, 3), "{stats:?}");
    assert_eq!(
        log.attempts(id),
        [1, 1, 1],
        "handled three times, never a fourth"
    );
    let dead = env
        .take(&format!("dlq_{queue}"), 1, Duration::from_secs(5))
        .await;
    assert_eq!(message_id(&dead[0]), id);
    let reason = header(&dead[0], h::REASON).unwrap_or_default();
    assert!(reason.starts_with("redelivered 3 times"), "{reason}");
    env.finish(running, &[Duration::from_millis(100)]).await;
    stats
}
