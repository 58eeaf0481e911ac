//! Delayed retries go back to the failing handler's queue only, and the attempt count
//! travels with them.
#![cfg(feature = "service-tests")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_outbox::HandlerError;
use actix_outbox_actors::{Listen, Worker};
use common::worker::{Log, WorkerEnv, delays, scripted, wait_stats};
use serde_json::Value;

/// A handler that fails twice then succeeds is handled on attempt 3, after the 100 ms and
/// 200 ms tiers; the other handler bound to the same key saw the event once.
#[actix_rt::test]
async fn fails_twice_then_succeeds_on_attempt_three() {
    let mut env = WorkerEnv::new().await;
    let (flaky_q, steady_q) = (env.queue("flaky"), env.queue("steady"));
    let flaky = Arc::new(Log::default());
    let steady = Arc::new(Log::default());
    let running = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            Listen::new(["user.created"])
                .expect("keys")
                .with_queue(flaky_q.as_str()),
            scripted::<Value, _>(&flaky, |e| match e.attempt() {
                1 | 2 => Err(HandlerError::failed("smtp is down")),
                _ => Ok(()),
            }),
        )
        .expect("flaky")
        .listen(
            Listen::new(["user.created"])
                .expect("keys")
                .with_queue(steady_q.as_str()),
            scripted::<Value, _>(&steady, |_| Ok(())),
        )
        .expect("steady")
        .start()
        .await
        .expect("worker starts");

    let started = Instant::now();
    let id = env.publish("user.created", br#"{"id":1}"#).await;
    let stats = wait_stats(&running, &flaky_q, "the third attempt to succeed", |s| {
        s.handled == 1
    })
    .await;
    let elapsed = started.elapsed();
    assert_eq!(flaky.attempts(id), [1, 2, 3]);
    assert_eq!((stats.retried, stats.dead_lettered), (2, 0), "{stats:?}");
    assert!(
        elapsed >= Duration::from_millis(300),
        "the retries waited their tiers (100 ms + 200 ms), took {elapsed:?}"
    );
    assert!(
        flaky.all().iter().all(|s| s.key == "user.created"),
        "original key kept"
    );
    // Observe a bounded window: the retries must not reach the other queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        steady.attempts(id),
        [1],
        "the other handler saw the event once"
    );
    assert_eq!(env.broker.depth(&format!("dlq_{flaky_q}")).await, 0);
    env.finish(running, &delays()).await;
}
