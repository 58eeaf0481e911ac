//! The relay survives the broker going away mid-drain: connections force-closed, the broker
//! stopped and started. Nothing is lost; duplicates are limited to batches in flight.
//!
//! These tests disturb every connection to the broker, so they serialise on a lock and live
//! in their own test binary (cargo runs test binaries one after another).
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::{OutboxEvent, setup};
use common::broker::{TestBroker, assert_none_lost};
use common::faults::{outage, rabbitmqctl};
use common::relay::{TestRelay, config};
use common::{TestDb, wait_for};
use sea_orm::TransactionTrait;

static BROKER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ROWS: usize = 20_000;
/// Small batches, one at a time: the drain must last longer than `rabbitmqctl` takes to start
/// and inject the fault (on an idle machine a default relay drains 20,000 rows in about a
/// second, before the fault lands, and the test would prove nothing).
const BATCH: u32 = 50;

/// Emits the backlog, starts a relay, waits until it is mid-drain, injects `fault`, then
/// checks every row arrived and the table is empty. Returns the duplicates.
async fn drain_through<F, Fut>(fault: F) -> usize
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let events: Vec<OutboxEvent> = (0..ROWS)
        .map(|i| OutboxEvent::json("fault.item", &i).expect("event"))
        .collect();
    let txn = t.db.begin().await.expect("begin");
    let ids = actix_outbox::emit_many(&txn, events).await.expect("emit");
    txn.commit().await.expect("commit");

    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange)
            .with_batch_size(BATCH)
            .with_concurrency(1),
    );
    wait_for(
        "the relay to be mid-drain",
        Duration::from_secs(30),
        || async { (relay.stats().await.published >= 2_000).then_some(()) },
    )
    .await;
    fault().await;
    t.wait_outbox_empty(
        "the relay to finish the drain after the fault",
        Duration::from_secs(90),
    )
    .await;
    let stats = relay.stop().await;
    broker.reconnect().await;
    let depth = broker.depth(&queue).await as usize;
    let seen = broker.drain(&queue, depth, Duration::from_secs(60)).await;
    let duplicates = assert_none_lost(&seen, &ids);
    assert!(stats.errors >= 1, "the relay noticed the fault: {stats:?}");
    assert!(
        duplicates <= 2 * BATCH as usize, // the batch in flight, twice at most
        "{duplicates} duplicates: more than the batches in flight could explain ({stats:?})"
    );
    eprintln!("fault survived: {ROWS} rows, 0 lost, {duplicates} duplicates, {stats:?}");
    broker.cleanup().await;
    t.cleanup().await;
    duplicates
}

/// `rabbitmqctl close_all_connections` mid-drain: the relay reconnects by itself.
#[actix_rt::test]
async fn connections_force_closed_mid_drain() {
    let _serial = BROKER_LOCK.lock().await;
    drain_through(|| async {
        rabbitmqctl(&["close_all_connections", "actix-outbox fault test"]).await;
    })
    .await;
}

/// The broker stopped for ~5 s and started again mid-drain (`stop_app` / `start_app`).
#[actix_rt::test]
async fn broker_restarted_mid_drain() {
    let _serial = BROKER_LOCK.lock().await;
    drain_through(|| async {
        rabbitmqctl(&["stop_app"]).await;
        outage(Duration::from_secs(5)).await;
        rabbitmqctl(&["start_app"]).await;
        rabbitmqctl(&["await_startup"]).await;
    })
    .await;
}
