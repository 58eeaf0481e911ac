//! Payloads that cannot be decoded are dead-lettered once, never retried, and the worker
//! keeps handling the messages after them.
#![cfg(feature = "service-tests")]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix_outbox::headers as h;
use actix_outbox_actors::{Listen, Worker};
use common::worker::{Extra, Log, WorkerEnv, delays, header, message_id, scripted, wait_stats};

#[derive(Debug, serde::Deserialize)]
struct UserCreated {
    #[allow(dead_code)]
    id: u64,
}

/// Bad JSON, a wrong shape and an unsupported content type each land in `dlq_<queue>` with
/// the decode error as reason; the good message published after them is handled.
#[actix_rt::test]
async fn undecodable_payloads_are_dead_lettered_and_the_next_is_handled() {
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("typed");
    let log = Arc::new(Log::default());
    let running = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            Listen::new(["user.created"])
                .expect("keys")
                .with_queue(queue.as_str()),
            scripted::<UserCreated, _>(&log, |_| Ok(())),
        )
        .expect("listen")
        .start()
        .await
        .expect("worker starts");

    let bad_json = env.publish("user.created", b"{not json").await;
    let wrong_shape = env.publish("user.created", br#"{"id":"seven"}"#).await;
    let xml = Extra {
        content_type: Some("text/xml"),
        ..Extra::default()
    };
    let unsupported = env.publish_with("user.created", b"<id>7</id>", xml).await;
    let good = env.publish("user.created", br#"{"id":7}"#).await;

    let stats = wait_stats(
        &running,
        &queue,
        "three dead letters and one handled",
        |s| s.dead_lettered == 3 && s.handled == 1,
    )
    .await;
    assert_eq!((stats.decode_failures, stats.retried), (3, 0), "{stats:?}");
    assert_eq!(
        log.attempts(good),
        [1],
        "the good message reached the handler"
    );
    assert_eq!(
        log.count(),
        1,
        "undecodable messages never reach the handler"
    );

    let dead = env
        .take(&format!("dlq_{queue}"), 3, Duration::from_secs(5))
        .await;
    let reasons: BTreeMap<_, _> = dead
        .iter()
        .map(|d| (message_id(d), header(d, h::REASON).unwrap_or_default()))
        .collect();
    for (id, needle) in [
        (bad_json, "key must be a string"),
        (wrong_shape, "invalid type"),
        (unsupported, "unsupported content type"),
    ] {
        let reason = &reasons[&id];
        assert!(
            reason.starts_with("undecodable payload: ") && reason.contains(needle),
            "{reason:?} should mention {needle:?}"
        );
    }
    // Observe a bounded window: poison is never retried.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.broker.depth(&queue).await, 0);
    assert_eq!(
        running.queue_stats(&queue).await.map(|s| s.retried),
        Some(0)
    );
    env.finish(running, &delays()).await;
}

/// A decode error that quotes a 300 KB value (more than RabbitMQ's 128 KiB `frame_max`) is
/// cut to about 1 KiB in the dead letter's reason: the dead-letter copy fits in a frame, is
/// confirmed, and the worker goes on. Uncut, publishing that copy would close the connection
/// and the message would come back for ever.
#[actix_rt::test]
async fn a_huge_decode_error_is_cut_to_fit_the_dead_letter() {
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("huge_reason");
    let log = Arc::new(Log::default());
    let running = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            Listen::new(["user.created"])
                .expect("keys")
                .with_queue(queue.as_str()),
            scripted::<UserCreated, _>(&log, |_| Ok(())),
        )
        .expect("listen")
        .start()
        .await
        .expect("worker starts");
    let huge = format!(r#"{{"id":"{}"}}"#, "x".repeat(300_000));
    let poison = env.publish("user.created", huge.as_bytes()).await;
    let good = env.publish("user.created", br#"{"id":7}"#).await;

    let stats = wait_stats(&running, &queue, "the dead letter and the good one", |s| {
        s.dead_lettered == 1 && s.handled == 1
    })
    .await;
    assert_eq!(stats.reconnects, 0, "no connection was lost: {stats:?}");
    assert_eq!(log.attempts(good), [1]);
    let dead = env
        .take(&format!("dlq_{queue}"), 1, Duration::from_secs(5))
        .await;
    assert_eq!(message_id(&dead[0]), poison);
    let reason = header(&dead[0], h::REASON).unwrap_or_default();
    assert!(
        reason.starts_with("undecodable payload: json payload: invalid type"),
        "{}",
        &reason[..80]
    );
    assert!(reason.len() < 1_200, "reason is {} bytes", reason.len());
    assert!(
        reason.ends_with("more bytes cut)"),
        "{}",
        &reason[reason.len() - 40..]
    );
    env.finish(running, &delays()).await;
}
