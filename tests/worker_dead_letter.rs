//! A handler that always fails: after the last retry tier the message sits in
//! `dlq_<queue>` with the reason headers, and nowhere else.
#![cfg(feature = "service-tests")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix_outbox::{HandlerError, headers as h};
use actix_outbox_actors::{Listen, Worker};
use common::worker::{Log, WorkerEnv, delays, header, message_id, scripted, wait_stats};
use serde_json::Value;

/// Three attempts (first + 100 ms + 200 ms tiers), then one copy in `dlq_<queue>` carrying
/// the error text, the attempt, the handler's queue and the original routing key; the queue,
/// the delay queues and the other handler's queue are empty.
#[actix_rt::test]
async fn exhausted_tiers_end_in_the_dead_letter_queue() {
    let mut env = WorkerEnv::new().await;
    let (broken_q, other_q) = (env.queue("broken"), env.queue("other"));
    let broken = Arc::new(Log::default());
    let other = Arc::new(Log::default());
    let running = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            Listen::new(["order.placed"])
                .expect("keys")
                .with_queue(broken_q.as_str()),
            scripted::<Value, _>(&broken, |_| {
                Err(HandlerError::failed("database is read-only"))
            }),
        )
        .expect("broken")
        .listen(
            Listen::new(["order.*"])
                .expect("keys")
                .with_queue(other_q.as_str()),
            scripted::<Value, _>(&other, |_| Ok(())),
        )
        .expect("other")
        .start()
        .await
        .expect("worker starts");

    let id = env.publish("order.placed", br#"{"order":7}"#).await;
    let stats = wait_stats(
        &running,
        &broken_q,
        "the message to be dead-lettered",
        |s| s.dead_lettered == 1,
    )
    .await;
    assert_eq!(broken.attempts(id), [1, 2, 3]);
    assert_eq!((stats.retried, stats.handled), (2, 0), "{stats:?}");

    let dlq = format!("dlq_{broken_q}");
    let dead = env.take(&dlq, 1, Duration::from_secs(5)).await;
    let dead = &dead[0];
    assert_eq!(message_id(dead), id);
    assert_eq!(dead.data, br#"{"order":7}"#, "body unchanged");
    assert_eq!(
        header(dead, h::REASON).as_deref(),
        Some("failed: database is read-only")
    );
    assert_eq!(header(dead, h::ATTEMPT).as_deref(), Some("3"));
    assert_eq!(header(dead, h::HANDLER).as_deref(), Some(broken_q.as_str()));
    assert_eq!(
        header(dead, h::ROUTING_KEY).as_deref(),
        Some("order.placed")
    );
    assert!(
        dead.properties.expiration().is_none(),
        "dead letters never expire"
    );

    for queue in [broken_q.clone(), other_q.clone(), dlq.clone()] {
        assert_eq!(env.broker.depth(&queue).await, 0, "{queue} is empty");
    }
    for d in delays() {
        let delay_q = format!("{}.retry.{}ms", env.broker.exchange, d.as_millis());
        assert_eq!(env.broker.depth(&delay_q).await, 0, "{delay_q} is empty");
    }
    assert_eq!(other.attempts(id), [1]);
    env.finish(running, &delays()).await;
}
