//! Rows that break the publishing channel or connection never loop forever and never hold up
//! the rows behind them: one whose properties exceed the connection's `frame_max` is parked
//! before it is sent (RabbitMQ would close the whole connection); one that the broker refuses
//! by closing the channel for a reason the relay cannot check beforehand is found by
//! publishing the batch's rows one at a time, charged an attempt per break, and parked.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::outbox_message::{Column, Entity};
use actix_outbox::{OutboxEvent, setup};
use common::broker::TestBroker;
use common::faults::rabbitmqctl;
use common::relay::{TestRelay, config};
use common::{TestDb, wait_for};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};
use uuid::Uuid;

/// Puts RabbitMQ's `max_message_size` back to its default (128 MiB) when dropped, also when
/// the test fails: other test binaries run against the same broker afterwards.
struct RestoreMaxMessageSize;

impl Drop for RestoreMaxMessageSize {
    fn drop(&mut self) {
        let restored = std::process::Command::new("timeout")
            .args(["60", "rabbitmqctl", "eval"])
            .arg("application:set_env(rabbit, max_message_size, 134217728).")
            .status();
        if !matches!(restored, Ok(s) if s.success()) {
            eprintln!("could not restore the broker's max_message_size: {restored:?}");
        }
    }
}

/// Emits 10 small rows, `big`, and 10 more small rows in one transaction; returns the small
/// rows' ids and `big`'s.
async fn emit_between_small_rows(t: &TestDb, big: OutboxEvent) -> (Vec<Uuid>, Uuid) {
    let txn = t.db.begin().await.expect("begin");
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(
            actix_outbox::emit(&txn, "user.created", &n)
                .await
                .expect("emit"),
        );
    }
    let big = actix_outbox::emit_event(&txn, big).await.expect("emit");
    for n in 10..20 {
        ids.push(
            actix_outbox::emit(&txn, "user.created", &n)
                .await
                .expect("emit"),
        );
    }
    txn.commit().await.expect("commit");
    (ids, big)
}

/// Waits until the row `id` is parked and returns it.
async fn parked(t: &TestDb, id: Uuid, within: Duration) -> actix_outbox::outbox_message::Model {
    wait_for("the poison row to be parked", within, || async {
        Entity::find()
            .filter(Column::MessageId.eq(id))
            .one(&t.db)
            .await
            .expect("read")
            .filter(|r| r.parked_at.is_some())
    })
    .await
}

/// A 200 KB header (RabbitMQ's `frame_max` is 128 KiB) is parked at once with the reason,
/// charged once; the 20 rows around it are delivered exactly once.
#[actix_rt::test]
async fn headers_over_frame_max_are_parked_before_publishing() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let big = OutboxEvent::json("user.created", &"big")
        .expect("event")
        .with_header("trace", "x".repeat(200_000));
    let (ids, big) = emit_between_small_rows(&t, big).await;

    let relay = TestRelay::start(&t.db, &broker.url, config(&broker.exchange));
    let seen = broker
        .drain(&queue, ids.len(), Duration::from_secs(10))
        .await;
    common::broker::assert_exactly_once(&seen, &ids);
    let row = parked(&t, big, Duration::from_secs(10)).await;
    let stats = relay.stop().await;
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("frame_max")),
        "{:?}",
        row.last_error
    );
    assert_eq!(row.attempts, 1, "parked on the first look");
    assert_eq!(stats.errors, 0, "no connection was lost over it: {stats:?}");
    broker.cleanup().await;
    t.cleanup().await;
}

/// The broker's `max_message_size` lowered to 1 MiB behind the relay's back (its own limit
/// left at the default): a 2 MiB row makes the broker close the channel under its batch. The
/// relay then publishes the batch's rows one at a time; the big row breaks its channel alone,
/// is charged each time and parked after `max_attempts` (2), and the 20 others are delivered.
#[actix_rt::test]
async fn a_row_that_breaks_the_channel_is_found_and_parked() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    rabbitmqctl(&[
        "eval",
        "application:set_env(rabbit, max_message_size, 1048576).",
    ])
    .await;
    let _restore = RestoreMaxMessageSize;
    let big = OutboxEvent::bytes("user.created", vec![7_u8; 2 << 20]).expect("event");
    let (ids, big) = emit_between_small_rows(&t, big).await;

    let seen_ids = std::sync::Mutex::new(std::collections::HashSet::new());
    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange)
            .with_max_attempts(2)
            .with_retry_backoff(Duration::from_millis(50), Duration::from_millis(100)),
    );
    // Rows published before a break whose confirm was lost go out again (at-least-once), so
    // count distinct ids until all 20 came, not the first 20 deliveries.
    let seen = wait_for(
        "all 20 small rows delivered",
        Duration::from_secs(20),
        || async {
            for d in broker.collect_for(&queue, Duration::from_millis(200)).await {
                let id = d.properties.message_id().as_ref().map(|s| s.to_string());
                seen_ids.lock().expect("seen lock").extend(id);
            }
            let seen = seen_ids.lock().expect("seen lock").clone();
            ids.iter()
                .all(|id| seen.contains(&id.to_string()))
                .then_some(seen)
        },
    )
    .await;
    let row = parked(&t, big, Duration::from_secs(20)).await;
    let stats = relay.stop().await;
    assert_eq!(
        row.attempts, 2,
        "charged once per break, parked at max_attempts"
    );
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("in flight alone")),
        "{:?}",
        row.last_error
    );
    assert!(
        !seen.contains(&big.to_string()),
        "the big row never went out"
    );
    assert!(stats.parked >= 1, "{stats:?}");
    broker.cleanup().await;
    t.cleanup().await;
}
