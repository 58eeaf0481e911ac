//! `Outbox`: the emit side. `setup` the table once, then `emit` inside your transactions.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Alias;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ConnectionTrait, DbBackend, EntityTrait, QueryTrait, TransactionTrait,
};
use serde::Serialize;
use tracing::trace;
use uuid::Uuid;

use crate::error::Result;
use crate::outbox_event::OutboxEvent;
use crate::outbox_message::{ActiveModel, Entity};
use crate::schema;
use crate::table_name::TableName;

/// Rows per `INSERT` statement in [`Outbox::emit_many`] on SQLite and MySQL (multi-row
/// `VALUES`): 8 bound columns a row stays far below SQLite's 32,766 and MySQL's 65,535
/// parameter limits.
const ROWS_PER_STATEMENT: usize = 1_000;

/// Payload bytes per multi-row `INSERT` in [`Outbox::emit_many`] on SQLite and MySQL. A MySQL
/// statement travels in one packet, which must stay below the server's `max_allowed_packet`
/// (16 MiB by default on MariaDB, 64 MiB on MySQL 8); a single bigger event goes alone and
/// gets the server's error if it exceeds that.
const BYTES_PER_STATEMENT: usize = 4 << 20;

/// The emit side of the outbox, bound to one outbox table.
///
/// The free functions [`setup`](crate::setup), [`emit`](crate::emit),
/// [`emit_event`](crate::emit_event) and [`emit_many`](crate::emit_many) use the default table
/// `outbox`; build an `Outbox` to use another one. It is cheap to clone.
///
/// # Examples
///
/// ```no_run
/// use actix_outbox::{Outbox, TableName};
/// use sea_orm::{Database, TransactionTrait};
///
/// # async fn run() -> Result<(), actix_outbox::Error> {
/// let db = Database::connect("postgres://outbox:outbox@127.0.0.1:5432/outbox").await?;
/// let outbox = Outbox::new(TableName::new("billing_outbox")?);
/// outbox.setup(&db).await?;
///
/// let txn = db.begin().await?;
/// // ... insert the invoice row through `txn` ...
/// outbox.emit(&txn, "invoice.issued", &serde_json::json!({"invoice": 42})).await?;
/// txn.commit().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    /// The table events are written to (validated).
    table: TableName,
}

impl Outbox {
    /// An outbox writing to `table`.
    #[must_use]
    pub fn new(table: TableName) -> Self {
        Self { table }
    }

    /// The table this outbox writes to.
    #[must_use]
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// Gets or creates the outbox table, its indexes and, on PostgreSQL, the NOTIFY trigger
    /// that wakes relays when an emitting transaction commits.
    ///
    /// Idempotent and safe to call from many processes at once; when everything exists it only
    /// reads the catalog. See `migrations-free.md` for the exact DDL.
    ///
    /// # Errors
    ///
    /// [`Error::Db`](crate::Error::Db) when the database refuses,
    /// [`Error::SchemaMismatch`](crate::Error::SchemaMismatch) when a table of that name exists
    /// with other columns, [`Error::UnsupportedBackend`](crate::Error::UnsupportedBackend) for
    /// MySQL.
    pub async fn setup<C>(&self, db: &C) -> Result<()>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        schema::setup(db, &self.table).await
    }

    /// Turns this table's PostgreSQL NOTIFY trigger on or off, for every process that emits
    /// into it (`ALTER TABLE … ENABLE | DISABLE TRIGGER`; [`setup`](Self::setup) keeps the
    /// switch as it finds it).
    ///
    /// On (the default), each emitting commit wakes the relays at once, but PostgreSQL then
    /// serialises those commits. Off, emitting commits group-commit like any other and relays
    /// must poll: give them `RelayConfig::with_adaptive_poll` (in `actix-outbox-actors`), or
    /// they wake only at their poll interval. See `docs/tuning.md`, "Wake-ups".
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) on SQLite and MySQL (no NOTIFY
    /// there), [`Error::SchemaMismatch`](crate::Error::SchemaMismatch) when the table or its
    /// trigger does not exist (run `setup` first), [`Error::Db`](crate::Error::Db).
    pub async fn set_notify<C: ConnectionTrait>(&self, db: &C, on: bool) -> Result<()> {
        crate::notify::set_notify(db, &self.table, on).await
    }

    /// Whether this table's PostgreSQL NOTIFY trigger is on.
    ///
    /// # Errors
    ///
    /// As [`set_notify`](Self::set_notify).
    pub async fn notify_enabled<C: ConnectionTrait>(&self, db: &C) -> Result<bool> {
        crate::notify::notify_enabled(db, &self.table).await
    }

    /// Emits one JSON event through `db`, normally the caller's open transaction: the event
    /// exists if and only if that transaction commits. Returns the message id.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRoutingKey`](crate::Error::InvalidRoutingKey) (nothing is written),
    /// [`Error::Json`](crate::Error::Json), or [`Error::Db`](crate::Error::Db).
    pub async fn emit<C, T>(&self, db: &C, routing_key: &str, payload: &T) -> Result<Uuid>
    where
        C: ConnectionTrait,
        T: Serialize + ?Sized,
    {
        self.emit_event(db, OutboxEvent::json(routing_key, payload)?)
            .await
    }

    /// Emits one prepared [`OutboxEvent`] (eta, expiration, headers, other codecs).
    /// Returns its message id.
    ///
    /// # Errors
    ///
    /// As [`OutboxEvent::validate`] (nothing is written), [`Error::Db`](crate::Error::Db)
    /// when the insert fails.
    pub async fn emit_event<C: ConnectionTrait>(&self, db: &C, event: OutboxEvent) -> Result<Uuid> {
        event.validate()?;
        let id = event.message_id;
        let now = Utc::now();
        let model = active_model(event, db.get_database_backend(), now);
        let mut insert = Entity::insert(model);
        insert.query().into_table(Alias::new(self.table.as_str()));
        insert.exec_without_returning(db).await?;
        trace!(table = %self.table, message_id = %id, "emitted");
        Ok(id)
    }

    /// Emits many events with as few statements as possible, in the given order: ids grow in
    /// that order. Returns the message ids in the same order.
    ///
    /// On PostgreSQL each statement is one `INSERT … SELECT … FROM unnest(…)` of up to 10,000
    /// rows or 32 MiB of payload, with one array parameter per column; on SQLite and MySQL,
    /// multi-row `VALUES` lists of up to 1,000 rows or 4 MiB of payload. Either way nothing is committed here: the rows
    /// become visible, and the relay is woken, when the caller's transaction commits.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) when an event's content type is
    /// longer than 255 bytes (checked before anything is written); [`Error::Db`](crate::Error::Db)
    /// when an insert fails; inside a transaction nothing is then written once it rolls back.
    pub async fn emit_many<C, I>(&self, db: &C, events: I) -> Result<Vec<Uuid>>
    where
        C: ConnectionTrait,
        I: IntoIterator<Item = OutboxEvent>,
    {
        let backend = db.get_database_backend();
        let now = Utc::now();
        let events: Vec<OutboxEvent> = events.into_iter().collect();
        events.iter().try_for_each(OutboxEvent::validate)?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.message_id).collect();
        #[cfg(feature = "postgres")]
        if backend == DbBackend::Postgres {
            let mut chunk: Vec<OutboxEvent> = Vec::new();
            let mut chunk_bytes = 0;
            for event in events {
                let size = event.payload.len() + event.content_type.len();
                let full = chunk.len() == ROWS_PER_ARRAY_STATEMENT
                    || chunk_bytes + size > BYTES_PER_ARRAY_STATEMENT;
                if full && !chunk.is_empty() {
                    let rows = std::mem::take(&mut chunk);
                    db.execute_raw(unnest_insert(&self.table, rows, now))
                        .await?;
                    chunk_bytes = 0;
                }
                chunk_bytes += size;
                chunk.push(event);
            }
            if !chunk.is_empty() {
                db.execute_raw(unnest_insert(&self.table, chunk, now))
                    .await?;
            }
            trace!(table = %self.table, count = ids.len(), "emitted many");
            return Ok(ids);
        }
        let mut rows = events.into_iter().peekable();
        while let Some(first) = rows.next() {
            let shape = has_eta(&first);
            let mut bytes = first.payload.len();
            let mut chunk = vec![active_model(first, backend, now)];
            while chunk.len() < ROWS_PER_STATEMENT {
                let fits = |e: &OutboxEvent| {
                    has_eta(e) == shape && bytes + e.payload.len() <= BYTES_PER_STATEMENT
                };
                match rows.next_if(fits) {
                    Some(event) => {
                        bytes += event.payload.len();
                        chunk.push(active_model(event, backend, now));
                    }
                    None => break,
                }
            }
            let mut insert = Entity::insert_many(chunk);
            insert.query().into_table(Alias::new(self.table.as_str()));
            insert.exec_without_returning(db).await?;
        }
        trace!(table = %self.table, count = ids.len(), "emitted many");
        Ok(ids)
    }
}

/// Rows per statement in [`Outbox::emit_many`] on PostgreSQL, where each column travels as one
/// array parameter.
#[cfg(feature = "postgres")]
const ROWS_PER_ARRAY_STATEMENT: usize = 10_000;

/// Payload bytes per statement in [`Outbox::emit_many`] on PostgreSQL: large payloads split
/// the batch earlier, so one message to the server stays far below PostgreSQL's 1 GiB limit
/// (a single event may still carry up to that limit on its own).
#[cfg(feature = "postgres")]
const BYTES_PER_ARRAY_STATEMENT: usize = 32 << 20;

/// One `INSERT … SELECT … FROM unnest(…)` for many events on PostgreSQL: eleven array
/// parameters whatever the row count, sent in binary, parsed once. It is several times faster
/// than multi-row `VALUES` lists, whose SQL text and parameter count grow with the rows.
///
/// A missing eta leaves `send_after` to the database clock (`now()`, as the column default
/// does) and a missing expiry stays `NULL`; the `bool` arrays say which entries are set, since
/// the array parameters cannot carry `NULL` elements. `WITH ORDINALITY … ORDER BY` keeps the
/// given order, so ids grow in it.
#[cfg(feature = "postgres")]
fn unnest_insert(
    table: &TableName,
    events: Vec<OutboxEvent>,
    now: DateTime<Utc>,
) -> sea_orm::Statement {
    use sea_orm::Value;
    let n = events.len();
    let mut message_ids = Vec::with_capacity(n);
    let mut routing_keys = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut content_types = Vec::with_capacity(n);
    let mut headers = Vec::with_capacity(n);
    let (mut has_eta, mut etas) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut has_expiry, mut expiries) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut has_key, mut keys) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for event in events {
        headers.push(event.headers_json());
        message_ids.push(event.message_id);
        routing_keys.push(event.routing_key.into_string());
        payloads.push(event.payload);
        content_types.push(event.content_type);
        has_eta.push(event.eta.is_some());
        etas.push(event.eta.unwrap_or(now));
        has_expiry.push(event.expires_at.is_some());
        expiries.push(event.expires_at.unwrap_or(now));
        has_key.push(event.ordering_key.is_some());
        keys.push(event.ordering_key.unwrap_or_default());
    }
    let sql = format!(
        "INSERT INTO {table} (message_id, routing_key, payload, content_type, headers, send_after, expires_at, ordering_key) \
         SELECT m, r, p, c, h, CASE WHEN he THEN e ELSE now() END, CASE WHEN hx THEN x END, \
                CASE WHEN hk THEN k END \
         FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::text[], $5::jsonb[], \
                     $6::bool[], $7::timestamptz[], $8::bool[], $9::timestamptz[], \
                     $10::bool[], $11::text[]) \
              WITH ORDINALITY AS u(m, r, p, c, h, he, e, hx, x, hk, k, n) \
         ORDER BY n"
    );
    let values: Vec<Value> = vec![
        message_ids.into(),
        routing_keys.into(),
        payloads.into(),
        content_types.into(),
        headers.into(),
        has_eta.into(),
        etas.into(),
        has_expiry.into(),
        expiries.into(),
        has_key.into(),
        keys.into(),
    ];
    sea_orm::Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Rows of one multi-row `INSERT` must set the same columns; on PostgreSQL an event without
/// eta leaves `send_after` to the database clock, so runs are split where this changes.
fn has_eta(event: &OutboxEvent) -> bool {
    event.eta.is_some()
}

/// The active model of one event. On PostgreSQL and MySQL `created_at` and a missing eta are
/// left to the column defaults (the database clock); SQLite gets this host's time, written in
/// the one text format all of actix-outbox compares with.
fn active_model(event: OutboxEvent, backend: DbBackend, now: DateTime<Utc>) -> ActiveModel {
    let headers = event.headers_json();
    let db_clock = backend != DbBackend::Sqlite;
    ActiveModel {
        id: NotSet,
        message_id: Set(event.message_id),
        routing_key: Set(event.routing_key.into_string()),
        payload: Set(event.payload),
        content_type: Set(event.content_type),
        headers: Set(headers),
        created_at: if db_clock { NotSet } else { Set(now) },
        send_after: match event.eta {
            Some(eta) => Set(eta),
            None if db_clock => NotSet,
            None => Set(now),
        },
        expires_at: Set(event.expires_at),
        attempts: NotSet,
        last_error: NotSet,
        sent_at: NotSet,
        parked_at: NotSet,
        ordering_key: Set(event.ordering_key),
    }
}

/// Gets or creates the default outbox table `outbox`. See [`Outbox::setup`].
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), actix_outbox::Error> {
/// let db = sea_orm::Database::connect("sqlite://outbox.sqlite?mode=rwc").await?;
/// actix_outbox::setup(&db).await?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// As [`Outbox::setup`].
pub async fn setup<C>(db: &C) -> Result<()>
where
    C: ConnectionTrait + TransactionTrait,
{
    Outbox::default().setup(db).await
}

/// Emits one JSON event into the default table inside `db` (your transaction). See
/// [`Outbox::emit`].
///
/// # Examples
///
/// ```no_run
/// use sea_orm::TransactionTrait;
///
/// # async fn run(db: sea_orm::DatabaseConnection) -> Result<(), actix_outbox::Error> {
/// let txn = db.begin().await?;
/// // ... save the user through `txn` ...
/// actix_outbox::emit(&txn, "user.created", &serde_json::json!({"id": 123})).await?;
/// txn.commit().await?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// As [`Outbox::emit`].
pub async fn emit<C, T>(db: &C, routing_key: &str, payload: &T) -> Result<Uuid>
where
    C: ConnectionTrait,
    T: Serialize + ?Sized,
{
    Outbox::default().emit(db, routing_key, payload).await
}

/// Emits one prepared event into the default table. See [`Outbox::emit_event`].
///
/// # Errors
///
/// As [`Outbox::emit_event`].
pub async fn emit_event<C: ConnectionTrait>(db: &C, event: OutboxEvent) -> Result<Uuid> {
    Outbox::default().emit_event(db, event).await
}

/// Emits many events into the default table. See [`Outbox::emit_many`].
///
/// # Errors
///
/// As [`Outbox::emit_many`].
pub async fn emit_many<C, I>(db: &C, events: I) -> Result<Vec<Uuid>>
where
    C: ConnectionTrait,
    I: IntoIterator<Item = OutboxEvent>,
{
    Outbox::default().emit_many(db, events).await
}
