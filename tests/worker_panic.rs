//! A handler actor that panics: the attempt counts as failed, a factory-made actor is
//! replaced, and the worker (and the System) keeps running.
#![cfg(feature = "service-tests")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use actix_outbox_actors::{Listen, Worker};
use common::worker::{Log, WorkerEnv, delays, scripted, wait_stats};
use serde_json::Value;

fn panics_on_first_attempt(event: &actix_outbox::Event<Value>) -> actix_outbox::HandlerResult {
    if event.payload()["panic"] == true && event.attempt() == 1 {
        panic!("handler bug (expected by the test)");
    }
    Ok(())
}

/// The panicking delivery is retried (attempt 2 handled by a fresh actor from the factory)
/// and the messages published afterwards are all handled.
#[actix_rt::test]
async fn panicking_handler_is_restarted_and_its_message_retried() {
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("panicky");
    let log = Arc::new(Log::default());
    let running = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            Listen::new(["job.#"])
                .expect("keys")
                .with_queue(queue.as_str()),
            scripted::<Value, _>(&log, panics_on_first_attempt),
        )
        .expect("listen")
        .start()
        .await
        .expect("worker starts");

    let boom = env.publish("job.boom", br#"{"panic":true}"#).await;
    wait_stats(&running, &queue, "the panic to be noticed", |s| {
        s.panics == 1
    })
    .await;
    let mut later = Vec::new();
    for n in 0..5 {
        later.push(
            env.publish("job.ok", format!(r#"{{"n":{n}}}"#).as_bytes())
                .await,
        );
    }
    let stats = wait_stats(&running, &queue, "all six messages handled", |s| {
        s.handled == 6
    })
    .await;
    assert_eq!(log.attempts(boom), [1, 2], "retried after the panic");
    for id in later {
        assert_eq!(log.attempts(id), [1], "handled by the restarted actor");
    }
    assert_eq!(
        (stats.panics, stats.retried, stats.dead_lettered),
        (1, 1, 0),
        "{stats:?}"
    );
    assert!(stats.consuming);
    env.finish(running, &delays()).await;
}

/// A handler registered by address cannot be restarted: its message is requeued (not lost),
/// the consumer stops taking deliveries, and the rest of the System runs on.
#[actix_rt::test]
async fn panicking_address_handler_requeues_and_parks() {
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("fixed");
    let log = Arc::new(Log::default());
    let handler = scripted::<Value, _>(&log, panics_on_first_attempt)().start();
    let running = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            Listen::new(["job.#"])
                .expect("keys")
                .with_queue(queue.as_str()),
            handler,
        )
        .expect("listen")
        .start()
        .await
        .expect("worker starts");

    env.publish("job.boom", br#"{"panic":true}"#).await;
    let stats = wait_stats(&running, &queue, "the consumer to park", |s| {
        s.requeued == 1 && !s.consuming
    })
    .await;
    assert_eq!((stats.panics, stats.retried), (1, 0), "{stats:?}");
    wait_depth(&env, &queue, 1).await;
    env.finish(running, &delays()).await;
}

/// Waits until `queue` holds `n` ready messages (the requeued one, once the channel closed).
async fn wait_depth(env: &WorkerEnv, queue: &str, n: u32) {
    common::wait_for(
        "the message back in its queue",
        Duration::from_secs(10),
        || async { (env.broker.depth(queue).await == n).then_some(()) },
    )
    .await;
}
