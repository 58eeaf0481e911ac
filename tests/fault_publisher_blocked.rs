//! A broker that blocks publishers (a memory or disk alarm) blocks each connection that
//! publishes, and everything else on that connection waits too, acks included. With the relay
//! and the worker on connections of their own (one `ConnectionSupervisor` each, as the
//! examples do), the worker keeps consuming and acking while the relay's publishes wait for
//! the alarm to clear. Raises a broker-wide alarm: alone in its test binary.
#![cfg(feature = "service-tests")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix_outbox::setup;
use actix_outbox_actors::{Listen, Worker};
use common::TestDb;
use common::faults::DiskAlarm;
use common::relay::{TestRelay, config};
use common::worker::{Log, WorkerEnv, delays, scripted};
use serde_json::Value;

const QUEUED: usize = 300;

/// 300 messages are queued; the alarm is raised and the relay publishes a row (its
/// connection is now blocked); the worker, on its own connection, handles all 300 while the
/// alarm lasts (prefetch 5: it needs its acks to reach the broker to get more). Once the alarm
/// clears, the relay's row arrives too.
#[actix_rt::test]
async fn consumers_keep_acking_while_the_relay_is_blocked() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("blocked");
    let log = Arc::new(Log::default());
    let running = Worker::new(env.supervisor.clone(), env.config().with_prefetch(5))
        .expect("config")
        .listen(
            Listen::new(["job.#"])
                .expect("keys")
                .with_queue(queue.as_str()),
            scripted::<Value, _>(&log, |_| {
                std::thread::sleep(Duration::from_millis(5)); // a handler's work
                Ok(())
            }),
        )
        .expect("listen")
        .start()
        .await
        .expect("worker starts");
    // The relay's own supervisor: its own connection.
    let relay = TestRelay::start(&t.db, &env.broker.url, config(&env.broker.exchange));
    let ids = env.publish_many("job.run", QUEUED).await;
    let alarm = DiskAlarm::raise().await;
    let row = actix_outbox::emit(&t.db, "job.from_outbox", &1)
        .await
        .expect("emit");
    log.wait_count(
        "the worker to handle every queued message while the alarm lasts",
        QUEUED,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        log.attempts(row).is_empty(),
        "the relay's publish waited for the alarm"
    );
    alarm.clear().await;
    log.wait_count(
        "the relay's row, once the alarm cleared",
        QUEUED + 1,
        Duration::from_secs(30),
    )
    .await;
    for id in ids.iter().chain([&row]) {
        assert_eq!(log.attempts(*id), [1], "{id} handled once");
    }
    relay.stop().await;
    env.finish(running, &delays()).await;
    t.cleanup().await;
}
