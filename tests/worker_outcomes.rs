//! What each handler outcome does to the message: `Reject`, `Abort`, `Retry`, and plain
//! errors with `retry_on_error(false)`.
#![cfg(feature = "service-tests")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix_outbox::{HandlerError, HandlerResult, headers as h};
use actix_outbox_actors::{ConsumerStats, Listen, RunningWorker, Worker};
use common::worker::{Log, WorkerEnv, delays, header, scripted, wait_stats};
use serde_json::Value;
use uuid::Uuid;

/// Runs one handler with `behave` on `listen`, publishes one event and waits until `done`.
async fn run_one(
    listen: impl FnOnce(Listen) -> Listen,
    behave: impl Fn(u32) -> HandlerResult + Send + Sync + 'static,
    done: impl Fn(&ConsumerStats) -> bool,
) -> (
    WorkerEnv,
    RunningWorker,
    String,
    Arc<Log>,
    Uuid,
    ConsumerStats,
) {
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("outcome");
    let log = Arc::new(Log::default());
    let running = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            listen(
                Listen::new(["task.run"])
                    .expect("keys")
                    .with_queue(queue.as_str()),
            ),
            scripted::<Value, _>(&log, move |e| behave(e.attempt())),
        )
        .expect("listen")
        .start()
        .await
        .expect("worker starts");
    let id = env.publish("task.run", b"{}").await;
    let stats = wait_stats(&running, &queue, "the outcome to be settled", done).await;
    (env, running, queue, log, id, stats)
}

/// `Reject` dead-letters at once: one attempt, no retry.
#[actix_rt::test]
async fn reject_goes_straight_to_the_dead_letter_queue() {
    let (env, running, queue, log, id, stats) = run_one(
        |l| l,
        |_| Err(HandlerError::reject("malformed order")),
        |s| s.dead_lettered == 1,
    )
    .await;
    assert_eq!((log.attempts(id), stats.retried), (vec![1], 0));
    let dead = env
        .take(&format!("dlq_{queue}"), 1, Duration::from_secs(5))
        .await;
    assert_eq!(
        header(&dead[0], h::REASON).as_deref(),
        Some("reject: malformed order")
    );
    assert_eq!(header(&dead[0], h::ATTEMPT).as_deref(), Some("1"));
    env.finish(running, &delays()).await;
}

/// `Abort` acks and drops: no retry and nothing in the dead-letter queue.
#[actix_rt::test]
async fn abort_drops_the_message() {
    let (env, running, queue, log, id, stats) = run_one(
        |l| l,
        |_| Err(HandlerError::abort("user already deleted")),
        |s| s.aborted == 1,
    )
    .await;
    // Observe a bounded window longer than both tiers: no retry may come.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(log.attempts(id), [1]);
    assert_eq!((stats.retried, stats.dead_lettered), (0, 0), "{stats:?}");
    assert_eq!(env.broker.depth(&queue).await, 0);
    assert_eq!(env.broker.depth(&format!("dlq_{queue}")).await, 0);
    env.finish(running, &delays()).await;
}

/// `Retry` retries even where plain errors are not retried.
#[actix_rt::test]
async fn retry_is_honoured_with_retries_off() {
    let (env, running, _queue, log, id, stats) = run_one(
        |l| l.with_retry_on_error(false),
        |attempt| match attempt {
            1 => Err(HandlerError::retry("rate limited")),
            _ => Ok(()),
        },
        |s| s.handled == 1,
    )
    .await;
    assert_eq!(log.attempts(id), [1, 2]);
    assert_eq!((stats.retried, stats.dead_lettered), (1, 0), "{stats:?}");
    env.finish(running, &delays()).await;
}

/// A plain error with retries off is dead-lettered, never dropped.
#[actix_rt::test]
async fn plain_errors_with_retries_off_are_dead_lettered() {
    let (env, running, queue, log, id, stats) = run_one(
        |l| l.with_retry_on_error(false),
        |_| Err(HandlerError::failed("boom")),
        |s| s.dead_lettered == 1,
    )
    .await;
    assert_eq!((log.attempts(id), stats.retried), (vec![1], 0));
    let dead = env
        .take(&format!("dlq_{queue}"), 1, Duration::from_secs(5))
        .await;
    assert_eq!(header(&dead[0], h::REASON).as_deref(), Some("failed: boom"));
    env.finish(running, &delays()).await;
}
