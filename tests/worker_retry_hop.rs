//! The retry hop is at-least-once. A retry copy waits in its delay queue, and when its TTL
//! runs out the broker dead-letters it back to its queue. Classic dead-lettering drops the
//! copy if that queue is unavailable at that moment; the quorum delay queues dead-letter at
//! least once, keeping the copy until its queue takes it. And a queue declared by an earlier
//! version (without at-least-once dead-lettering) keeps working: the worker uses it as it is.
#![cfg(feature = "service-tests")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix_outbox::HandlerError;
use actix_outbox_actors::{Listen, Worker};
use common::faults::rabbitmqctl;
use common::worker::{Log, WorkerEnv, delays, scripted, wait_stats};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;

/// How often RabbitMQ's at-least-once dead-letter worker retries a message it could not
/// place: 3 min by default, 1 s for this test (put back afterwards, also on failure).
struct FastDeadLetterRetries;

impl FastDeadLetterRetries {
    async fn set() -> Self {
        rabbitmqctl(&[
            "eval",
            "application:set_env(rabbit, dead_letter_worker_publisher_confirm_timeout, 1000).",
        ])
        .await;
        Self
    }
}

impl Drop for FastDeadLetterRetries {
    fn drop(&mut self) {
        let restored = std::process::Command::new("timeout")
            .args(["60", "rabbitmqctl", "eval"])
            .arg("application:set_env(rabbit, dead_letter_worker_publisher_confirm_timeout, 180000).")
            .status();
        if !matches!(restored, Ok(s) if s.success()) {
            eprintln!("could not restore the dead-letter worker's timeout: {restored:?}");
        }
    }
}

/// The handler fails attempt 1; while the retry copy waits (1 s) the worker is stopped and
/// its queue deleted, so the queue is missing when the TTL runs out. Once a new worker
/// declares the queue again, the copy arrives and attempt 2 is handled.
#[actix_rt::test]
async fn a_retry_copy_survives_its_queue_missing_at_expiry() {
    let _fast = FastDeadLetterRetries::set().await;
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("hop");
    let log = Arc::new(Log::default());
    let worker = |env: &WorkerEnv, log: &Arc<Log>| {
        Worker::new(
            env.supervisor.clone(),
            env.config().with_retry_delays(["1s"]),
        )
        .expect("config")
        .listen(
            Listen::new(["job.#"])
                .expect("keys")
                .with_queue(queue.as_str()),
            scripted::<Value, _>(log, |e| match e.attempt() {
                1 => Err(HandlerError::failed("first try fails")),
                _ => Ok(()),
            }),
        )
        .expect("listen")
    };
    let running = worker(&env, &log).start().await.expect("worker starts");
    let id = env.publish("job.run", b"{}").await;
    wait_stats(&running, &queue, "the retry copy to be confirmed", |s| {
        s.retried == 1
    })
    .await;
    running.stop().await;
    env.broker.delete_queue(&queue).await; // while its retry copy waits
    // The observation window: the copy's 1 s TTL runs out while its queue is missing.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let running = worker(&env, &log)
        .start()
        .await
        .expect("worker starts again");
    log.wait_count(
        "the retry to arrive once the queue is back",
        2,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(log.attempts(id), [1, 2]);
    env.finish(running, &[Duration::from_secs(1)]).await;
}

/// A queue that exists with the arguments of an earlier version (dead-letter exchange and
/// key, no at-least-once strategy), its dead-letter queue without a delivery limit and the
/// exchange's classic unroutable store are used as they are: the worker starts and handles.
#[actix_rt::test]
async fn a_queue_of_an_earlier_version_keeps_working() {
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("legacy");
    let mut old = FieldTable::default();
    let long = |s: &str| AMQPValue::LongString(s.into());
    old.insert("x-queue-type".into(), long("quorum"));
    old.insert(
        "x-dead-letter-exchange".into(),
        long(&format!("{}.dlx", env.broker.exchange)),
    );
    old.insert(
        "x-dead-letter-routing-key".into(),
        long(&format!("dlq_{queue}")),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    env.broker
        .channel
        .queue_declare(queue.as_str().into(), durable, old)
        .await
        .expect("declare the queue the old way");
    let mut old_dlq = FieldTable::default();
    old_dlq.insert("x-queue-type".into(), long("quorum"));
    env.broker
        .channel
        .queue_declare(format!("dlq_{queue}").as_str().into(), durable, old_dlq)
        .await
        .expect("declare the dead-letter queue the old way");
    let store = format!("{}.unroutable", env.broker.exchange);
    env.broker
        .channel
        .queue_declare(store.as_str().into(), durable, FieldTable::default())
        .await
        .expect("declare the unroutable store the old way (classic)");
    let log = Arc::new(Log::default());
    let running = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            Listen::new(["job.#"])
                .expect("keys")
                .with_queue(queue.as_str()),
            scripted::<Value, _>(&log, |_| Ok(())),
        )
        .expect("listen")
        .start()
        .await
        .expect("the worker starts on the old queue");
    let id = env.publish("job.run", b"{}").await;
    log.wait_count("the event to be handled", 1, Duration::from_secs(10))
        .await;
    assert_eq!(log.attempts(id), [1]);
    env.finish(running, &delays()).await;
}
