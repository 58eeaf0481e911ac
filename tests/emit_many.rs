//! `emit_many` writes 10,000 events in one transaction, in insertion order.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::outbox_message::{Column, Entity};
use actix_outbox::{OutboxEvent, setup};
use sea_orm::{EntityTrait, QueryOrder, TransactionTrait};

/// 10,000 events → 10,000 rows whose ids grow in the order the events were given.
#[tokio::test]
async fn ten_thousand_events_in_order() {
    for t in common::both_backends().await {
        let db = &t.db;
        setup(db).await.expect("setup");
        let events: Vec<OutboxEvent> = (0..10_000)
            .map(|n| {
                let event = OutboxEvent::json("bulk.item", &n).expect("event");
                // A few events with an eta split the multi-row inserts; order must survive.
                if n % 997 == 0 {
                    event.with_delay(Duration::from_secs(3_600))
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
        assert_eq!(ids.len(), 10_000);

        let rows = Entity::find()
            .order_by_asc(Column::Id)
            .all(db)
            .await
            .expect("read");
        assert_eq!(rows.len(), 10_000, "{}", t.name);
        for (n, (row, id)) in rows.iter().zip(&ids).enumerate() {
            assert_eq!(&row.message_id, id, "row {n} out of order");
            assert_eq!(row.payload, n.to_string().into_bytes());
        }
        let future = rows.iter().filter(|r| r.send_after > r.created_at).count();
        assert_eq!(future, 11, "the events with an eta kept it");
        t.cleanup().await;
    }
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
