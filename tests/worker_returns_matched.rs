//! A returned retry or dead-letter copy is never taken for a confirmed one. lapin hands a
//! `basic.return` to whichever confirm completes next; with many copies in flight on one
//! consumer channel, a returned retry copy could be read as confirmed and its original acked:
//! the message would be gone. Here every retry copy is unroutable (its delay queue was
//! deleted) while dead-letter copies route fine, and 200 deliveries are in flight at once.
//! Classic queues confirm at once, so the broker coalesces the copies' acks.
#![cfg(feature = "service-tests")]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix_outbox::HandlerError;
use actix_outbox_actors::{Listen, QueueType, Worker};
use common::worker::{Log, WorkerEnv, message_id, scripted, wait_stats};
use serde_json::Value;

const MESSAGES: usize = 200;

/// Even messages are rejected (dead-letter copy, routable), odd ones fail (retry copy,
/// unroutable): the dead-letter queue gets exactly the even ones, no retry is ever counted as
/// done, and every odd message is still in its queue when the worker stops.
#[actix_rt::test]
async fn a_returned_copy_never_acks_its_original() {
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("returns");
    let log = Arc::new(Log::default());
    let running = Worker::new(
        env.supervisor.clone(),
        env.config()
            .with_queue_type(QueueType::Classic)
            .with_prefetch(MESSAGES as u16)
            .with_retry_delays(["100ms"]),
    )
    .expect("config")
    .listen(
        Listen::new(["job.#"])
            .expect("keys")
            .with_queue(queue.as_str()),
        scripted::<Value, _>(&log, |event| match event.payload()["n"].as_u64() {
            Some(n) if n % 2 == 0 => Err(HandlerError::reject("even")),
            _ => Err(HandlerError::failed("odd")),
        }),
    )
    .expect("listen")
    .start()
    .await
    .expect("worker starts");
    let delay_queue = format!("{}.retry.100ms", env.broker.exchange);
    // Delete the delay queue: retry copies become unroutable.
    env.broker.delete_queue(&delay_queue).await;

    let ids = env.publish_many("job.run", MESSAGES).await;
    let even: HashSet<_> = ids.iter().step_by(2).copied().collect();
    wait_stats(
        &running,
        &queue,
        "the even messages to be dead-lettered",
        |s| s.dead_lettered >= (MESSAGES / 2) as u64,
    )
    .await;
    // Every odd one goes round again (its copy returned, the original requeued after a
    // pause): wait until each was tried twice.
    log.wait_count(
        "every odd message to be tried a second time",
        MESSAGES + MESSAGES / 2,
        Duration::from_secs(15),
    )
    .await;
    let stats = running.queue_stats(&queue).await.expect("stats");
    tokio::time::timeout(Duration::from_secs(30), running.stop())
        .await
        .expect("worker stops within 30 s");

    assert_eq!(
        stats.retried, 0,
        "no retry copy could be confirmed: {stats:?}"
    );
    assert_eq!(stats.dead_lettered, (MESSAGES / 2) as u64, "{stats:?}");
    let dead = env
        .take(
            &format!("dlq_{queue}"),
            MESSAGES / 2,
            Duration::from_secs(5),
        )
        .await;
    let dead: HashSet<_> = dead.iter().map(message_id).collect();
    assert_eq!(dead, even, "exactly the even messages were dead-lettered");
    let waiting = env.broker.depth(&queue).await;
    assert_eq!(
        waiting as usize,
        MESSAGES / 2,
        "every odd message is still queued"
    );
    assert!(
        log.count() > MESSAGES,
        "the odd ones were tried again and again"
    );
    env.cleanup(&[Duration::from_millis(100)]).await;
}
