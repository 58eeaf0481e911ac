//! The relay's SQL, per backend: claim, finish, record failures, next due time, purge.
//!
//! Pure statement builders (unit-tested below); `batch` runs them. Ids are inlined as
//! integers read from the database, the table name is a validated identifier, and everything
//! else is bound.

use std::time::Duration;

use actix_outbox::__private::COLUMNS;
use actix_outbox::TableName;
use chrono::{DateTime, Utc};
use sea_orm::{DbBackend, Statement, Value};

/// Builds the relay's statements for one table on one backend.
#[derive(Debug, Clone)]
pub(crate) struct RelaySql {
    backend: DbBackend,
    table: TableName,
}

impl RelaySql {
    pub(crate) fn new(backend: DbBackend, table: TableName) -> Self {
        Self { backend, table }
    }

    pub(crate) fn backend(&self) -> DbBackend {
        self.backend
    }

    /// Sets up this (PostgreSQL) claim transaction, in one round trip:
    ///
    /// - bounds how long it may sit idle: past `lease` the server ends the session, which
    ///   releases the claimed rows' locks;
    /// - turns JIT compilation off. The claim's ordering-key condition is a correlated
    ///   subquery the planner costs as if it ran for every due row, so on a large backlog the
    ///   estimate crosses `jit_above_cost` and PostgreSQL spent ~15 ms compiling a query that
    ///   runs in under a millisecond (seen here: a 500-row claim went from 0.3 ms to 93 ms,
    ///   and a drain from ~30,000 to ~7,000 rows/s).
    ///
    /// It ends by opening the savepoint the claim runs in (see `ordering::hold_back`).
    fn postgres_lease(lease: Duration) -> String {
        format!(
            "SELECT set_config('idle_in_transaction_session_timeout', '{}', true), \
             set_config('jit', 'off', true); SAVEPOINT {}",
            lease.as_millis().max(1),
            super::ordering::CLAIM_SAVEPOINT
        )
    }

    /// Bounds how long this (MySQL/MariaDB) claim transaction's connection may sit idle:
    /// past `lease` (whole seconds, at least one) the server closes it, which rolls the
    /// transaction back and releases the claimed rows. [`lease_end`](Self::lease_end) restores
    /// the server's default before the connection goes back to the pool.
    fn mysql_lease(lease: Duration) -> String {
        format!("SET SESSION wait_timeout = {}", lease.as_secs().max(1))
    }

    /// Ends [`mysql_lease`](Self::mysql_lease).
    const MYSQL_LEASE_END: &str = "SET SESSION wait_timeout = @@GLOBAL.wait_timeout";

    /// The statement that opens a claim transaction on this server backend (its lease).
    pub(crate) fn lease(&self, lease: Duration) -> String {
        match self.backend {
            DbBackend::MySql => Self::mysql_lease(lease),
            _ => Self::postgres_lease(lease),
        }
    }

    /// The statement that ends the lease before the commit, where it outlives the
    /// transaction (MySQL's session variable).
    pub(crate) fn lease_end(&self) -> Option<&'static str> {
        (self.backend == DbBackend::MySql).then_some(Self::MYSQL_LEASE_END)
    }

    /// Locks again the rows `ids` (still unsent) after the claim's savepoint was rolled
    /// back, skipping any another batch took meanwhile; in claim order.
    pub(crate) fn relock(&self, ids: &[i64]) -> Statement {
        let t = &self.table;
        let ids = if ids.is_empty() {
            "NULL".to_owned()
        } else {
            id_list(ids)
        };
        Statement::from_string(
            self.backend,
            format!(
                "SELECT {COLUMNS} FROM {t} WHERE id IN ({ids}) AND sent_at IS NULL \
                 ORDER BY send_after, id FOR UPDATE SKIP LOCKED"
            ),
        )
    }

    /// Up to `limit` due rows, oldest due first. On PostgreSQL the rows are locked with
    /// `SKIP LOCKED`, so concurrent relays claim disjoint batches; the partial due index
    /// makes this a range scan whatever the backlog.
    ///
    /// A row with an ordering key is left out while an older unsent row of its key cannot go
    /// in the same batch: parked, or not due yet (an eta, a refused publish's backoff). Older
    /// rows that are due but locked by another batch cannot be seen here; `key_runs` finds
    /// them after the claim.
    pub(crate) fn claim(&self, limit: u32, now: DateTime<Utc>) -> Statement {
        let t = &self.table;
        let due = "sent_at IS NULL AND parked_at IS NULL";
        let (now_sql, bound) = self.now_sql(now);
        let older_blocked = self.not_blocked(now_sql);
        let lock = match self.backend {
            DbBackend::Postgres | DbBackend::MySql => " FOR UPDATE SKIP LOCKED",
            _ => "",
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM {t} o WHERE {due} AND send_after <= {now_sql} \
             AND {older_blocked} ORDER BY send_after, id LIMIT {limit}{lock}"
        );
        match bound {
            None => Statement::from_string(self.backend, sql),
            Some(now) => Statement::from_sql_and_values(self.backend, sql, [now]),
        }
    }

    /// The database clock as SQL, and the value to bind for it (SQLite: this host's `now`,
    /// bound once as `?1`). MySQL's is in UTC whatever the session's time zone, as the
    /// table's `DATETIME(6)` columns are.
    fn now_sql(&self, now: DateTime<Utc>) -> (&'static str, Option<Value>) {
        match self.backend {
            DbBackend::Postgres => ("now()", None),
            DbBackend::MySql => ("UTC_TIMESTAMP(6)", None),
            _ => ("?1", Some(Value::from(now))),
        }
    }

    /// The condition that row `o` is not blocked by an older unsent row of its ordering key
    /// that cannot go before it now (parked, or not due by `now_sql`).
    fn not_blocked(&self, now_sql: &str) -> String {
        let t = &self.table;
        format!(
            "(ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM {t} p \
             WHERE p.ordering_key = o.ordering_key AND p.id < o.id AND p.sent_at IS NULL \
             AND (p.parked_at IS NOT NULL OR p.send_after > {now_sql})))"
        )
    }

    /// The unsent rows (`id`, `ordering_key`) of the given keys up to id `max_id`, in id
    /// order, locked or not: what a batch's rows of those keys must be a prefix of.
    pub(crate) fn key_runs(&self, keys: &[&str], max_id: i64) -> Statement {
        let t = &self.table;
        match self.backend {
            DbBackend::Postgres => Statement::from_sql_and_values(
                self.backend,
                format!(
                    "SELECT id, ordering_key FROM {t} WHERE sent_at IS NULL \
                     AND ordering_key = ANY($1) AND id <= {max_id} ORDER BY id"
                ),
                [Value::from(
                    keys.iter()
                        .map(|k| (*k).to_owned())
                        .collect::<Vec<String>>(),
                )],
            ),
            _ => {
                let marks = vec!["?"; keys.len()].join(", ");
                Statement::from_sql_and_values(
                    self.backend,
                    format!(
                        "SELECT id, ordering_key FROM {t} WHERE sent_at IS NULL \
                         AND ordering_key IN ({marks}) AND id <= {max_id} ORDER BY id"
                    ),
                    keys.iter().map(|k| Value::from((*k).to_owned())),
                )
            }
        }
    }

    /// Deletes confirmed rows, or (keep mode) marks them sent.
    ///
    /// Without bound values on PostgreSQL: run it with `execute_unprepared` (one round trip
    /// in the simple protocol). The id list differs in every batch, so preparing it would
    /// only churn the statement cache.
    pub(crate) fn finish(&self, ids: &[i64], keep: bool, now: DateTime<Utc>) -> Statement {
        let t = &self.table;
        let n = ids.len();
        let ids = id_list(ids);
        match (keep, self.backend) {
            // `LIMIT` the claimed count: InnoDB locks a row before the server sees it is past
            // the end of the id range, so without it the statement reached for the next row,
            // held by another relay's batch, and two such deletes deadlocked (seen here).
            (false, DbBackend::MySql) => Statement::from_string(
                self.backend,
                format!("DELETE FROM {t} WHERE id IN ({ids}) LIMIT {n}"),
            ),
            (false, _) => {
                Statement::from_string(self.backend, format!("DELETE FROM {t} WHERE id IN ({ids})"))
            }
            (true, DbBackend::Postgres) => Statement::from_string(
                self.backend,
                format!("UPDATE {t} SET sent_at = now() WHERE id IN ({ids})"),
            ),
            (true, DbBackend::MySql) => Statement::from_string(
                self.backend,
                format!("UPDATE {t} SET sent_at = UTC_TIMESTAMP(6) WHERE id IN ({ids}) LIMIT {n}"),
            ),
            (true, _) => Statement::from_sql_and_values(
                self.backend,
                format!("UPDATE {t} SET sent_at = ? WHERE id IN ({ids})"),
                [Value::from(now)],
            ),
        }
    }

    /// Records a refused publish of row `id`: one more attempt, the error, a later due time,
    /// and (when `park`) the parking time.
    pub(crate) fn record_failure(
        &self,
        id: i64,
        error: &str,
        retry_in: Duration,
        park: bool,
        now: DateTime<Utc>,
    ) -> Statement {
        let t = &self.table;
        let error = Value::from(truncate(error, 1_000).to_owned());
        match self.backend {
            DbBackend::Postgres => Statement::from_sql_and_values(
                self.backend,
                format!(
                    "UPDATE {t} SET attempts = attempts + 1, last_error = $1, \
                     send_after = now() + $2 * interval '1 millisecond', \
                     parked_at = CASE WHEN $3 THEN now() ELSE NULL END WHERE id = {id}"
                ),
                [error, Value::from(millis(retry_in)), Value::from(park)],
            ),
            DbBackend::MySql => Statement::from_sql_and_values(
                self.backend,
                format!(
                    "UPDATE {t} SET attempts = attempts + 1, last_error = ?, \
                     send_after = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
                     parked_at = CASE WHEN ? THEN UTC_TIMESTAMP(6) ELSE NULL END WHERE id = {id}"
                ),
                [
                    error,
                    Value::from(millis(retry_in).saturating_mul(1_000)),
                    Value::from(park),
                ],
            ),
            _ => {
                let due = now + chrono::TimeDelta::from_std(retry_in).unwrap_or_default();
                let parked = park.then_some(now);
                Statement::from_sql_and_values(
                    self.backend,
                    format!(
                        "UPDATE {t} SET attempts = attempts + 1, last_error = ?, \
                         send_after = ?, parked_at = ? WHERE id = {id}"
                    ),
                    [error, Value::from(due), Value::from(parked)],
                )
            }
        }
    }

    /// The earliest due time of the unsent rows, and the database's "now" to compare it with
    /// (on SQLite, this host's clock: `now` is bound back). Rows held back by an older row of
    /// their ordering key that is parked or not due yet do not count: the relay wakes for that
    /// older row's due time, not at once for rows it could not claim.
    pub(crate) fn next_due(&self, now: DateTime<Utc>) -> Statement {
        let t = &self.table;
        let due = "sent_at IS NULL AND parked_at IS NULL";
        let (now_sql, bound) = self.now_sql(now);
        let not_blocked = self.not_blocked(now_sql);
        let sql = format!(
            "SELECT min(send_after) AS next, {now_sql} AS db_now FROM {t} o \
             WHERE {due} AND {not_blocked}"
        );
        match bound {
            None => Statement::from_string(self.backend, sql),
            Some(now) => Statement::from_sql_and_values(self.backend, sql, [now]),
        }
    }

    /// The table's gauges in one row: `due` (rows due now, unsent, not parked), `oldest` (the
    /// earliest `send_after` among them), `parked`, `kept` (sent rows kept), `db_now`. Each
    /// count runs on a partial index.
    pub(crate) fn gauges(&self, now: DateTime<Utc>) -> Statement {
        let t = &self.table;
        let due = "sent_at IS NULL AND parked_at IS NULL AND send_after <=";
        match self.backend {
            DbBackend::Postgres => Statement::from_string(
                self.backend,
                format!(
                    "SELECT (SELECT count(*) FROM {t} WHERE {due} now()) AS due, \
                     (SELECT min(send_after) FROM {t} WHERE {due} now()) AS oldest, \
                     (SELECT count(*) FROM {t} WHERE parked_at IS NOT NULL) AS parked, \
                     (SELECT count(*) FROM {t} WHERE sent_at IS NOT NULL) AS kept, \
                     now() AS db_now"
                ),
            ),
            DbBackend::MySql => Statement::from_string(
                self.backend,
                format!(
                    "SELECT (SELECT count(*) FROM {t} WHERE {due} UTC_TIMESTAMP(6)) AS due, \
                     (SELECT min(send_after) FROM {t} WHERE {due} UTC_TIMESTAMP(6)) AS oldest, \
                     (SELECT count(*) FROM {t} WHERE parked_at IS NOT NULL) AS parked, \
                     (SELECT count(*) FROM {t} WHERE sent_at IS NOT NULL) AS kept, \
                     UTC_TIMESTAMP(6) AS db_now"
                ),
            ),
            _ => Statement::from_sql_and_values(
                self.backend,
                format!(
                    "SELECT (SELECT count(*) FROM {t} WHERE {due} ?1) AS due, \
                     (SELECT min(send_after) FROM {t} WHERE {due} ?1) AS oldest, \
                     (SELECT count(*) FROM {t} WHERE parked_at IS NOT NULL) AS parked, \
                     (SELECT count(*) FROM {t} WHERE sent_at IS NOT NULL) AS kept, \
                     ?1 AS db_now"
                ),
                [Value::from(now)],
            ),
        }
    }

    /// Deletes up to `limit` rows sent more than `retention` ago (keep mode).
    pub(crate) fn purge(&self, retention: Duration, limit: u32, now: DateTime<Utc>) -> Statement {
        let t = &self.table;
        match self.backend {
            DbBackend::Postgres => Statement::from_sql_and_values(
                self.backend,
                format!(
                    "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE sent_at IS NOT NULL \
                     AND sent_at < now() - $1 * interval '1 millisecond' LIMIT {limit})"
                ),
                [Value::from(millis(retention))],
            ),
            // MySQL cannot delete from a table it selects from in a subquery; its `DELETE`
            // takes `ORDER BY … LIMIT` itself.
            DbBackend::MySql => Statement::from_sql_and_values(
                self.backend,
                format!(
                    "DELETE FROM {t} WHERE sent_at IS NOT NULL \
                     AND sent_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND \
                     ORDER BY sent_at LIMIT {limit}"
                ),
                [Value::from(millis(retention).saturating_mul(1_000))],
            ),
            _ => {
                let cutoff = now - chrono::TimeDelta::from_std(retention).unwrap_or_default();
                Statement::from_sql_and_values(
                    self.backend,
                    format!(
                        "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE sent_at IS NOT NULL \
                         AND sent_at < ? LIMIT {limit})"
                    ),
                    [Value::from(cutoff)],
                )
            }
        }
    }
}

fn id_list(ids: &[i64]) -> String {
    let mut out = String::with_capacity(ids.len() * 8);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&id.to_string());
    }
    out
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(backend: DbBackend) -> RelaySql {
        RelaySql::new(backend, TableName::new("app_outbox").expect("valid"))
    }

    #[test]
    fn postgres_claim_skips_locked_rows_in_due_order() {
        let s = sql(DbBackend::Postgres).claim(500, Utc::now()).to_string();
        assert!(s.contains("FROM app_outbox o WHERE sent_at IS NULL AND parked_at IS NULL"));
        assert!(
            s.contains("p.ordering_key = o.ordering_key AND p.id < o.id AND p.sent_at IS NULL"),
            "an older unsent row of the key is looked for: {s}"
        );
        assert!(s.contains("send_after <= now()"), "database clock: {s}");
        assert!(
            s.ends_with("ORDER BY send_after, id LIMIT 500 FOR UPDATE SKIP LOCKED"),
            "{s}"
        );
    }

    #[test]
    fn sqlite_claim_binds_the_time_and_locks_nothing() {
        let stmt = sql(DbBackend::Sqlite).claim(10, Utc::now());
        assert!(stmt.sql.contains("send_after <= ?1"));
        assert!(stmt.sql.contains("p.send_after > ?1"), "{}", stmt.sql);
        assert!(!stmt.sql.contains("FOR UPDATE"));
        assert_eq!(stmt.values.map(|v| v.0.len()), Some(1));
    }

    #[test]
    fn mysql_claims_skip_locked_rows_by_the_utc_clock() {
        let mysql = sql(DbBackend::MySql);
        let claim = mysql.claim(50, Utc::now());
        assert!(
            claim.sql.contains("send_after <= UTC_TIMESTAMP(6)"),
            "{}",
            claim.sql
        );
        assert!(
            claim.sql.ends_with("LIMIT 50 FOR UPDATE SKIP LOCKED"),
            "{}",
            claim.sql
        );
        assert!(claim.values.is_none(), "the database clock, nothing bound");
        let failure =
            mysql.record_failure(3, "refused", Duration::from_millis(250), false, Utc::now());
        assert!(
            failure.sql.contains("INTERVAL ? MICROSECOND"),
            "{}",
            failure.sql
        );
        let values = failure.values.expect("bound").0;
        assert_eq!(values[1], Value::from(250_000_i64), "microseconds");
        let delete = mysql.finish(&[4, 5, 6], false, Utc::now()).sql;
        assert_eq!(delete, "DELETE FROM app_outbox WHERE id IN (4,5,6) LIMIT 3");
        let keep = mysql.finish(&[4], true, Utc::now()).sql;
        assert!(keep.ends_with("WHERE id IN (4) LIMIT 1"), "{keep}");
        let purge = mysql.purge(Duration::from_secs(1), 100, Utc::now()).sql;
        assert!(purge.ends_with("ORDER BY sent_at LIMIT 100"), "{purge}");
        assert!(
            !purge.contains("SELECT"),
            "no subquery on the target table: {purge}"
        );
        assert_eq!(
            mysql.lease(Duration::from_millis(1_500)),
            "SET SESSION wait_timeout = 1"
        );
        assert!(mysql.lease_end().is_some(), "the session variable is reset");
        assert!(sql(DbBackend::Postgres).lease_end().is_none());
    }

    #[test]
    fn the_claim_transaction_has_a_lease_and_no_jit() {
        let s = sql(DbBackend::Postgres).lease(Duration::from_secs(4));
        assert!(
            s.contains("'idle_in_transaction_session_timeout', '4000', true"),
            "{s}"
        );
        assert!(s.contains("set_config('jit', 'off', true)"), "{s}");
        assert!(s.ends_with("; SAVEPOINT outbox_claim"), "{s}");
        let relock = sql(DbBackend::Postgres).relock(&[4, 2]).sql;
        assert!(
            relock.contains("WHERE id IN (4,2) AND sent_at IS NULL"),
            "{relock}"
        );
        assert!(relock.ends_with("FOR UPDATE SKIP LOCKED"), "{relock}");
    }

    #[test]
    fn key_runs_bind_every_key() {
        let pg = sql(DbBackend::Postgres).key_runs(&["a", "b"], 41);
        assert!(
            pg.sql.contains("ordering_key = ANY($1) AND id <= 41"),
            "{}",
            pg.sql
        );
        assert_eq!(pg.values.map(|v| v.0.len()), Some(1), "one array");
        let lite = sql(DbBackend::Sqlite).key_runs(&["a", "b", "c"], 7);
        assert!(
            lite.sql.contains("ordering_key IN (?, ?, ?) AND id <= 7"),
            "{}",
            lite.sql
        );
    }

    #[test]
    fn finish_deletes_or_marks() {
        let now = Utc::now();
        let delete = sql(DbBackend::Postgres).finish(&[3, 1, 2], false, now);
        assert_eq!(delete.sql, "DELETE FROM app_outbox WHERE id IN (3,1,2)");
        assert!(delete.values.is_none(), "run unprepared");
        let keep = sql(DbBackend::Postgres).finish(&[7], true, now);
        assert_eq!(
            keep.sql,
            "UPDATE app_outbox SET sent_at = now() WHERE id IN (7)"
        );
        let sqlite = sql(DbBackend::Sqlite).finish(&[4, 5], false, now);
        assert_eq!(sqlite.sql, "DELETE FROM app_outbox WHERE id IN (4,5)");
    }

    #[test]
    fn failure_record_truncates_long_errors() {
        let long = "é".repeat(2_000);
        let stmt = sql(DbBackend::Sqlite).record_failure(
            9,
            &long,
            Duration::from_secs(1),
            true,
            Utc::now(),
        );
        let values = stmt.values.expect("bound").0;
        match &values[0] {
            Value::String(Some(s)) => assert!(s.len() <= 1_000),
            other => panic!("unexpected {other:?}"),
        }
        assert!(stmt.sql.ends_with("WHERE id = 9"));
    }

    #[test]
    fn purge_is_bounded() {
        let s = sql(DbBackend::Postgres)
            .purge(Duration::from_secs(60), 1_000, Utc::now())
            .sql;
        assert!(s.contains("LIMIT 1000"), "{s}");
    }
}
