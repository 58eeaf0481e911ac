//! Least-privilege mode: with the topology provisioned by an administrator, a relay and a
//! worker run in check-only mode under broker users holding exactly the permissions that
//! `docs/production.md` lists — and events still flow, retry and dead-letter.
#![cfg(feature = "service-tests")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix_outbox::{HandlerError, setup};
use actix_outbox_actors::{
    BrokerConfig, ConnectionSupervisor, Listen, StopBroker, TopologyMode, Worker,
};
use common::faults::rabbitmqctl;
use common::relay::{TestRelay, config};
use common::worker::{Log, WorkerEnv, delays, scripted};
use common::{TestDb, unique};
use serde_json::Value;

/// A broker user with `configure`, `write`, `read` permission patterns on vhost `/`.
struct TempUser {
    name: String,
    url: String,
}

impl TempUser {
    async fn create(configure: &str, write: &str, read: &str, base_url: &str) -> Self {
        let name = unique("lp");
        let password = unique("pw");
        rabbitmqctl(&["add_user", &name, &password]).await;
        rabbitmqctl(&["set_permissions", "-p", "/", &name, configure, write, read]).await;
        let host = base_url.rsplit_once('@').map_or(base_url, |(_, h)| h);
        let url = format!("amqp://{name}:{password}@{host}");
        Self { name, url }
    }

    async fn delete(self) {
        rabbitmqctl(&["delete_user", &self.name]).await;
    }
}

/// Relay user: write on the exchange only. Worker user: write on the dead-letter and delay
/// exchanges, read on its queue. Nothing may be declared by either.
#[actix_rt::test]
async fn relay_and_worker_run_with_the_documented_permissions() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("lp");
    let exchange = env.broker.exchange.clone();
    let log = Arc::new(Log::default());
    let behave = |event: &actix_outbox::Event<Value>| match event.payload()["kind"].as_str() {
        Some("flaky") if event.attempt() == 1 => Err(HandlerError::failed("first try fails")),
        Some("bad") => Err(HandlerError::reject("never valid")),
        _ => Ok(()),
    };

    // The administrator provisions everything once (a worker in Declare mode), then stops.
    let admin = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            Listen::new(["lp.*"])
                .expect("keys")
                .with_queue(queue.as_str()),
            scripted::<Value, _>(&log, behave),
        )
        .expect("listen")
        .start()
        .await
        .expect("admin declares the topology");
    admin.stop().await;

    let escaped = regex_escape(&exchange);
    let relay_user = TempUser::create("^$", &format!("^{escaped}$"), "^$", &env.broker.url).await;
    let worker_user = TempUser::create(
        "^$",
        &format!("^{escaped}\\.(dlx|retry\\..*)$"),
        &format!("^{}$", regex_escape(&queue)),
        &env.broker.url,
    )
    .await;

    let worker_broker = ConnectionSupervisor::start_supervised(
        BrokerConfig::new(worker_user.url.as_str()).expect("url"),
    )
    .expect("supervisor");
    let running = Worker::new(
        worker_broker.clone(),
        env.config().with_topology(TopologyMode::CheckOnly),
    )
    .expect("config")
    .listen(
        Listen::new(["lp.*"])
            .expect("keys")
            .with_queue(queue.as_str()),
        scripted::<Value, _>(&log, behave),
    )
    .expect("listen")
    .start()
    .await
    .expect("the least-privilege worker starts: passive checks need no permission");
    let relay = TestRelay::start(
        &t.db,
        &relay_user.url,
        config(&exchange).with_topology(TopologyMode::CheckOnly),
    );

    let mut ids = Vec::new();
    for kind in ["ok", "flaky", "bad"] {
        let id = actix_outbox::emit(&t.db, "lp.event", &serde_json::json!({"kind": kind}))
            .await
            .expect("emit");
        ids.push(id);
    }
    // ok once, flaky twice (retried through a delay exchange), bad once (then dead-lettered).
    log.wait_count(
        "all deliveries under least privilege",
        4,
        Duration::from_secs(20),
    )
    .await;
    let dead = env
        .take(&format!("dlq_{queue}"), 1, Duration::from_secs(10))
        .await;
    assert_eq!(
        dead.len(),
        1,
        "the rejected event reached the dead-letter queue"
    );
    // The second delivery of the flaky event is its retry copy (attempt 2), not a redelivery
    // after a publish refused for lack of permission.
    assert_eq!(
        log.attempts(ids[1]),
        [1, 2],
        "flaky: retried through its delay exchange"
    );
    let worker_stats = running.stats().await;
    let worker_stats = worker_stats.get(&queue).expect("the queue's stats");
    assert_eq!(
        (
            worker_stats.retried,
            worker_stats.requeued,
            worker_stats.unsettled,
            worker_stats.reconnects
        ),
        (1, 0, 0, 0),
        "{worker_stats:?}"
    );
    t.wait_outbox_empty("the outbox table to be empty", Duration::from_secs(10))
        .await;
    let stats = relay.stop().await;
    assert_eq!((stats.published, stats.errors), (3, 0), "{stats:?}");
    running.stop().await;
    let _ = worker_broker.send(StopBroker).await;
    relay_user.delete().await;
    worker_user.delete().await;
    env.cleanup(&delays()).await;
    t.cleanup().await;
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '.' | '-' | ':' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}
