//! `emit_many` writes 12,000 events in one transaction, in insertion order, every column intact.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::outbox_message::{Column, Entity};
use actix_outbox::{OutboxEvent, setup};
use sea_orm::{EntityTrait, QueryOrder, TransactionTrait};

/// 12,000 events (more than one PostgreSQL array statement) → 12,000 rows whose ids grow in
/// the order the events were given, each column as the event set it.
#[tokio::test]
async fn twelve_thousand_events_in_order_with_every_column() {
    const N: usize = 12_000;
    for t in common::all_backends().await {
        let db = &t.db;
        setup(db).await.expect("setup");
        let deadline = chrono::Utc::now() + chrono::TimeDelta::hours(2);
        let events: Vec<OutboxEvent> = (0..N)
            .map(|n| {
                let event = OutboxEvent::json("bulk.item", &n).expect("event");
                // Some events carry an eta, an expiry or a header, interleaved; order and
                // every column must survive.
                let event = if n % 997 == 0 {
                    event.with_delay(Duration::from_secs(3_600))
                } else {
                    event
                };
                let event = if n % 500 == 0 {
                    event.with_expires_at(deadline)
                } else {
                    event
                };
                if n % 3 == 0 {
                    event
                        .with_content_type("application/x-bulk")
                        .with_header("x-n", n as u64)
                } else {
                    event
                }
            })
            .collect();
        let txn = db.begin().await.expect("begin");
        let ids = actix_outbox::emit_many(&txn, events)
            .await
            .expect("emit_many");
        txn.commit().await.expect("commit");
        assert_eq!(ids.len(), N);

        let rows = Entity::find()
            .order_by_asc(Column::Id)
            .all(db)
            .await
            .expect("read");
        assert_eq!(rows.len(), N, "{}", t.name);
        for (n, (row, id)) in rows.iter().zip(&ids).enumerate() {
            assert_eq!(&row.message_id, id, "{}: row {n} out of order", t.name);
            assert_eq!(row.routing_key, "bulk.item");
            assert_eq!(row.payload, n.to_string().into_bytes());
            let tracking = row.headers["x-outbox-tracking-ids"][0].as_str();
            assert_eq!(tracking, Some(id.to_string().as_str()), "row {n} headers");
            if n % 3 == 0 {
                assert_eq!(row.content_type, "application/x-bulk", "row {n}");
                assert_eq!(row.headers["x-n"].as_u64(), Some(n as u64), "row {n}");
            } else {
                assert_eq!(row.content_type, "application/json", "row {n}");
                assert!(row.headers.get("x-n").is_none(), "row {n}");
            }
            if n % 997 == 0 {
                assert!(
                    row.send_after > row.created_at,
                    "{}: row {n} lost its eta",
                    t.name
                );
            } else {
                assert!(
                    row.send_after <= row.created_at + chrono::TimeDelta::seconds(1),
                    "{}: row {n} is due late: {} vs {}",
                    t.name,
                    row.send_after,
                    row.created_at
                );
            }
            if n % 500 == 0 {
                let got = row.expires_at.expect("expiry kept");
                assert!(
                    (got - deadline).num_milliseconds().abs() < 1,
                    "row {n}: {got}"
                );
            } else {
                assert_eq!(row.expires_at, None, "{}: row {n}", t.name);
            }
            assert_eq!(row.attempts, 0);
        }
        t.cleanup().await;
    }
}

/// Large payloads split the batch by size (32 MiB of payload a statement on PostgreSQL):
/// 40 events of 1 MiB, each intact and in order.
#[tokio::test]
async fn large_payloads_split_by_size_and_stay_intact() {
    let t = common::TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let events: Vec<OutboxEvent> = (0..40u8)
        .map(|n| OutboxEvent::bytes("bulk.blob", vec![n; 1 << 20]).expect("event"))
        .collect();
    let txn = t.db.begin().await.expect("begin");
    let ids = actix_outbox::emit_many(&txn, events)
        .await
        .expect("emit_many");
    txn.commit().await.expect("commit");
    let rows = Entity::find()
        .order_by_asc(Column::Id)
        .all(&t.db)
        .await
        .expect("read");
    assert_eq!(rows.len(), 40);
    for (n, (row, id)) in rows.iter().zip(&ids).enumerate() {
        assert_eq!(&row.message_id, id, "row {n} out of order");
        assert_eq!(row.payload.len(), 1 << 20, "row {n}");
        assert!(
            row.payload.iter().all(|&b| usize::from(b) == n),
            "row {n} payload"
        );
    }
    t.cleanup().await;
}

/// An empty batch is a no-op, not an error.
#[tokio::test]
async fn empty_batch_is_fine() {
    let t = common::TestDb::sqlite().await;
    setup(&t.db).await.expect("setup");
    let ids = actix_outbox::emit_many(&t.db, Vec::new())
        .await
        .expect("empty");
    assert!(ids.is_empty());
    assert_eq!(t.int("SELECT count(*) FROM outbox").await, 0);
    t.cleanup().await;
}
