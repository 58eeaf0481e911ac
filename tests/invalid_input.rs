//! Bad input is a typed error before any SQL runs, and nothing is written.
#![cfg(feature = "service-tests")]

mod common;

use actix_outbox::{Error, OutboxEvent, TableName, setup};
use sea_orm::TransactionTrait;

/// Wildcards, empty words, oversize and empty keys: typed errors, zero rows, and the
/// transaction stays usable.
#[tokio::test]
async fn bad_routing_keys_write_nothing() {
    for t in common::both_backends().await {
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

/// Reserved header names are refused when building the event.
#[test]
fn reserved_headers_are_refused() {
    let event = OutboxEvent::json("a.b", &1).expect("valid event");
    let err = event
        .with_header("x-delivery-count", 1)
        .expect_err("RabbitMQ's own header");
    assert!(err.to_string().contains("reserved"), "{err}");
}
