//! Messages past their absolute deadline are dead-lettered with reason `expired` instead of
//! handled, on first delivery and after retries alike.
#![cfg(feature = "service-tests")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_outbox::{HandlerError, headers as h};
use actix_outbox_actors::{Listen, Worker};
use chrono::{TimeDelta, Utc};
use common::worker::{Extra, Log, WorkerEnv, delays, header, message_id, scripted, wait_stats};
use serde_json::Value;

/// A message whose deadline passed before delivery goes to `dlq_<queue>` and the handler is
/// never called; a fresh message after it is handled.
#[actix_rt::test]
async fn expired_message_is_dead_lettered_unhandled() {
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("expiring");
    let log = Arc::new(Log::default());
    let running = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            Listen::new(["promo.sent"])
                .expect("keys")
                .with_queue(queue.as_str()),
            scripted::<Value, _>(&log, |_| Ok(())),
        )
        .expect("listen")
        .start()
        .await
        .expect("worker starts");

    let past = Extra {
        deadline: Some(Utc::now() - TimeDelta::seconds(1)),
        ..Extra::default()
    };
    let stale = env.publish_with("promo.sent", b"{}", past).await;
    let fresh = env.publish("promo.sent", b"{}").await;
    let stats = wait_stats(&running, &queue, "one expired, one handled", |s| {
        s.expired == 1 && s.handled == 1
    })
    .await;
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    assert!(
        log.attempts(stale).is_empty(),
        "the handler never saw the expired message"
    );
    assert_eq!(log.attempts(fresh), [1]);
    let dead = env
        .take(&format!("dlq_{queue}"), 1, Duration::from_secs(5))
        .await;
    assert_eq!(message_id(&dead[0]), stale);
    assert_eq!(header(&dead[0], h::REASON).as_deref(), Some("expired"));
    env.finish(running, &delays()).await;
}

/// A failing message whose deadline falls inside its retry delay is dead-lettered as
/// expired instead of being handled again. The retry copy carries the time left as its AMQP
/// expiration, so it leaves the 2 s delay queue when the deadline (600 ms) passes.
#[actix_rt::test]
async fn deadline_survives_retries() {
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("retried");
    let log = Arc::new(Log::default());
    let running = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            Listen::new(["promo.sent"])
                .expect("keys")
                .with_queue(queue.as_str())
                .with_retry_delays(["2s"]),
            scripted::<Value, _>(&log, |_| Err(HandlerError::failed("try later"))),
        )
        .expect("listen")
        .start()
        .await
        .expect("worker starts");

    let started = Instant::now();
    let soon = Extra {
        deadline: Some(Utc::now() + TimeDelta::milliseconds(600)),
        ..Extra::default()
    };
    let id = env.publish_with("promo.sent", b"{}", soon).await;
    let dead = env
        .take(&format!("dlq_{queue}"), 1, Duration::from_secs(10))
        .await;
    let elapsed = started.elapsed();
    assert_eq!(message_id(&dead[0]), id);
    assert_eq!(header(&dead[0], h::REASON).as_deref(), Some("expired"));
    assert_eq!(header(&dead[0], h::ATTEMPT).as_deref(), Some("2"));
    assert_eq!(
        log.attempts(id),
        [1],
        "handled once, then expired while waiting"
    );
    assert!(
        elapsed < Duration::from_millis(1_900),
        "the copy expired with its deadline, not after the 2 s tier: {elapsed:?}"
    );
    // The dead letter is confirmed before the original is acked and counted: wait for that.
    let stats = wait_stats(&running, &queue, "the expiry to be counted", |s| {
        s.expired == 1
    })
    .await;
    assert_eq!((stats.retried, stats.expired), (1, 1), "{stats:?}");
    env.finish(running, &[Duration::from_secs(2)]).await;
}
