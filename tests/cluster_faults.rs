//! The outbox on a three-node RabbitMQ cluster with quorum queues (three replicas): a node
//! goes away under the relay or under a consumer's queue, and every event is still handled.
//!
//! These tests need the cluster of `scripts/cluster up` (its URLs in `AMQP_CLUSTER_URLS`) as
//! well as PostgreSQL, so they are `#[ignore]`d in the single-node suite; `scripts/test` runs
//! them after it: `cargo test --all-features --test cluster_faults -- --ignored`. Each prints
//! one `cluster:` line with what the fault cost (duplicates, longest stall), the figures of
//! docs/production.md.
#![cfg(feature = "service-tests")]
#![allow(missing_docs)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_outbox::{Outbox, OutboxEvent};
use actix_outbox_actors::lapin::{Connection, ConnectionProperties};
use actix_outbox_actors::{
    BrokerConfig, ConnectionSupervisor, GetBrokerState, Listen, RunningWorker, StopBroker,
    TopologyMode, Worker, WorkerConfig,
};
use common::cluster::{
    NodeDown, StallWatch, await_count_measuring_stall, cluster_urls, ctl, leader_of, node_name,
    urls_from,
};
use common::relay::{TestRelay, config};
use common::worker::{Log, scripted};
use common::{TestDb, unique, wait_for};
use serde_json::Value;

const EVENTS: usize = 3000;

/// Emits `n` events, 500 per transaction.
async fn emit(db: &sea_orm::DatabaseConnection, n: usize) {
    let outbox = Outbox::default();
    outbox.setup(db).await.expect("setup");
    for start in (0..n).step_by(500) {
        let events = (start..n.min(start + 500))
            .map(|i| OutboxEvent::json("cluster.event", &i).expect("event"));
        outbox.emit_many(db, events).await.expect("emit");
    }
}

/// Logs to the test's output when `RUST_LOG` asks (`--nocapture` shows them).
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

fn supervisor(urls: &str) -> actix::Addr<ConnectionSupervisor> {
    let config = BrokerConfig::new(urls)
        .expect("urls")
        .with_reconnect(Duration::from_millis(50), Duration::from_secs(1));
    ConnectionSupervisor::start_supervised(config).expect("supervisor")
}

fn worker_config(exchange: &str) -> WorkerConfig {
    WorkerConfig::default()
        .with_exchange(exchange)
        .with_retry_delays(["1s"])
        .with_prefetch(50)
}

/// Starts a worker on `broker` whose one handler records into `log`, then does `behave`.
async fn start_worker<F>(
    broker: &actix::Addr<ConnectionSupervisor>,
    config: WorkerConfig,
    listen: Listen,
    log: &Arc<Log>,
    behave: F,
) -> RunningWorker
where
    F: Fn(&actix_outbox::Event<Value>) -> actix_outbox::HandlerResult + Send + Sync + 'static,
{
    Worker::new(broker.clone(), config)
        .expect("config")
        .listen(listen, scripted::<Value, _>(log, behave))
        .expect("listen")
        .start()
        .await
        .expect("worker")
}

fn distinct(log: &Log) -> usize {
    log.all().iter().map(|s| s.id).collect::<HashSet<_>>().len()
}

/// Stops relay, worker and connection, then checks that nothing was left behind: the queue
/// and its dead-letter queue hold no message (a copy still there would be handled again, or
/// be an event that failed).
async fn stop_all(
    running: RunningWorker,
    broker: actix::Addr<ConnectionSupervisor>,
    relay: TestRelay,
    queue: &str,
) {
    let _ = relay.stop().await;
    running.stop().await;
    let _ = broker.send(StopBroker).await;
    let conn = Connection::connect(&cluster_urls()[0], ConnectionProperties::default())
        .await
        .expect("amqp");
    for q in [queue.to_owned(), format!("dlq_{queue}")] {
        let channel = conn.create_channel().await.expect("channel");
        let passive = actix_outbox_actors::lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let left = channel
            .queue_declare(q.as_str().into(), passive, Default::default())
            .await
            .expect("the queue exists")
            .message_count();
        assert_eq!(left, 0, "{q} is empty after the run");
    }
    let _ = conn.close(200, "done".into()).await;
}

/// The node the relay publishes through stops while it drains 3,000 rows: the relay's
/// supervisor moves to the next node, the rows still in the table go out from there, and every
/// event is handled (at least once).
#[actix_rt::test]
#[ignore = "needs the three-node cluster of scripts/cluster (scripts/test runs it)"]
async fn the_relay_follows_the_cluster_when_its_node_stops_mid_drain() {
    logs();
    let _ = cluster_urls();
    let t = TestDb::postgres().await;
    let (exchange, queue) = (unique("cl_ex"), unique("cl_q"));
    let log = Arc::new(Log::default());
    // The worker starts on node 2, the relay on node 1: only the relay loses its node.
    let worker_broker = supervisor(&urls_from(1));
    let running = start_worker(
        &worker_broker,
        worker_config(&exchange),
        Listen::new(["#"]).expect("key").with_queue(queue.as_str()),
        &log,
        |_| Ok(()),
    )
    .await;
    emit(&t.db, EVENTS).await;
    let relay = TestRelay::start(&t.db, &urls_from(0), config(&exchange));
    let deadline = Instant::now() + Duration::from_secs(60);
    while relay.stats().await.published < 500 {
        assert!(Instant::now() < deadline, "500 published within 60 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let down = NodeDown::stop(0);
    let stall = await_count_measuring_stall(
        "every event handled after the relay's node stopped",
        EVENTS,
        Duration::from_secs(120),
        || distinct(&log),
    )
    .await;
    t.wait_outbox_empty("the table drained", Duration::from_secs(30))
        .await;
    let state = wait_for(
        "the relay connected to another node",
        Duration::from_secs(10),
        || async {
            let state = relay.broker.send(GetBrokerState).await.expect("supervisor");
            (state.connected && state.node != 0).then_some(state)
        },
    )
    .await;
    assert!(state.generation >= 2, "it reconnected: {state:?}");
    down.start();
    let duplicates = log.count() - EVENTS;
    assert!(
        duplicates <= 1000,
        "at most one batch in flight sent twice: {duplicates}"
    );
    eprintln!(
        "cluster: relay node stopped mid-drain: {EVENTS} of {EVENTS} handled, {duplicates} duplicates, longest stall {:.2} s",
        stall.as_secs_f64()
    );
    stop_all(running, worker_broker, relay, &queue).await;
    t.cleanup().await;
}

/// The node leading a consumer's quorum queue — and holding the consumer's connection —
/// stops while 3,000 messages wait in the queue: a new leader is elected among the two
/// replicas left, the worker reconnects to another node, and every message is handled; the
/// unacked ones are delivered again (at least once).
#[actix_rt::test]
#[ignore = "needs the three-node cluster of scripts/cluster (scripts/test runs it)"]
async fn the_consumer_follows_its_queue_when_the_leader_stops_mid_consume() {
    logs();
    let urls = cluster_urls();
    let t = TestDb::postgres().await;
    let (exchange, queue) = (unique("cl_ex"), unique("cl_q"));
    let log = Arc::new(Log::default());
    let listen = || Listen::new(["#"]).expect("key").with_queue(queue.as_str());
    // Declare the queue first (on node 1), fill it through the relay, then find its leader.
    let topology = actix_outbox_actors::worker::topology(&worker_config(&exchange), &[listen()])
        .expect("topology");
    let conn = Connection::connect(&urls[0], ConnectionProperties::default())
        .await
        .expect("amqp");
    let channel = conn.create_channel().await.expect("channel");
    topology
        .apply(&channel, TopologyMode::Declare)
        .await
        .expect("declare the topology");
    emit(&t.db, EVENTS).await;
    let relay = TestRelay::start(&t.db, &urls_from(0), config(&exchange));
    t.wait_outbox_empty("the relay sent everything", Duration::from_secs(60))
        .await;
    let leader = leader_of(&queue, 0);

    // A slow handler (2 ms each), so the consume is well under way when the leader goes.
    let broker = supervisor(&urls_from(leader));
    let running = start_worker(&broker, worker_config(&exchange), listen(), &log, |_| {
        std::thread::sleep(Duration::from_millis(2));
        Ok(())
    })
    .await;
    assert_eq!(
        broker.send(GetBrokerState).await.expect("state").node,
        0,
        "on the leader"
    );
    wait_for("500 handled", Duration::from_secs(60), || async {
        (log.count() >= 500).then_some(())
    })
    .await;
    let down = NodeDown::stop(leader);
    let stall = await_count_measuring_stall(
        "every message handled after the leader stopped",
        EVENTS,
        Duration::from_secs(120),
        || distinct(&log),
    )
    .await;
    let new_leader = leader_of(&queue, (leader + 1) % 3);
    assert_ne!(new_leader, leader, "a new leader");
    down.start();
    let duplicates = log.count() - EVENTS;
    assert!(
        duplicates <= 50,
        "at most the prefetch delivered twice: {duplicates}"
    );
    eprintln!(
        "cluster: queue leader stopped mid-consume: {EVENTS} of {EVENTS} handled, {duplicates} duplicates, longest stall {:.2} s",
        stall.as_secs_f64()
    );
    let _ = conn.close(200, "done".into()).await;
    stop_all(running, broker, relay, &queue).await;
    t.cleanup().await;
}

/// Declares what `listen` on `exchange` needs through node 1 (so leaders can be looked up
/// before any worker runs); returns the connection, to close at the end.
async fn declare(exchange: &str, listen: Listen, delays: &[&str]) -> Connection {
    let config = worker_config(exchange).with_retry_delays(delays.iter().copied());
    let topology = actix_outbox_actors::worker::topology(&config, &[listen]).expect("topology");
    let conn = Connection::connect(&cluster_urls()[0], ConnectionProperties::default())
        .await
        .expect("amqp");
    let channel = conn.create_channel().await.expect("channel");
    topology
        .apply(&channel, TopologyMode::Declare)
        .await
        .expect("declare the topology");
    conn
}

/// Every event fails its first attempt and waits 3 s in the delay queue; the node leading
/// that delay queue — and holding the worker's connection — stops while they wait. The
/// retries survive on the other replicas (quorum delay queues dead-letter at least once) and
/// every event is handled at its second attempt.
#[actix_rt::test]
#[ignore = "needs the three-node cluster of scripts/cluster (scripts/test runs it)"]
async fn retries_waiting_in_a_delay_queue_survive_a_node_stop() {
    const N: usize = 500;
    logs();
    let t = TestDb::postgres().await;
    let (exchange, queue) = (unique("cl_ex"), unique("cl_q"));
    let delay_queue = format!("{exchange}.retry.3000ms");
    let listen = || Listen::new(["#"]).expect("key").with_queue(queue.as_str());
    let conn = declare(&exchange, listen(), &["3s"]).await;
    let leader = leader_of(&delay_queue, 0);
    let log = Arc::new(Log::default());
    let broker = supervisor(&urls_from(leader));
    let running = start_worker(
        &broker,
        worker_config(&exchange).with_retry_delays(["3s"]),
        listen(),
        &log,
        |event| match event.attempt() {
            1 => Err(actix_outbox::HandlerError::retry("first attempt fails")),
            _ => Ok(()),
        },
    )
    .await;
    emit(&t.db, N).await;
    let relay = TestRelay::start(&t.db, &urls_from(0), config(&exchange));
    wait_for(
        "every event retried once",
        Duration::from_secs(30),
        || async {
            let stats = running.queue_stats(&queue).await?;
            (stats.retried == N as u64).then_some(())
        },
    )
    .await;
    let down = NodeDown::stop(leader);
    let second = || {
        let all = log.all();
        all.iter()
            .filter(|s| s.attempt == 2)
            .map(|s| s.id)
            .collect::<HashSet<_>>()
            .len()
    };
    let stall = await_count_measuring_stall(
        "every retry handled after the delay queue's leader stopped",
        N,
        Duration::from_secs(120),
        second,
    )
    .await;
    down.start();
    let firsts = log.all().iter().filter(|s| s.attempt == 1).count();
    let duplicates = log.count() - firsts - N;
    eprintln!(
        "cluster: delay queue leader stopped with {N} retries waiting: {N} of {N} handled at attempt 2, {duplicates} duplicate second attempts, longest stall {:.2} s",
        stall.as_secs_f64()
    );
    let _ = conn.close(200, "done".into()).await;
    stop_all(running, broker, relay, &queue).await;
    t.cleanup().await;
}

/// All three nodes restarted one after the other while the application emits 500 events a
/// second: each node is stopped only once the others hold a quorum of every queue without it
/// (`rabbitmq-queues check_if_node_is_quorum_critical`), as an operator's rolling upgrade
/// would. Every event emitted is handled.
#[actix_rt::test]
#[ignore = "needs the three-node cluster of scripts/cluster (scripts/test runs it)"]
async fn a_rolling_restart_under_steady_load_loses_nothing() {
    logs();
    let t = TestDb::postgres().await;
    Outbox::default().setup(&t.db).await.expect("setup");
    let (exchange, queue) = (unique("cl_ex"), unique("cl_q"));
    let log = Arc::new(Log::default());
    let broker = supervisor(&urls_from(1));
    let running = start_worker(
        &broker,
        worker_config(&exchange),
        Listen::new(["#"]).expect("key").with_queue(queue.as_str()),
        &log,
        |_| Ok(()),
    )
    .await;
    let relay = TestRelay::start(&t.db, &urls_from(0), config(&exchange));

    // 50 events every 100 ms, each batch in one transaction.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let emitter = {
        let (db, stop) = (t.db.clone(), stop.clone());
        actix_rt::spawn(async move {
            let mut emitted = 0usize;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                tick.tick().await;
                let events =
                    (0..50).map(|i| OutboxEvent::json("cluster.steady", &i).expect("event"));
                Outbox::default()
                    .emit_many(&db, events)
                    .await
                    .expect("emit");
                emitted += 50;
            }
            emitted
        })
    };
    let started = Instant::now();
    let mut stalls = Vec::new();
    for node in 0..3 {
        wait_for(
            "a quorum without the node",
            Duration::from_secs(60),
            || async move {
                let safe = std::process::Command::new("timeout")
                    .args(["60", "rabbitmq-queues", "-q", "-n", &node_name(node)])
                    .arg("check_if_node_is_quorum_critical")
                    .output()
                    .is_ok_and(|o| o.status.success());
                safe.then_some(())
            },
        )
        .await;
        let watch = {
            let log = log.clone();
            StallWatch::start(move || log.count())
        };
        let down = NodeDown::stop(node);
        tokio::time::sleep(Duration::from_secs(3)).await; // the outage itself
        down.start();
        stalls.push(watch.finish().await);
    }
    let rolled = started.elapsed();
    let stall = stalls.iter().max().copied().unwrap_or_default();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let emitted = emitter.await.expect("emitter");
    wait_for(
        "every event emitted during the rolling restart handled",
        Duration::from_secs(120),
        || async { (distinct(&log) >= emitted).then_some(()) },
    )
    .await;
    t.wait_outbox_empty("the table drained", Duration::from_secs(30))
        .await;
    let duplicates = log.count() - emitted;
    eprintln!(
        "cluster: rolling restart of 3 nodes in {:.1} s under 500 events/s: {emitted} of {emitted} handled, {duplicates} duplicates, longest stall {:.2} s (per node {:?})",
        rolled.as_secs_f64(),
        stall.as_secs_f64(),
        stalls
            .iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
    );
    let _ = ctl(0, &["list_queues", "name"]); // the cluster answers again
    stop_all(running, broker, relay, &queue).await;
    t.cleanup().await;
}
