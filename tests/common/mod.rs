//! Shared setup of the service tests: a fresh PostgreSQL schema, MariaDB database or SQLite
//! file per test.
//!
//! Service tests only compile with `--features service-tests` (`scripts/test` turns it on).
//! Once on, a missing `DATABASE_URL`, `MYSQL_URL` or `AMQP_URL` fails the test loudly: run `scripts/test`,
//! or `scripts/services` and export the URLs it prints.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Statement};

/// Reads a required environment variable or fails the test with instructions.
pub fn require_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set. The service tests need real PostgreSQL and RabbitMQ: run \
             `scripts/test`, or start them with `scripts/services` and export the URLs it prints."
        ),
    }
}

/// The URL of database `name` on the MySQL/MariaDB server of `MYSQL_URL` (for a test's
/// own database, see [`TestDb::mysql`]).
pub fn mysql_url(name: &str) -> String {
    let url = require_env("MYSQL_URL");
    let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

/// A short unique suffix for schema, table, exchange and queue names.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}_{}", &id[id.len() - 12..])
}

/// A database of one test: its own PostgreSQL schema or its own SQLite file.
pub struct TestDb {
    pub db: DatabaseConnection,
    /// The schema (PostgreSQL) or file path (SQLite) this test owns.
    pub name: String,
}

impl TestDb {
    /// A fresh schema in the PostgreSQL database of `DATABASE_URL`, set as the search path of
    /// every pooled connection.
    pub async fn postgres() -> Self {
        Self::postgres_at(|url| url.to_owned()).await
    }

    /// Like [`postgres`](Self::postgres), but the test's pool connects to `rewrite(url)`
    /// (through a fault-injection proxy, for example); the schema is created directly.
    pub async fn postgres_at(rewrite: impl Fn(&str) -> String) -> Self {
        let url = require_env("DATABASE_URL");
        let admin = Database::connect(&url)
            .await
            .expect("connect to DATABASE_URL");
        let name = unique("t");
        admin
            .execute_unprepared(&format!("CREATE SCHEMA {name}"))
            .await
            .expect("create test schema");
        admin.close().await.expect("close admin connection");
        let mut options = ConnectOptions::new(rewrite(&url));
        options
            .set_schema_search_path(name.clone())
            .max_connections(10)
            .sqlx_logging(false);
        let db = Database::connect(options)
            .await
            .expect("connect to test schema");
        Self { db, name }
    }

    /// A fresh database on the MySQL/MariaDB server of `MYSQL_URL`, dropped by
    /// [`cleanup`](Self::cleanup).
    pub async fn mysql() -> Self {
        let url = require_env("MYSQL_URL");
        let admin = actix_outbox::DatabaseConfig::new(url.clone())
            .with_max_connections(1)
            .connect()
            .await
            .expect("connect to MYSQL_URL");
        let name = unique("t");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        admin.close().await.expect("close admin connection");
        let db = actix_outbox::DatabaseConfig::new(mysql_url(&name))
            .connect()
            .await
            .expect("connect to the test database");
        Self { db, name }
    }

    /// A fresh SQLite file in the temp directory.
    pub async fn sqlite() -> Self {
        let path = std::env::temp_dir().join(format!("{}.sqlite", unique("actix_outbox")));
        let name = path.display().to_string();
        let mut options = ConnectOptions::new(format!("sqlite://{name}?mode=rwc"));
        options.sqlx_logging(false);
        let db = Database::connect(options).await.expect("open sqlite file");
        Self { db, name }
    }

    /// A second pool on the SQLite file `path` of another [`TestDb`], as another process
    /// would open it. Close it with [`close`](Self::close); the owner removes the file.
    pub async fn reopen_sqlite(path: &str) -> Self {
        let mut options = ConnectOptions::new(format!("sqlite://{path}?mode=rw"));
        options.sqlx_logging(false);
        let db = Database::connect(options)
            .await
            .expect("reopen sqlite file");
        Self {
            db,
            name: path.to_owned(),
        }
    }

    /// Closes the pool, removing nothing.
    pub async fn close(self) {
        let _ = self.db.close().await;
    }

    /// Runs `sql` and returns the first column of every row as i64.
    pub async fn ints(&self, sql: &str) -> Vec<i64> {
        let backend = self.db.get_database_backend();
        let rows = self
            .db
            .query_all_raw(Statement::from_string(backend, sql.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("query {sql:?} failed: {e}"));
        rows.iter()
            .map(|r| {
                r.try_get_by_index::<i64>(0)
                    .or_else(|_| r.try_get_by_index::<i32>(0).map(i64::from))
                    .expect("an integer column")
            })
            .collect()
    }

    /// Runs `sql` and returns its single integer.
    pub async fn int(&self, sql: &str) -> i64 {
        let values = self.ints(sql).await;
        assert_eq!(values.len(), 1, "{sql:?} should return one row");
        values[0]
    }

    /// Emits `n` JSON events with routing key `key` in one transaction (`emit_many`);
    /// returns their message ids in order.
    pub async fn emit_backlog(&self, n: usize, key: &str) -> Vec<uuid::Uuid> {
        use sea_orm::TransactionTrait;
        let events: Vec<actix_outbox::OutboxEvent> = (0..n)
            .map(|i| {
                actix_outbox::OutboxEvent::json(key, &serde_json::json!({"n": i})).expect("event")
            })
            .collect();
        let txn = self.db.begin().await.expect("begin");
        let ids = actix_outbox::emit_many(&txn, events)
            .await
            .expect("emit_many");
        txn.commit().await.expect("commit");
        ids
    }

    /// Waits (bounded by `timeout`, failing with `what`) until the `outbox` table has no row.
    pub async fn wait_outbox_empty(&self, what: &str, timeout: Duration) {
        wait_for(what, timeout, || async {
            (self.int("SELECT count(*) FROM outbox").await == 0).then_some(())
        })
        .await;
    }

    /// Removes what the test created (best effort; CI machines are thrown away anyway).
    pub async fn cleanup(self) {
        match self.db.get_database_backend() {
            sea_orm::DbBackend::Postgres => {
                let _ = self
                    .db
                    .execute_unprepared(&format!("DROP SCHEMA {} CASCADE", self.name))
                    .await;
            }
            sea_orm::DbBackend::MySql => {
                let _ = self
                    .db
                    .execute_unprepared(&format!("DROP DATABASE {}", self.name))
                    .await;
            }
            _ => {}
        }
        let _ = self.db.close().await;
        if !self.name.contains('/') {
            return;
        }
        let _ = std::fs::remove_file(&self.name);
        let _ = std::fs::remove_file(format!("{}-outbox-relay.lock", self.name));
    }
}

/// PostgreSQL and SQLite, for tests that must hold on each.
pub async fn both_backends() -> [TestDb; 2] {
    [TestDb::postgres().await, TestDb::sqlite().await]
}

/// PostgreSQL, SQLite and MariaDB, for tests that must hold on every backend.
pub async fn all_backends() -> [TestDb; 3] {
    [
        TestDb::postgres().await,
        TestDb::sqlite().await,
        TestDb::mysql().await,
    ]
}

/// The bounded wait of every test: defined in `process` (which the soak driver includes on its
/// own), re-exported here.
pub use process::wait_for;

pub mod broker;
pub mod cluster;
pub mod faults;
pub mod process;
pub mod relay;
pub mod worker;
