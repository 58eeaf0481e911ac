//! `OutboxMigration` run by a real `sea-orm-migration` migrator, on both backends (features
//! `service-tests` and `migration`).
#![cfg(all(feature = "service-tests", feature = "migration"))]
#![allow(missing_docs)]

mod common;

use actix_outbox::migration::OutboxMigration;
use actix_outbox::{Outbox, ddl};
use common::all_backends;
use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::{MigrationName, MigrationTrait, MigratorTrait};

struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(OutboxMigration::default())]
    }
}

/// `up` creates what `setup` creates, `setup` afterwards finds it complete, `down` refuses
/// while an event is unsent and drops the table once it is gone.
#[actix_rt::test]
async fn the_migration_creates_and_drops_the_table_without_losing_events() {
    for t in all_backends().await {
        let backend = t.db.get_database_backend();
        Migrator::up(&t.db, None).await.expect("migrate up");
        assert_eq!(
            Migrator::get_pending_migrations(&t.db)
                .await
                .expect("pending")
                .len(),
            0
        );
        let outbox = Outbox::default();
        outbox
            .setup(&t.db)
            .await
            .expect("setup finds the table complete");
        outbox
            .emit(&t.db, "user.created", &1)
            .await
            .expect("emit into the migrated table");
        assert_eq!(t.int("SELECT count(*) FROM outbox").await, 1);
        // Every index and (PostgreSQL) the NOTIFY trigger exist, as after `setup`.
        let objects = match backend {
            DbBackend::Postgres => {
                "SELECT count(*) FROM pg_class WHERE relname LIKE 'outbox%idx' AND relnamespace = current_schema()::regnamespace"
            }
            DbBackend::MySql => {
                "SELECT count(DISTINCT index_name) FROM information_schema.statistics \
                 WHERE table_schema = DATABASE() AND index_name LIKE 'outbox%idx'"
            }
            _ => {
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name LIKE 'outbox%idx'"
            }
        };
        // One per statement, or (MySQL) inside the one `CREATE TABLE`.
        let indexes: usize = ddl(backend, outbox.table())
            .expect("ddl")
            .iter()
            .map(|s| s.matches("INDEX").count())
            .sum();
        assert_eq!(
            t.int(objects).await,
            i64::try_from(indexes).expect("few"),
            "the indexes of {backend:?}"
        );
        if backend == DbBackend::Postgres {
            assert_eq!(
                t.int("SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
                 WHERE t.tgname = 'outbox_notify' AND c.relnamespace = current_schema()::regnamespace")
                    .await,
                1
            );
        }
        assert_eq!(
            t.int("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
                .await,
            1
        );

        let refused = Migrator::down(&t.db, None).await.expect_err("down refuses");
        assert!(
            refused.to_string().contains("1 events not yet sent"),
            "{refused}"
        );
        assert_eq!(
            t.int("SELECT count(*) FROM outbox").await,
            1,
            "nothing dropped"
        );

        t.db.execute_unprepared("DELETE FROM outbox")
            .await
            .expect("drain");
        Migrator::down(&t.db, None).await.expect("migrate down");
        assert!(
            t.db.execute_unprepared("SELECT 1 FROM outbox")
                .await
                .is_err(),
            "table gone"
        );
        assert_eq!(
            OutboxMigration::default().name(),
            "m20261202_000001_actix_outbox_outbox"
        );
        t.cleanup().await;
    }
}
