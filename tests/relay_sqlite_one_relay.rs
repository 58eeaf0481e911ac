//! SQLite has no `SKIP LOCKED`, so two relays on one file would publish every row twice. The
//! second relay stands by on the file's relay lock and takes over when the first stops.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::{OutboxEvent, setup};
use common::broker::TestBroker;
use common::relay::{TestRelay, config};
use common::{TestDb, wait_for};

async fn emit(t: &TestDb, n: usize) -> Vec<uuid::Uuid> {
    let events: Vec<OutboxEvent> = (0..n)
        .map(|i| OutboxEvent::json("item.created", &i).expect("event"))
        .collect();
    actix_outbox::emit_many(&t.db, events)
        .await
        .expect("emit_many")
}

/// Two relays on one SQLite file: 3,000 rows (in batches of 100, so the drain spans many
/// polls of both) reach the queue exactly once, the second relay standing by; once the first
/// stops, the second drains the next rows. Before the lock, both relays claimed and published
/// the same rows.
#[actix_rt::test]
async fn a_second_relay_on_one_sqlite_file_stands_by() {
    let t = TestDb::sqlite().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let relay_config = || {
        config(&broker.exchange)
            .with_batch_size(100)
            .with_poll_interval(Duration::from_millis(100))
    };
    let first = TestRelay::start(&t.db, &broker.url, relay_config());
    wait_for(
        "the first relay's first round",
        Duration::from_secs(10),
        || async { (first.stats().await.rounds >= 1).then_some(()) },
    )
    .await;
    // Its own pool, as a second process would have.
    let other = TestDb::reopen_sqlite(&t.name).await;
    let second = TestRelay::start(&other.db, &broker.url, relay_config());
    wait_for(
        "the second relay to stand by",
        Duration::from_secs(10),
        || async { second.stats().await.standby.then_some(()) },
    )
    .await;

    let ids = emit(&t, 3_000).await;
    broker
        .drain_exactly(&queue, &ids, Duration::from_secs(60))
        .await;
    let stats = second.stats().await;
    assert_eq!(
        (stats.published, stats.rounds),
        (0, 0),
        "the second relay stood by: {stats:?}"
    );
    assert!(stats.standby);

    let first_stats = first.stop().await;
    assert_eq!(first_stats.published, 3_000, "{first_stats:?}");
    wait_for(
        "the second relay to take over",
        Duration::from_secs(10),
        || async { (!second.stats().await.standby).then_some(()) },
    )
    .await;
    let ids = emit(&t, 200).await;
    broker
        .drain_exactly(&queue, &ids, Duration::from_secs(30))
        .await;
    wait_for(
        "the second relay's counters",
        Duration::from_secs(10),
        || async { (second.stats().await.published == 200).then_some(()) },
    )
    .await;
    second.stop().await;
    broker.cleanup().await;
    other.close().await;
    t.cleanup().await;
}
