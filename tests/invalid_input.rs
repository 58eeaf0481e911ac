//! Bad input is a typed error before any SQL runs, and nothing is written.
#![cfg(feature = "service-tests")]

mod common;

use actix_outbox::{Error, OutboxEvent, TableName, setup};
use sea_orm::TransactionTrait;

/// Wildcards, empty words, oversize and empty keys: typed errors, zero rows, and the
/// transaction stays usable.
#[tokio::test]
async fn bad_routing_keys_write_nothing() {
    for t in common::all_backends().await {
        setup(&t.db).await.expect("setup");
        let txn = t.db.begin().await.expect("begin");
        let long = "k".repeat(256);
        for key in [
            "user.*",
            "order.#",
            "",
            "user..created",
            long.as_str(),
            "a b",
        ] {
            let err = actix_outbox::emit(&txn, key, &1).await.expect_err(key);
            assert!(
                matches!(&err, Error::InvalidRoutingKey { key: k, .. } if k == key),
                "{key:?}: {err}"
            );
        }
        actix_outbox::emit(&txn, "still.usable", &1)
            .await
            .expect("transaction still usable after refused keys");
        txn.commit().await.expect("commit");
        assert_eq!(t.int("SELECT count(*) FROM outbox").await, 1, "{}", t.name);
        t.cleanup().await;
    }
}

/// Invalid table names are refused when the name is built, so no SQL can ever see them.
#[test]
fn bad_table_names_are_refused() {
    for bad in [
        "",
        "Outbox",
        "outbox; DROP TABLE users",
        "public.outbox",
        "9lives",
    ] {
        assert!(
            matches!(TableName::new(bad), Err(Error::InvalidTableName { .. })),
            "{bad:?}"
        );
    }
}

/// Reserved header names are refused by the event's check, which every emit runs: the emit
/// writes nothing.
#[tokio::test]
async fn reserved_headers_are_refused() {
    let event = OutboxEvent::json("a.b", &1)
        .expect("valid event")
        .with_header("x-delivery-count", 1);
    let err = event.validate().expect_err("RabbitMQ's own header");
    assert!(err.to_string().contains("reserved"), "{err}");
    let t = common::TestDb::sqlite().await;
    setup(&t.db).await.expect("setup");
    let err = actix_outbox::emit_event(&t.db, event)
        .await
        .expect_err("emit refuses it");
    assert!(err.to_string().contains("reserved"), "{err}");
    assert_eq!(
        t.int("SELECT count(*) FROM outbox").await,
        0,
        "nothing written"
    );
    t.cleanup().await;
}

/// A content type AMQP cannot carry (over 255 bytes) is refused by `emit_event` and by
/// `emit_many` before anything is written, on both backends; 255 bytes is fine.
#[tokio::test]
async fn oversize_content_types_write_nothing() {
    for t in common::all_backends().await {
        setup(&t.db).await.expect("setup");
        let too_long = format!("text/{}", "x".repeat(251));
        let event = || OutboxEvent::bytes("a.b", b"{}".to_vec()).expect("event");
        let err = actix_outbox::emit_event(&t.db, event().with_content_type(too_long.clone()))
            .await
            .expect_err("256-byte content type");
        assert!(
            matches!(
                &err,
                Error::InvalidConfig {
                    field: "content_type",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("256 bytes"), "{err}");

        let txn = t.db.begin().await.expect("begin");
        let batch = vec![
            event(),
            event().with_content_type(too_long.clone()),
            event(),
        ];
        let err = actix_outbox::emit_many(&txn, batch)
            .await
            .expect_err("one bad event refuses the batch");
        assert!(
            matches!(
                &err,
                Error::InvalidConfig {
                    field: "content_type",
                    ..
                }
            ),
            "{err}"
        );
        let fits = format!("text/{}", "x".repeat(250));
        actix_outbox::emit_event(&txn, event().with_content_type(fits))
            .await
            .expect("255 bytes fit, and the transaction is still usable");
        txn.commit().await.expect("commit");
        assert_eq!(t.int("SELECT count(*) FROM outbox").await, 1, "{}", t.name);
        t.cleanup().await;
    }
}

/// A header value holding an object with a field name over 255 bytes is refused by the
/// event's check.
#[test]
fn oversize_names_inside_header_values_are_refused() {
    let event = OutboxEvent::json("a.b", &1).expect("valid event");
    let long = "k".repeat(256);
    let err = event
        .clone()
        .with_header("meta", serde_json::json!({"list": [{long.as_str(): 1}]}))
        .validate()
        .expect_err("nested name too long");
    assert!(err.to_string().contains("256 bytes"), "{err}");
    event
        .with_header("meta", serde_json::json!({"k".repeat(255): [1, 2]}))
        .validate()
        .expect("255 bytes fit");
}
