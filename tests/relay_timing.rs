//! When the relay publishes: future etas wait (NOTIFY wake-ups are in `relay_notify.rs`).
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::{OutboxEvent, setup};
use common::TestDb;
use common::broker::TestBroker;
use common::relay::{TestRelay, config};
use sea_orm::TransactionTrait;

/// A row with an eta 1.5 s ahead is not published before it, and is published within a
/// second after it even with a 60 s poll (the relay arms a timer for the next due row).
#[actix_rt::test]
async fn future_eta_waits_and_then_goes_out() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["report.due"]).await;
    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange).with_poll_interval(Duration::from_secs(60)),
    );
    // Let the relay finish its first (empty) batch, so the eta is what wakes it.
    common::wait_for(
        "the relay's first claim round",
        Duration::from_secs(10),
        || async { (relay.stats().await.rounds >= 1).then_some(()) },
    )
    .await;

    let eta = chrono::Utc::now() + chrono::TimeDelta::milliseconds(1_500);
    let event = OutboxEvent::json("report.due", &"q3")
        .expect("event")
        .with_eta(eta);
    let txn = t.db.begin().await.expect("begin");
    actix_outbox::emit_event(&txn, event).await.expect("emit");
    txn.commit().await.expect("commit");

    let early = broker
        .collect_for(&queue, Duration::from_millis(1_200))
        .await;
    assert!(
        early.is_empty(),
        "published {} message(s) before the eta",
        early.len()
    );
    let seen = broker.drain(&queue, 1, Duration::from_secs(3)).await;
    let arrived = chrono::Utc::now();
    assert_eq!(seen.len(), 1);
    assert!(arrived >= eta, "arrived at {arrived}, before the eta {eta}");
    assert!(
        arrived - eta < chrono::TimeDelta::milliseconds(1_500),
        "arrived {} ms after the eta",
        (arrived - eta).num_milliseconds()
    );
    relay.stop().await;
    broker.cleanup().await;
    t.cleanup().await;
}
