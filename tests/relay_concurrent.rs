//! Several relays drain one backlog side by side (`SKIP LOCKED`): nothing twice, nothing lost.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::{OutboxEvent, setup};
use common::TestDb;
use common::broker::{TestBroker, assert_exactly_once};
use common::relay::{TestRelay, config};
use sea_orm::TransactionTrait;

async fn drain_with(relays: usize) {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let events: Vec<OutboxEvent> = (0..20_000)
        .map(|i| OutboxEvent::json("bulk.item", &i).expect("event"))
        .collect();
    let txn = t.db.begin().await.expect("begin");
    let ids = actix_outbox::emit_many(&txn, events).await.expect("emit");
    txn.commit().await.expect("commit");

    let running: Vec<TestRelay> = (0..relays)
        .map(|_| {
            TestRelay::start(
                &t.db,
                &broker.url,
                config(&broker.exchange).with_batch_size(200),
            )
        })
        .collect();
    let seen = broker.drain(&queue, 20_000, Duration::from_secs(90)).await;
    assert_exactly_once(&seen, &ids);
    t.wait_outbox_empty("the outbox table to be empty", Duration::from_secs(10))
        .await;
    let mut busy = 0;
    let mut total = 0;
    for relay in running {
        let stats = relay.stop().await;
        busy += usize::from(stats.published > 0);
        total += stats.published;
    }
    assert_eq!(total, 20_000, "published counts add up");
    assert!(
        busy >= 2,
        "the work was shared: only {busy} of {relays} relays published"
    );
    assert!(
        broker
            .collect_for(&queue, Duration::from_millis(300))
            .await
            .is_empty()
    );
    broker.cleanup().await;
    t.cleanup().await;
}

/// Two relays, 20,000 rows.
#[actix_rt::test]
async fn two_relays_share_a_backlog() {
    drain_with(2).await;
}

/// Four relays, 20,000 rows.
#[actix_rt::test]
async fn four_relays_share_a_backlog() {
    drain_with(4).await;
}
