//! NOTIFY wakes the relay at once when an emitting transaction commits. Alone in its test
//! binary on purpose: every test's outbox table is called `outbox`, and so is its NOTIFY
//! channel, so a test running beside this one could wake its relay and hide a broken trigger.
#![cfg(feature = "service-tests")]

mod common;

use std::time::{Duration, Instant};

use actix_outbox::setup;
use common::TestDb;
use common::broker::TestBroker;
use common::relay::{TestRelay, config};
use sea_orm::{ConnectionTrait, TransactionTrait};

/// With a 60 s poll, an event emitted after a business row in the same transaction reaches
/// the queue in well under a second: the commit's NOTIFY wakes the relay.
#[actix_rt::test]
async fn notify_wakes_the_relay_on_commit() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    t.db.execute_unprepared("CREATE TABLE users (id BIGINT PRIMARY KEY)")
        .await
        .expect("business table");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["user.created"]).await;
    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange).with_poll_interval(Duration::from_secs(60)),
    );
    common::wait_for(
        "the relay's first claim round",
        Duration::from_secs(10),
        || async { (relay.stats().await.rounds >= 1).then_some(()) },
    )
    .await;
    // The LISTEN connection needs a moment after start; give it a bounded chance by emitting
    // a first event and waiting for it (NOTIFY or the start-up batch delivers it).
    for round in 0..3 {
        let txn = t.db.begin().await.expect("begin");
        txn.execute_unprepared(&format!("INSERT INTO users VALUES ({round})"))
            .await
            .expect("business row first");
        actix_outbox::emit(&txn, "user.created", &round)
            .await
            .expect("emit");
        let committed = Instant::now();
        txn.commit().await.expect("commit");
        broker.drain(&queue, 1, Duration::from_secs(5)).await;
        let latency = committed.elapsed();
        if round > 0 {
            assert!(
                latency < Duration::from_millis(900),
                "round {round}: commit → queue took {latency:?} (NOTIFY did not wake the relay)"
            );
        }
    }
    relay.stop().await;
    broker.cleanup().await;
    t.cleanup().await;
}
