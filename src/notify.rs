//! The PostgreSQL NOTIFY trigger as an operator's switch: on (the default) or off.
//!
//! With the trigger on, every committing transaction that emitted wakes the relays at once.
//! The price: PostgreSQL serialises the commits of transactions that issued `NOTIFY` (each
//! holds a database-wide lock through its WAL flush), so under many small emitting
//! transactions a second the application's commit latency roughly doubles at p95 and p99
//! (BENCHMARKS.md, "Wake-ups"). With the trigger off, emitting commits group-commit like any
//! other, and relays find new rows by polling (`RelayConfig::with_adaptive_poll` in
//! `actix-outbox-actors`).
//!
//! The switch is `ALTER TABLE … ENABLE | DISABLE TRIGGER`: it lives in the catalog, holds for
//! every emitting process at once, and [`Outbox::setup`](crate::Outbox::setup) leaves it as
//! it finds it.

use sea_orm::{ConnectionTrait, DbBackend};

use crate::error::{Error, Result};
use crate::table_name::TableName;

/// The statement that turns the NOTIFY trigger of `table` on or off.
pub(crate) fn switch_sql(table: &TableName, on: bool) -> String {
    let verb = if on { "ENABLE" } else { "DISABLE" };
    format!("ALTER TABLE {table} {verb} TRIGGER {table}_notify")
}

/// The query for the state of the NOTIFY trigger of `table`: one row, column `enabled`
/// (boolean), NULL when the table or its trigger does not exist.
pub fn notify_state_query(table: &TableName) -> String {
    format!(
        "SELECT (SELECT tgenabled <> 'D' FROM pg_trigger \
         WHERE tgname = '{table}_notify' AND tgrelid = to_regclass('{table}')) AS enabled"
    )
}

/// The error for a backend without NOTIFY.
fn no_notify(backend: DbBackend) -> Error {
    Error::InvalidConfig {
        field: "notify",
        reason: format!(
            "NOTIFY wake-ups exist on PostgreSQL only; relays on {backend:?} always poll"
        ),
    }
}

/// Turns the NOTIFY trigger of `table` on or off (PostgreSQL).
pub(crate) async fn set_notify<C: ConnectionTrait>(
    db: &C,
    table: &TableName,
    on: bool,
) -> Result<()> {
    let backend = db.get_database_backend();
    if backend != DbBackend::Postgres {
        return Err(no_notify(backend));
    }
    // A missing trigger would make ALTER fail with a bare "trigger does not exist".
    notify_enabled(db, table).await?;
    db.execute_unprepared(&switch_sql(table, on)).await?;
    Ok(())
}

/// Whether the NOTIFY trigger of `table` is on (PostgreSQL).
pub(crate) async fn notify_enabled<C: ConnectionTrait>(db: &C, table: &TableName) -> Result<bool> {
    let backend = db.get_database_backend();
    if backend != DbBackend::Postgres {
        return Err(no_notify(backend));
    }
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            backend,
            notify_state_query(table),
        ))
        .await?;
    let enabled: Option<bool> = match row {
        Some(row) => row.try_get("", "enabled")?,
        None => None,
    };
    enabled.ok_or_else(|| Error::SchemaMismatch {
        table: table.to_string(),
        detail: "the table or its NOTIFY trigger does not exist: run `setup` first".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_names_the_tables_own_trigger() {
        let table = TableName::new("billing_outbox").expect("valid");
        assert_eq!(
            switch_sql(&table, false),
            "ALTER TABLE billing_outbox DISABLE TRIGGER billing_outbox_notify"
        );
        assert_eq!(
            switch_sql(&table, true),
            "ALTER TABLE billing_outbox ENABLE TRIGGER billing_outbox_notify"
        );
        let query = notify_state_query(&table);
        assert!(
            query.contains("tgname = 'billing_outbox_notify'"),
            "{query}"
        );
        assert!(query.contains("to_regclass('billing_outbox')"), "{query}");
    }

    #[test]
    fn backends_without_notify_get_a_clear_error() {
        let e = no_notify(DbBackend::Sqlite).to_string();
        assert!(e.contains("PostgreSQL only") && e.contains("Sqlite"), "{e}");
    }
}
