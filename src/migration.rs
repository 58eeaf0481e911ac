//! The outbox table as a `sea-orm-migration` migration (feature `migration`), for teams whose
//! schema changes all go through their migrator rather than through [`setup`](crate::setup)
//! at start-up.
//!
//! ```no_run
//! use actix_outbox::migration::OutboxMigration;
//! use sea_orm_migration::{MigrationTrait, MigratorTrait};
//!
//! pub struct Migrator;
//!
//! impl MigratorTrait for Migrator {
//!     fn migrations() -> Vec<Box<dyn MigrationTrait>> {
//!         vec![
//!             // ... the application's own migrations ...
//!             Box::new(OutboxMigration::default()), // table `outbox`
//!         ]
//!     }
//! }
//! ```
//!
//! `up` runs exactly what `setup` runs (the statements [`ddl`](crate::ddl) prints), so it is
//! idempotent and also completes or upgrades a table that `setup` made earlier. After an
//! upgrade of actix-outbox that changes the schema (its release notes say so), add another
//! `OutboxMigration` under a new name ([`OutboxMigration::named`]): it brings the table up
//! to the new version. Calling `setup` as well does no harm.
//!
//! `down` drops the table (and, on PostgreSQL, its trigger function), but refuses while the
//! table holds events not yet sent: dropping them would lose them.

use sea_orm::{ConnectionTrait, DbErr, Statement};
use sea_orm_migration::{MigrationName, MigrationTrait, SchemaManager};

use crate::{Error, TableName, schema};

/// Creates (or completes) the outbox table; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct OutboxMigration {
    table: TableName,
    name: String,
}

impl Default for OutboxMigration {
    /// The default table, `outbox`.
    fn default() -> Self {
        Self::new(TableName::default())
    }
}

impl OutboxMigration {
    /// The migration for `table`, named `m20261202_000001_actix_outbox_<table>`.
    #[must_use]
    pub fn new(table: TableName) -> Self {
        let name = format!("m20261202_000001_actix_outbox_{table}");
        Self { table, name }
    }

    /// The same migration under another name: after an upgrade that changes the schema, a
    /// second `OutboxMigration` with a new name runs `setup`'s statements again.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The table it creates.
    #[must_use]
    pub fn table(&self) -> &TableName {
        &self.table
    }
}

impl MigrationName for OutboxMigration {
    fn name(&self) -> &str {
        &self.name
    }
}

#[async_trait::async_trait]
impl MigrationTrait for OutboxMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        schema::setup(manager.get_connection(), &self.table)
            .await
            .map_err(into_db_err)
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        let t = self.table.as_str();
        let count = format!("SELECT COUNT(*) AS n FROM {t} WHERE sent_at IS NULL");
        let row = db
            .query_one_raw(Statement::from_string(backend, count))
            .await?;
        let unsent: i64 = match row {
            Some(row) => row.try_get("", "n")?,
            None => 0,
        };
        if unsent > 0 {
            return Err(DbErr::Migration(format!(
                "outbox table {t} holds {unsent} events not yet sent: dropping it would lose them; \
                 let the relay drain it (or discard parked rows) first"
            )));
        }
        db.execute_unprepared(&format!("DROP TABLE {t}")).await?;
        if backend == sea_orm::DbBackend::Postgres {
            db.execute_unprepared(&format!("DROP FUNCTION IF EXISTS {t}_notify()"))
                .await?;
        }
        Ok(())
    }
}

fn into_db_err(e: Error) -> DbErr {
    match e {
        Error::Db(e) => e,
        other => DbErr::Migration(other.to_string()),
    }
}
