//! `emit` writes exactly one row inside a committed transaction and none inside a rolled-back
//! one, on PostgreSQL and SQLite.
#![cfg(feature = "service-tests")]

mod common;

use actix_outbox::outbox_message::{Column, Entity};
use actix_outbox::{OutboxEvent, setup};
use common::TestDb;
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, QueryOrder, TransactionTrait};
use serde_json::json;

#[derive(serde::Serialize)]
struct UserCreated {
    id: u64,
    username: &'static str,
}

/// Commit: one row with the routing key, exact payload bytes, content type, tracking header
/// and timestamps; the business row committed alongside.
#[tokio::test]
async fn committed_emit_writes_one_row() {
    for t in common::all_backends().await {
        let db = &t.db;
        setup(db).await.expect("setup");
        db.execute_unprepared("CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT NOT NULL)")
            .await
            .expect("business table");

        let txn = db.begin().await.expect("begin");
        txn.execute_unprepared("INSERT INTO users VALUES (123, 'johndoe')")
            .await
            .expect("business row first");
        let user = UserCreated {
            id: 123,
            username: "johndoe",
        };
        let id = actix_outbox::emit(&txn, "user.created", &user)
            .await
            .expect("emit");
        txn.commit().await.expect("commit");

        let rows = Entity::find().all(db).await.expect("read outbox");
        assert_eq!(rows.len(), 1, "{}: exactly one row", t.name);
        let row = &rows[0];
        assert_eq!(row.message_id, id);
        assert_eq!(row.routing_key, "user.created");
        assert_eq!(row.payload, br#"{"id":123,"username":"johndoe"}"#);
        assert_eq!(row.content_type, "application/json");
        assert_eq!(
            row.headers["x-outbox-tracking-ids"],
            json!([id.to_string()])
        );
        assert_eq!(row.attempts, 0);
        assert_eq!(
            row.send_after, row.created_at,
            "default eta is the insert time"
        );
        assert!(row.expires_at.is_none() && row.sent_at.is_none() && row.parked_at.is_none());
        assert_eq!(t.int("SELECT count(*) FROM users").await, 1);
        t.cleanup().await;
    }
}

/// Rollback: neither the business row nor the event exists afterwards.
#[tokio::test]
async fn rolled_back_emit_leaves_nothing() {
    for t in common::all_backends().await {
        let db = &t.db;
        setup(db).await.expect("setup");
        let txn = db.begin().await.expect("begin");
        actix_outbox::emit(&txn, "user.created", &json!({"id": 1}))
            .await
            .expect("emit");
        let event = OutboxEvent::bytes("user.avatar", vec![0_u8, 255, 7]).expect("event");
        actix_outbox::emit_event(&txn, event)
            .await
            .expect("emit bytes");
        txn.rollback().await.expect("rollback");
        assert_eq!(t.int("SELECT count(*) FROM outbox").await, 0, "{}", t.name);
        t.cleanup().await;
    }
}

/// On PostgreSQL `created_at`/`send_after` come from the database clock (`now()` of the
/// emitting transaction), not from this process.
#[tokio::test]
async fn postgres_timestamps_come_from_the_database_clock() {
    let t = TestDb::postgres().await;
    let db = &t.db;
    setup(db).await.expect("setup");
    let txn = db.begin().await.expect("begin");
    actix_outbox::emit(&txn, "clock.check", &1)
        .await
        .expect("emit");
    let same = txn
        .query_one_raw(sea_orm::Statement::from_string(
            DbBackend::Postgres,
            "SELECT (created_at = now() AND send_after = now())::int::int8 AS same FROM outbox",
        ))
        .await
        .expect("query")
        .expect("one row")
        .try_get::<i64>("", "same")
        .expect("int");
    txn.commit().await.expect("commit");
    assert_eq!(same, 1, "timestamps equal the transaction's now()");
    t.cleanup().await;
}

/// Bytes payloads are stored as is (no base64), with their content type.
#[tokio::test]
async fn raw_bytes_are_stored_verbatim() {
    for t in common::all_backends().await {
        let db = &t.db;
        setup(db).await.expect("setup");
        let bytes: Vec<u8> = (0..=255).collect();
        let event = OutboxEvent::bytes("file.uploaded", bytes.clone())
            .expect("event")
            .with_content_type("image/png");
        actix_outbox::emit_event(db, event)
            .await
            .expect("emit on a plain connection");
        let row = Entity::find()
            .order_by_asc(Column::Id)
            .one(db)
            .await
            .expect("read")
            .expect("a row");
        assert_eq!(row.payload, bytes);
        assert_eq!(row.content_type, "image/png");
        t.cleanup().await;
    }
}
