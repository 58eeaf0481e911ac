//! `setup` is idempotent, safe from many tasks at once, and refuses a foreign table.
#![cfg(feature = "service-tests")]

mod common;

use actix_outbox::{Error, Outbox, TableName, setup};
use sea_orm::ConnectionTrait;

/// Twice in a row, then from 8 concurrent tasks: no error, one table, one trigger.
#[tokio::test]
async fn setup_twice_and_concurrently() {
    for t in common::all_backends().await {
        setup(&t.db).await.expect("first setup");
        setup(&t.db).await.expect("second setup");
        let table = TableName::new("concurrent_outbox").expect("valid");
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let db = t.db.clone();
                let outbox = Outbox::new(table.clone());
                tokio::spawn(async move { outbox.setup(&db).await })
            })
            .collect();
        for task in tasks {
            task.await.expect("task").expect("concurrent setup");
        }
        let backend = t.db.get_database_backend();
        let count = match backend {
            sea_orm::DbBackend::Sqlite => {
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'concurrent_outbox'"
                    .to_owned()
            }
            sea_orm::DbBackend::MySql => "SELECT count(*) FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name = 'concurrent_outbox'"
                .to_owned(),
            _ => format!(
                "SELECT count(*) FROM pg_tables WHERE schemaname = '{}' \
                 AND tablename = 'concurrent_outbox'",
                t.name
            ),
        };
        assert_eq!(t.int(&count).await, 1, "{}", t.name);
        if backend == sea_orm::DbBackend::Postgres {
            let triggers = t
                .int("SELECT count(*) FROM pg_trigger WHERE tgname = 'concurrent_outbox_notify'")
                .await;
            assert!(triggers >= 1, "the NOTIFY trigger exists");
        }
        t.cleanup().await;
    }
}

/// A table named like the outbox but with other columns is a typed error naming the table.
#[tokio::test]
async fn foreign_table_is_a_schema_mismatch() {
    for t in common::all_backends().await {
        t.db.execute_unprepared("CREATE TABLE outbox (id INTEGER PRIMARY KEY, body TEXT)")
            .await
            .expect("foreign table");
        let err = setup(&t.db).await.expect_err("must refuse");
        assert!(
            matches!(&err, Error::SchemaMismatch { table, .. } if table == "outbox"),
            "{}: {err}",
            t.name
        );
        t.cleanup().await;
    }
}

/// A trigger function of 0.1 (notifying the bare table name) is replaced by `setup`, so
/// relays of this version, listening on `<schema>.<table>`, are woken.
#[tokio::test]
async fn setup_upgrades_a_bare_name_trigger() {
    let t = common::TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    t.db.execute_unprepared(
        "CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END
$$",
    )
    .await
    .expect("install the 0.1 function");
    setup(&t.db).await.expect("setup over the old function");
    let upgraded = t
        .int(
            "SELECT count(*) FROM pg_proc WHERE oid = to_regproc('outbox_notify') \
             AND position('TG_TABLE_SCHEMA' in prosrc) > 0",
        )
        .await;
    assert_eq!(upgraded, 1, "setup replaced the bare-name trigger function");
    t.cleanup().await;
}
