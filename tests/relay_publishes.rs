//! The relay moves every committed row to the exchange exactly once and empties the table.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::{OutboxEvent, setup};
use actix_outbox_actors::Cleanup;
use common::broker::{TestBroker, assert_exactly_once};
use common::relay::{TestRelay, config};
use common::{TestDb, wait_for};
use sea_orm::TransactionTrait;

async fn emit_n(t: &TestDb, n: usize, key: &str) -> Vec<uuid::Uuid> {
    let events: Vec<OutboxEvent> = (0..n)
        .map(|i| OutboxEvent::json(key, &serde_json::json!({"n": i})).expect("event"))
        .collect();
    let txn = t.db.begin().await.expect("begin");
    let ids = actix_outbox::emit_many(&txn, events)
        .await
        .expect("emit_many");
    txn.commit().await.expect("commit");
    ids
}

/// 10,000 rows on PostgreSQL → 10,000 distinct messages in the bound queue, table empty.
#[actix_rt::test]
async fn ten_thousand_rows_arrive_exactly_once() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["user.*"]).await;
    let ids = emit_n(&t, 10_000, "user.created").await;

    let relay = TestRelay::start(&t.db, &broker.url, config(&broker.exchange));
    let seen = broker.drain(&queue, 10_000, Duration::from_secs(60)).await;
    assert_exactly_once(&seen, &ids);
    t.wait_outbox_empty("the outbox table to be empty", Duration::from_secs(10))
        .await;
    let stats = relay.stop().await;
    assert_eq!(stats.published, 10_000, "{stats:?}");
    assert_eq!(stats.refused + stats.parked, 0, "{stats:?}");
    assert_eq!(broker.depth(&queue).await, 0, "nothing more arrived");
    broker.cleanup().await;
    t.cleanup().await;
}

/// One relay with one batch in flight publishes in row order: the frames of a batch are
/// queued in order before any write is awaited, and batches follow one another.
#[actix_rt::test]
async fn one_relay_one_batch_at_a_time_keeps_row_order() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let ids = emit_n(&t, 2_000, "order.line").await;

    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange)
            .with_batch_size(300)
            .with_concurrency(1),
    );
    let seen = broker
        .drain_in_order(&queue, 2_000, Duration::from_secs(30))
        .await;
    let expected: Vec<String> = ids.iter().map(ToString::to_string).collect();
    if let Some(at) = seen.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!(
            "message {at} arrived out of order: got {}, expected {}",
            seen[at], expected[at]
        );
    }
    let stats = relay.stop().await;
    assert_eq!(stats.published, 2_000, "{stats:?}");
    broker.cleanup().await;
    t.cleanup().await;
}

/// Keep mode: rows stay with `sent_at` set instead of being deleted.
#[actix_rt::test]
async fn keep_mode_marks_rows_sent() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let ids = emit_n(&t, 1_000, "order.placed").await;

    let keep = Cleanup::Keep {
        retention: Duration::from_secs(3_600),
    };
    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange).with_cleanup(keep),
    );
    let seen = broker.drain(&queue, 1_000, Duration::from_secs(30)).await;
    assert_exactly_once(&seen, &ids);
    wait_for(
        "every row to be marked sent",
        Duration::from_secs(10),
        || async {
            (t.int("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL")
                .await
                == 1_000)
                .then_some(())
        },
    )
    .await;
    relay.stop().await;
    assert_eq!(
        t.int("SELECT count(*) FROM outbox").await,
        1_000,
        "rows kept"
    );
    broker.cleanup().await;
    t.cleanup().await;
}

/// SQLite: one relay drains the file the same way (polling; no NOTIFY).
#[actix_rt::test]
async fn sqlite_rows_arrive_exactly_once() {
    let t = TestDb::sqlite().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["user.created"]).await;
    let ids = emit_n(&t, 2_000, "user.created").await;

    let relay = TestRelay::start(&t.db, &broker.url, config(&broker.exchange));
    let seen = broker.drain(&queue, 2_000, Duration::from_secs(30)).await;
    assert_exactly_once(&seen, &ids);
    t.wait_outbox_empty("the SQLite outbox to be empty", Duration::from_secs(10))
        .await;
    relay.stop().await;
    broker.cleanup().await;
    t.cleanup().await;
}
