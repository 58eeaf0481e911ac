//! Parked rows, for operators: list them, send them again, or discard them.
//!
//! The relay parks a row it cannot deliver on its own (returned unroutable `max_attempts`
//! times without an alternate exchange, a message the broker cannot carry, a row that broke
//! its channel every time). A parked row stays in the table, is never sent by itself, and is
//! counted in `outbox_parked_rows`. Once its cause is fixed (a binding added, the row's
//! payload corrected, the broker's limits raised), [`Outbox::retry_parked`] sends it again;
//! [`Outbox::discard_parked`] deletes it for good.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};
use serde::Serialize;
use uuid::Uuid;

use crate::binding_key::BindingKey;
use crate::error::{Error, Result};
use crate::outbox::Outbox;
use crate::outbox_message::{Entity, Model};

/// One parked row, as an operator sees it (the payload is left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ParkedRow {
    /// The row's id (what [`Parked::Ids`] takes).
    pub id: i64,
    /// The message id it would be published with.
    pub message_id: Uuid,
    /// Its routing key.
    pub routing_key: String,
    /// Publishes tried.
    pub attempts: i32,
    /// Why it was parked (the last refusal).
    pub last_error: Option<String>,
    /// When it was emitted.
    pub created_at: DateTime<Utc>,
    /// When it was parked.
    pub parked_at: Option<DateTime<Utc>>,
    /// The payload's size in bytes.
    pub payload_bytes: usize,
}

impl From<Model> for ParkedRow {
    fn from(row: Model) -> Self {
        Self {
            id: row.id,
            message_id: row.message_id,
            routing_key: row.routing_key,
            attempts: row.attempts,
            last_error: row.last_error,
            created_at: row.created_at,
            parked_at: row.parked_at,
            payload_bytes: row.payload.len(),
        }
    }
}

/// Which parked rows an operation takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parked {
    /// Every parked row of the table.
    All,
    /// These row ids; ids of rows that are not parked are skipped.
    Ids(Vec<i64>),
}

impl Parked {
    /// The `AND …` condition for this selection (ids are integers: inlined).
    fn condition(&self) -> Result<String> {
        match self {
            Parked::All => Ok(String::new()),
            Parked::Ids(ids) if ids.is_empty() => Err(Error::InvalidConfig {
                field: "ids",
                reason: "no row id given (use `Parked::All` for every parked row)".to_owned(),
            }),
            Parked::Ids(ids) => {
                let list: Vec<String> = ids.iter().map(i64::to_string).collect();
                Ok(format!(" AND id IN ({})", list.join(",")))
            }
        }
    }
}

impl Outbox {
    /// Up to `limit` parked rows, oldest first, whose routing key matches `key` (a binding key
    /// such as `user.*` or `#`; `None` takes every key).
    ///
    /// # Errors
    ///
    /// [`Error::SchemaMismatch`] when the table does not exist, [`Error::Db`] when the query
    /// fails.
    pub async fn parked<C: ConnectionTrait>(
        &self,
        db: &C,
        limit: u32,
        key: Option<&BindingKey>,
    ) -> Result<Vec<ParkedRow>> {
        use sea_orm::EntityTrait;
        let t = self.table();
        let backend = db.get_database_backend();
        let rows = async {
            let mut found = Vec::new();
            let mut after = 0_i64;
            // Filtered in pages: a binding key's wildcards do not translate to SQL.
            while found.len() < limit as usize {
                let sql = format!(
                    "SELECT {} FROM {t} WHERE parked_at IS NOT NULL AND id > {after} \
                 ORDER BY id LIMIT 500",
                    crate::schema::COLUMNS
                );
                let page = Entity::find()
                    .from_raw_sql(Statement::from_string(backend, sql))
                    .all(db)
                    .await?;
                let Some(last) = page.last() else { break };
                after = last.id;
                let matching = page
                    .into_iter()
                    .filter(|row| key.is_none_or(|k| k.matches(&row.routing_key)));
                found.extend(matching.map(ParkedRow::from));
            }
            found.truncate(limit as usize);
            Ok(found)
        };
        crate::schema::name_missing_table(db, t, rows.await).await
    }

    /// Un-parks the selected rows so that relays send them again: clears `parked_at`, the
    /// attempts and the last error, makes them due now, and (PostgreSQL) wakes the relays.
    /// Returns how many rows were un-parked.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an empty id list, [`Error::SchemaMismatch`] when the table
    /// does not exist, [`Error::Db`] when the update fails.
    pub async fn retry_parked<C: ConnectionTrait>(&self, db: &C, which: &Parked) -> Result<u64> {
        let t = self.table();
        let condition = which.condition()?;
        let backend = db.get_database_backend();
        let stmt = match backend {
            DbBackend::Postgres => Statement::from_string(
                backend,
                format!(
                    "UPDATE {t} SET parked_at = NULL, attempts = 0, last_error = NULL, \
                     send_after = now() WHERE parked_at IS NOT NULL{condition}"
                ),
            ),
            DbBackend::MySql => Statement::from_string(
                backend,
                format!(
                    "UPDATE {t} SET parked_at = NULL, attempts = 0, last_error = NULL, \
                     send_after = UTC_TIMESTAMP(6) WHERE parked_at IS NOT NULL{condition}"
                ),
            ),
            _ => Statement::from_sql_and_values(
                backend,
                format!(
                    "UPDATE {t} SET parked_at = NULL, attempts = 0, last_error = NULL, \
                     send_after = ? WHERE parked_at IS NOT NULL{condition}"
                ),
                [Value::from(Utc::now())],
            ),
        };
        let retried = db.execute_raw(stmt).await.map_err(Error::from);
        let retried = crate::schema::name_missing_table(db, t, retried)
            .await?
            .rows_affected();
        if retried > 0 && backend == DbBackend::Postgres {
            // The trigger only fires on INSERT: tell the relays themselves.
            let notify = format!(
                "SELECT pg_notify(channel, '') FROM ({}) AS c WHERE channel IS NOT NULL",
                crate::schema::notify_channel_query(t)
            );
            db.execute_unprepared(&notify).await?;
        }
        Ok(retried)
    }

    /// Deletes the selected parked rows for good. Returns how many were deleted.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an empty id list, [`Error::SchemaMismatch`] when the table
    /// does not exist, [`Error::Db`] when the delete fails.
    pub async fn discard_parked<C: ConnectionTrait>(&self, db: &C, which: &Parked) -> Result<u64> {
        let t = self.table();
        let condition = which.condition()?;
        let sql = format!("DELETE FROM {t} WHERE parked_at IS NOT NULL{condition}");
        let backend = db.get_database_backend();
        let deleted = db
            .execute_raw(Statement::from_string(backend, sql))
            .await
            .map_err(Error::from);
        Ok(crate::schema::name_missing_table(db, t, deleted)
            .await?
            .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_become_conditions() {
        assert_eq!(Parked::All.condition().expect("all"), "");
        assert_eq!(
            Parked::Ids(vec![3, 1]).condition().expect("ids"),
            " AND id IN (3,1)"
        );
        assert!(matches!(
            Parked::Ids(Vec::new()).condition(),
            Err(Error::InvalidConfig { field: "ids", .. })
        ));
    }
}
