//! Ordering keys on the emit side: stored in their column by every emit path, and added in
//! place to a table of the layout before them.
#![cfg(feature = "service-tests")]

mod common;

use actix_outbox::outbox_message::Entity;
use actix_outbox::{Error, OutboxEvent, emit_event, emit_many, setup};
use common::{all_backends, both_backends};
use sea_orm::{ConnectionTrait, EntityTrait, QueryOrder};

/// `emit_event` and `emit_many` (PostgreSQL's `unnest` path, SQLite's multi-row `VALUES`)
/// store the key in its column and in the headers; events without one store NULL; a bad key
/// is refused before anything is written.
#[actix_rt::test]
async fn every_emit_path_stores_the_ordering_key() {
    for t in all_backends().await {
        setup(&t.db).await.expect("setup");
        let one = OutboxEvent::json("order.placed", &1)
            .expect("event")
            .with_ordering_key("order-1");
        emit_event(&t.db, one).await.expect("emit one");
        let many = (0..5).map(|i| {
            let event = OutboxEvent::json("order.changed", &i).expect("event");
            if i % 2 == 0 {
                event.with_ordering_key(format!("order-{i}"))
            } else {
                event
            }
        });
        emit_many(&t.db, many).await.expect("emit many");
        let rows = Entity::find()
            .order_by_asc(actix_outbox::outbox_message::Column::Id)
            .all(&t.db)
            .await
            .expect("read");
        let keys: Vec<Option<&str>> = rows.iter().map(|r| r.ordering_key.as_deref()).collect();
        assert_eq!(
            keys,
            [
                Some("order-1"),
                Some("order-0"),
                None,
                Some("order-2"),
                None,
                Some("order-4")
            ],
            "{:?}",
            t.db.get_database_backend()
        );
        assert_eq!(rows[0].headers["x-outbox-ordering-key"], "order-1");

        let bad = OutboxEvent::json("order.placed", &1)
            .expect("event")
            .with_ordering_key("");
        let err = emit_many(&t.db, [bad]).await.expect_err("an empty key");
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    field: "ordering_key",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            t.int("SELECT count(*) FROM outbox").await,
            6,
            "nothing written"
        );
        t.cleanup().await;
    }
}

/// A table of the layout before ordering keys (its rows kept): `setup` adds the column and
/// its index in place, the old rows read back with no key, and keyed events can be emitted.
/// A foreign table lacking other columns as well is still refused, not altered.
#[actix_rt::test]
async fn setup_adds_the_column_to_a_table_of_the_earlier_layout() {
    // MySQL tables were born with the column: no earlier layout to upgrade there.
    for t in both_backends().await {
        let postgres = t.db.get_database_backend() == sea_orm::DbBackend::Postgres;
        // The earlier DDL: today's minus the column and its index.
        let earlier: Vec<String> =
            actix_outbox::ddl(t.db.get_database_backend(), &Default::default())
                .expect("ddl")
                .into_iter()
                .filter(|s| !s.contains("_key_idx"))
                .map(|s| {
                    s.replace(",\n    ordering_key VARCHAR(255)", "")
                        .replace(",\n    ordering_key TEXT", "")
                })
                .collect();
        assert!(!earlier[0].contains("ordering_key"), "{}", earlier[0]);
        for sql in &earlier {
            t.db.execute_unprepared(sql).await.expect("earlier DDL");
        }
        let (id, body, now) = if postgres {
            ("gen_random_uuid()", "'\\x7b7d'", "now()")
        } else {
            (
                "x'000102030405060708090a0b0c0d0e0f'",
                "x'7b7d'",
                "'2026-01-01T00:00:00.000000Z'",
            )
        };
        t.db.execute_unprepared(&format!(
            "INSERT INTO outbox (message_id, routing_key, payload, content_type, created_at, send_after) \
             VALUES ({id}, 'user.created', {body}, 'application/json', {now}, {now})"
        ))
        .await
        .expect("a row of the earlier layout");

        setup(&t.db).await.expect("setup upgrades the table");
        setup(&t.db).await.expect("and then only verifies");
        let key_idx = if postgres {
            t.int("SELECT count(*) FROM pg_indexes WHERE indexname = 'outbox_key_idx' AND schemaname = current_schema()")
                .await
        } else {
            t.int("SELECT count(*) FROM sqlite_master WHERE name = 'outbox_key_idx'")
                .await
        };
        assert_eq!(key_idx, 1, "the index came with the column");
        let old = Entity::find().all(&t.db).await.expect("read the old row");
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].ordering_key, None);
        let keyed = OutboxEvent::json("order.placed", &1)
            .expect("event")
            .with_ordering_key("order-7");
        emit_event(&t.db, keyed)
            .await
            .expect("emit into the upgraded table");

        t.db.execute_unprepared("CREATE TABLE foreign_events (id BIGINT, note TEXT)")
            .await
            .expect("a foreign table");
        let foreign = actix_outbox::Outbox::new(
            actix_outbox::TableName::new("foreign_events").expect("name"),
        );
        let err = foreign.setup(&t.db).await.expect_err("a foreign table");
        assert!(matches!(err, Error::SchemaMismatch { .. }), "{err}");
        let columns = if postgres {
            t.int("SELECT count(*) FROM information_schema.columns WHERE table_name = 'foreign_events' AND table_schema = current_schema()")
                .await
        } else {
            t.int("SELECT count(*) FROM pragma_table_info('foreign_events')")
                .await
        };
        assert_eq!(columns, 2, "the foreign table was not altered");
        t.cleanup().await;
    }
}
