//! The inbox: exactly-once *effects* for handlers that write to their own database.
//!
//! Delivery stays at least once — a relay re-sends a batch it could not confirm, a worker
//! killed after the handler's commit and before its ack gets the message again. A handler
//! whose effect is a database write records the event's id in the inbox table **in the same
//! transaction** as that write: the first delivery inserts the id and applies the effect, a
//! later one finds the id and skips it, and a transaction that rolls back takes its id with
//! it (so the retry applies the effect). Keyed by (queue, message id): two handlers of one
//! event, each on its own queue, each apply it once.
//!
//! ```no_run
//! use actix::prelude::*;
//! use actix_outbox::{Event, HandlerResult, Inbox};
//! use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
//!
//! struct Counter { db: DatabaseConnection, inbox: Inbox }
//! impl Actor for Counter { type Context = Context<Self>; }
//!
//! impl Handler<Event<serde_json::Value>> for Counter {
//!     // Async work: the handler answers with a future (actix's ResponseFuture).
//!     type Result = ResponseFuture<HandlerResult>;
//!
//!     fn handle(&mut self, event: Event<serde_json::Value>, _: &mut Context<Self>) -> Self::Result {
//!         let (db, inbox) = (self.db.clone(), self.inbox.clone());
//!         Box::pin(async move {
//!             let txn = db.begin().await?;
//!             if inbox.first_time(&txn, &event).await? {
//!                 txn.execute_unprepared("UPDATE counters SET n = n + 1").await?;
//!             }
//!             txn.commit().await?; // the id and the effect, together
//!             Ok(())
//!         })
//!     }
//! }
//! ```
//!
//! Two copies of one event handled at once (two worker processes) do not both apply it: the
//! second insert waits on the first transaction's row lock and finds the id once that commits.
//! Old entries are deleted by [`Inbox::purge`] (or an [`InboxCleanup`] actor); keep them
//! longer than any redelivery can take (the default, 7 days, is far beyond the relay's and
//! the broker's windows).

use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionSession, TransactionTrait, Value};
use tracing::{info, warn};
use uuid::Uuid;

use crate::{Error, Event, Result, TableName};

/// The inbox table's columns, in order.
const COLUMNS: &str = "consumer, message_id, received_at";

/// An inbox table; see the [module docs](self). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Inbox {
    table: TableName,
}

impl Default for Inbox {
    /// The table `outbox_inbox`.
    fn default() -> Self {
        Self::new(TableName::new("outbox_inbox").expect("a valid table name"))
    }
}

impl Inbox {
    /// The inbox in `table`.
    #[must_use]
    pub fn new(table: TableName) -> Self {
        Self { table }
    }

    /// The table.
    #[must_use]
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The statements [`setup`](Self::setup) runs on `backend`.
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedBackend`] for databases other than PostgreSQL, SQLite and MySQL.
    pub fn ddl(&self, backend: DbBackend) -> Result<Vec<String>> {
        let t = self.table.as_str();
        // The index name is the table's last segment: `app.inbox` gets `app.inbox_received_idx`'s
        // unqualified form, as PostgreSQL wants.
        let bare = t.rsplit('.').next().unwrap_or(t);
        let table = match backend {
            DbBackend::Postgres => format!(
                "CREATE TABLE IF NOT EXISTS {t} (
    consumer    TEXT        NOT NULL,
    message_id  UUID        NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
)"
            ),
            DbBackend::Sqlite => format!(
                "CREATE TABLE IF NOT EXISTS {t} (
    consumer    TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (consumer, message_id)
) WITHOUT ROWID"
            ),
            // MySQL 8 has no `CREATE INDEX IF NOT EXISTS`: the index is part of the table.
            DbBackend::MySql => {
                return Ok(vec![format!(
                    "CREATE TABLE IF NOT EXISTS {t} (
    consumer    VARCHAR(255) NOT NULL,
    message_id  BINARY(16)   NOT NULL,
    received_at DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    PRIMARY KEY (consumer, message_id),
    INDEX {bare}_received_idx (received_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
                )]);
            }
            other => return Err(Error::UnsupportedBackend(format!("{other:?}"))),
        };
        let index = format!("CREATE INDEX IF NOT EXISTS {bare}_received_idx ON {t} (received_at)");
        Ok(vec![table, index])
    }

    /// Gets or creates the table (idempotent, safe to call at every start).
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedBackend`], [`Error::Db`], or [`Error::SchemaMismatch`] when a table
    /// of that name exists without the inbox's columns.
    pub async fn setup<C>(&self, db: &C) -> Result<()>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        let statements = self.ddl(db.get_database_backend())?;
        let txn = db.begin().await?;
        if db.get_database_backend() == DbBackend::Postgres {
            // Several workers starting at once: one creates, the others wait and find it.
            let lock = format!(
                "SELECT pg_advisory_xact_lock(hashtext('actix_outbox_inbox_setup:{}'))",
                self.table
            );
            txn.execute_unprepared(&lock).await?;
        }
        // The table first; then, before its index, that it is an inbox (a foreign table of
        // that name would otherwise fail on the index with a less telling error).
        let (table, rest) = statements.split_first().expect("ddl has the table");
        txn.execute_unprepared(table).await?;
        let check = format!("SELECT {COLUMNS} FROM {} WHERE 1 = 0", self.table);
        let backend = db.get_database_backend();
        if let Err(e) = txn
            .query_all_raw(Statement::from_string(backend, check))
            .await
        {
            return Err(Error::SchemaMismatch {
                table: self.table.to_string(),
                detail: format!("expected the inbox columns {COLUMNS}: {e}"),
            });
        }
        for sql in rest {
            txn.execute_unprepared(sql).await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Records `event` for its queue ([`Event::queue`]) inside `txn`, the handler's
    /// transaction; `true` the first time, `false` when it was recorded before (skip the
    /// effect). The record commits or rolls back with `txn`.
    ///
    /// # Errors
    ///
    /// [`Error::Db`] when the insert fails (a missing table among them: run `setup`).
    pub async fn first_time<C: ConnectionTrait, T>(
        &self,
        txn: &C,
        event: &Event<T>,
    ) -> Result<bool> {
        self.first_time_for(txn, event.queue(), event.message_id())
            .await
    }

    /// As [`first_time`](Self::first_time), for a consumer name and message id of your own.
    ///
    /// # Errors
    ///
    /// As [`first_time`](Self::first_time).
    pub async fn first_time_for<C: ConnectionTrait>(
        &self,
        txn: &C,
        consumer: &str,
        message_id: Uuid,
    ) -> Result<bool> {
        let backend = txn.get_database_backend();
        let t = &self.table;
        let statement = match backend {
            DbBackend::Postgres => Statement::from_sql_and_values(
                backend,
                format!(
                    "INSERT INTO {t} (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
                ),
                [Value::from(consumer), Value::from(message_id)],
            ),
            DbBackend::Sqlite => Statement::from_sql_and_values(
                backend,
                format!("INSERT INTO {t} ({COLUMNS}) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"),
                [
                    Value::from(consumer),
                    Value::from(message_id.to_string()),
                    Value::from(Utc::now()),
                ],
            ),
            // `IGNORE` skips only the duplicate here: the key is the whole primary key, and
            // a consumer name longer than the column is refused above rather than truncated.
            DbBackend::MySql => {
                if consumer.len() > 255 {
                    return Err(Error::InvalidConfig {
                        field: "consumer",
                        reason: format!(
                            "an inbox consumer name has at most 255 bytes, not {}",
                            consumer.len()
                        ),
                    });
                }
                Statement::from_sql_and_values(
                    backend,
                    format!("INSERT IGNORE INTO {t} (consumer, message_id) VALUES (?, ?)"),
                    [Value::from(consumer), Value::from(message_id)],
                )
            }
            other => return Err(Error::UnsupportedBackend(format!("{other:?}"))),
        };
        Ok(txn.execute_raw(statement).await?.rows_affected() == 1)
    }

    /// Deletes entries recorded more than `older_than` ago; returns how many.
    ///
    /// # Errors
    ///
    /// [`Error::Db`] when the delete fails.
    pub async fn purge<C: ConnectionTrait>(&self, db: &C, older_than: Duration) -> Result<u64> {
        let backend = db.get_database_backend();
        let t = &self.table;
        let statement = match backend {
            DbBackend::Postgres => Statement::from_sql_and_values(
                backend,
                format!(
                    "DELETE FROM {t} WHERE received_at < now() - $1 * interval '1 millisecond'"
                ),
                [Value::from(millis(older_than))],
            ),
            DbBackend::Sqlite => Statement::from_sql_and_values(
                backend,
                format!("DELETE FROM {t} WHERE received_at < ?"),
                [Value::from(
                    Utc::now() - chrono::Duration::milliseconds(millis(older_than)),
                )],
            ),
            DbBackend::MySql => Statement::from_sql_and_values(
                backend,
                format!(
                    "DELETE FROM {t} WHERE received_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND"
                ),
                [Value::from(millis(older_than).saturating_mul(1_000))],
            ),
            other => return Err(Error::UnsupportedBackend(format!("{other:?}"))),
        };
        Ok(db.execute_raw(statement).await?.rows_affected())
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// An actor that purges an [`Inbox`] of entries older than `keep`, every `every` (by default
/// a tenth of `keep`, between 1 minute and 1 hour). Start it beside the worker:
/// `InboxCleanup::new(db, inbox, keep).start()`.
pub struct InboxCleanup<C> {
    db: C,
    inbox: Inbox,
    keep: Duration,
    every: Duration,
}

impl<C> std::fmt::Debug for InboxCleanup<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxCleanup")
            .field("inbox", &self.inbox)
            .field("keep", &self.keep)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl<C: ConnectionTrait + Clone + Unpin + 'static> InboxCleanup<C> {
    /// Purges `inbox` on `db` of entries older than `keep`.
    #[must_use]
    pub fn new(db: C, inbox: Inbox, keep: Duration) -> Self {
        let every = (keep / 10).clamp(Duration::from_secs(60), Duration::from_secs(3600));
        Self {
            db,
            inbox,
            keep,
            every,
        }
    }

    /// Purges every `every` instead.
    #[must_use]
    pub fn with_interval(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    fn purge(&mut self, ctx: &mut Context<Self>) {
        let (db, inbox, keep) = (self.db.clone(), self.inbox.clone(), self.keep);
        let table = inbox.table().to_string();
        ctx.wait(
            async move {
                match inbox.purge(&db, keep).await {
                    Ok(0) => {}
                    Ok(n) => info!(table = %table, purged = n, "inbox entries purged"),
                    Err(e) => warn!(table = %table, error = %e, "inbox purge failed; trying again next round"),
                }
            }
            .into_actor(self),
        );
    }
}

impl<C: ConnectionTrait + Clone + Unpin + 'static> Actor for InboxCleanup<C> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.purge(ctx);
        ctx.run_interval(self.every, Self::purge);
    }
}
