//! The ledger of a fault case: [`FaultRig`] queries over the workers' record table and the
//! outbox table (rows left, `done` records, attempts, latencies, in-flight handlers, a relay
//! mid-batch), the waits built on them ([`FaultRig::settle`], [`FaultRig::wait_handled`],
//! [`FaultRig::wait_recovered`]), what a case found ([`Tally`], [`DeadLetter`], [`Finish`])
//! and [`report`], which prints and records one result row.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;

use super::rig::FaultRig;
use super::wait_for;

impl FaultRig {
    // ---- the ledger

    async fn ints(&self, sql: &str) -> Vec<i64> {
        let rows = self
            .db
            .query_all_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("query {sql:?} failed: {e}"));
        rows.iter()
            .map(|r| r.try_get_by_index::<i64>(0).expect("a bigint column"))
            .collect()
    }

    async fn int(&self, sql: &str) -> i64 {
        self.ints(sql).await.first().copied().unwrap_or_default()
    }

    /// Rows left in the outbox table.
    pub async fn outbox_rows(&self) -> i64 {
        self.int(&format!("SELECT count(*) FROM {}", self.names.outbox_table))
            .await
    }

    /// `done` records in the ledger (duplicates included).
    pub async fn done_rows(&self) -> i64 {
        self.int(&format!(
            "SELECT count(*) FROM {} WHERE phase = 'done'",
            self.names.seen_table
        ))
        .await
    }

    /// `start` records minus `done` records of worker instance `instance`: its handlers in
    /// flight (needs `record_starts`).
    pub async fn in_flight(&self, instance: &str) -> i64 {
        self.int(&format!(
            "SELECT count(*) FILTER (WHERE phase = 'start') - count(*) FILTER (WHERE phase = 'done') \
             FROM {} WHERE worker = '{instance}'",
            self.names.seen_table
        ))
        .await
    }

    /// Message ids with a record of `phase` by worker instance `instance`.
    pub async fn ids_of(&self, instance: &str, phase: &str) -> HashSet<Uuid> {
        let sql = format!(
            "SELECT DISTINCT message_id FROM {} WHERE worker = '{instance}' AND phase = '{phase}'",
            self.names.seen_table
        );
        self.uuids(&sql).await.into_iter().collect()
    }

    /// The attempt numbers of the `done` records of `ids`.
    pub async fn attempts_of(&self, ids: &[Uuid]) -> Vec<i64> {
        let list: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
        self.ints(&format!(
            "SELECT attempt::bigint FROM {} WHERE phase = 'done' AND message_id IN ({})",
            self.names.seen_table,
            list.join(", ")
        ))
        .await
    }

    /// `done` records written by worker instance `instance` after `since`.
    pub async fn finished_by_after(&self, instance: &str, since: DateTime<Utc>) -> i64 {
        let statement = Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "SELECT count(*) FROM {} WHERE phase = 'done' AND worker = $1 AND handled_at > $2",
                self.names.seen_table
            ),
            [instance.into(), since.into()],
        );
        let row = self
            .db
            .query_one_raw(statement)
            .await
            .expect("count records")
            .expect("one row");
        row.try_get_by_index::<i64>(0).expect("a count")
    }

    async fn uuids(&self, sql: &str) -> Vec<Uuid> {
        let rows = self
            .db
            .query_all_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("query {sql:?} failed: {e}"));
        rows.iter()
            .map(|r| r.try_get_by_index::<Uuid>(0).expect("a uuid column"))
            .collect()
    }

    /// How many `done` records each message id has.
    pub async fn done_counts(&self) -> HashMap<Uuid, i64> {
        let sql = format!(
            "SELECT message_id, count(*) FROM {} WHERE phase = 'done' GROUP BY message_id",
            self.names.seen_table
        );
        let rows = self
            .db
            .query_all_raw(Statement::from_string(DbBackend::Postgres, sql.clone()))
            .await
            .unwrap_or_else(|e| panic!("query {sql:?} failed: {e}"));
        rows.iter()
            .map(|r| {
                let id = r.try_get_by_index::<Uuid>(0).expect("uuid");
                let n = r.try_get_by_index::<i64>(1).expect("count");
                (id, n)
            })
            .collect()
    }

    /// Counts `expected` against the ledger.
    pub async fn tally(&self, expected: &[Uuid]) -> Tally {
        let counts = self.done_counts().await;
        let wanted: HashSet<Uuid> = expected.iter().copied().collect();
        let lost: Vec<Uuid> = wanted
            .iter()
            .filter(|id| !counts.contains_key(id))
            .copied()
            .collect();
        let duplicates = counts
            .iter()
            .filter(|(id, _)| wanted.contains(id))
            .map(|(_, n)| (*n - 1) as usize)
            .sum();
        let unexpected = counts.keys().filter(|id| !wanted.contains(id)).count();
        let [max_latency, p99_latency, p50_latency] = self.latencies().await;
        Tally {
            emitted: wanted.len(),
            handled: wanted.len() - lost.len(),
            duplicates,
            lost: lost.len(),
            lost_sample: lost.into_iter().take(5).collect(),
            unexpected,
            max_latency,
            p99_latency,
            p50_latency,
        }
    }

    /// Max, 99th and 50th percentile of the time from emit to first handling, over events
    /// that carry `emitted_at`.
    async fn latencies(&self) -> [Option<Duration>; 3] {
        let ms = |q: &str| format!("(EXTRACT(EPOCH FROM {q}) * 1000)::bigint");
        let sql = format!(
            "SELECT {}, {}, {} FROM (SELECT min(handled_at) - min(emitted_at) AS d FROM {} \
             WHERE phase = 'done' AND emitted_at IS NOT NULL GROUP BY message_id) s",
            ms("max(d)"),
            ms("percentile_cont(0.99) WITHIN GROUP (ORDER BY d)"),
            ms("percentile_cont(0.5) WITHIN GROUP (ORDER BY d)"),
            self.names.seen_table
        );
        let row = self
            .db
            .query_one_raw(Statement::from_string(DbBackend::Postgres, sql.clone()))
            .await
            .unwrap_or_else(|e| panic!("query {sql:?} failed: {e}"));
        let get = |i| {
            row.as_ref()
                .and_then(|r| r.try_get_by_index::<Option<i64>>(i).ok().flatten())
                .map(|ms| Duration::from_millis(ms.max(0) as u64))
        };
        [get(0), get(1), get(2)]
    }

    /// Waits until every id of `expected` has a `done` record or `timeout` passed, and
    /// returns the tally either way (`lost` > 0 after a timeout).
    pub async fn settle(&self, expected: &[Uuid], timeout: Duration) -> Tally {
        let wanted = expected.len() as i64;
        let sql = format!(
            "SELECT count(DISTINCT message_id) FROM {} WHERE phase = 'done'",
            self.names.seen_table
        );
        // Large ledgers (the soak) are polled less often.
        let every = Duration::from_millis(if wanted > 100_000 { 2_000 } else { 100 });
        let start = Instant::now();
        loop {
            if self.int(&sql).await >= wanted || start.elapsed() >= timeout {
                let tally = self.tally(expected).await;
                if tally.lost == 0 || start.elapsed() >= timeout {
                    return tally;
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Waits (bounded) until every id of `expected` has a `done` record; panics naming the
    /// ids never handled.
    pub async fn wait_handled(&self, expected: &[Uuid], timeout: Duration) -> Tally {
        let tally = self.settle(expected, timeout).await;
        assert!(
            tally.lost == 0,
            "[{}] after {timeout:?}: {} of {} handled, {} NEVER HANDLED (e.g. {:?}); outbox rows left: {}",
            self.case,
            tally.handled,
            tally.emitted,
            tally.lost,
            tally.lost_sample,
            self.outbox_rows().await
        );
        tally
    }

    /// Waits (bounded) until an event emitted after `since` was handled: the whole path
    /// (emit → relay → broker → worker) works again and any backlog before it is drained.
    /// Returns the time from `since` to that event's handling.
    pub async fn wait_recovered(&self, since: DateTime<Utc>, timeout: Duration) -> Duration {
        let sql = format!(
            "SELECT min(handled_at) FROM {} WHERE phase = 'done' AND emitted_at > $1",
            self.names.seen_table
        );
        let first = wait_for(
            &format!(
                "[{}] an event emitted after the fault to be handled",
                self.case
            ),
            timeout,
            || async { self.first_time(&sql, since).await },
        )
        .await;
        (first - since).to_std().unwrap_or_default()
    }

    /// The time from `since` to the first record written after it, if any: when handling
    /// resumed (whatever the event).
    pub async fn resumed_after(&self, since: DateTime<Utc>) -> Option<Duration> {
        let sql = format!(
            "SELECT min(handled_at) FROM {} WHERE phase = 'done' AND handled_at > $1",
            self.names.seen_table
        );
        let first = self.first_time(&sql, since).await?;
        (first - since).to_std().ok()
    }

    async fn first_time(&self, sql: &str, since: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let statement = Statement::from_sql_and_values(DbBackend::Postgres, sql, [since.into()]);
        let row = self.db.query_one_raw(statement).await.ok()??;
        row.try_get_by_index::<Option<DateTime<Utc>>>(0).ok()?
    }

    /// Whether a relay holds a claimed batch right now: a session of this database is inside
    /// a transaction whose last statement was the claim of this case's table.
    pub async fn relay_mid_batch(&self) -> bool {
        let claim = format!(
            "%FROM {} o WHERE %FOR UPDATE SKIP LOCKED%",
            self.names.outbox_table
        );
        let statement = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT count(*) FROM pg_stat_activity \
             WHERE state IN ('active', 'idle in transaction') AND query LIKE $1 \
             AND pid <> pg_backend_pid()",
            [claim.into()],
        );
        match self.db.query_one_raw(statement).await {
            Ok(Some(row)) => row.try_get_by_index::<i64>(0).unwrap_or_default() > 0,
            _ => false,
        }
    }
}

/// One message of a dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: Uuid,
    /// Its `x-outbox-reason` header.
    pub reason: String,
}

/// What [`FaultRig::finish`] found.
#[derive(Debug)]
pub struct Finish {
    pub tally: Tally,
    pub dead_letters: Vec<DeadLetter>,
}

/// Emitted ids counted against the ledger.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Distinct ids expected.
    pub emitted: usize,
    /// Of those, handled at least once.
    pub handled: usize,
    /// Extra `done` records of expected ids (handled more than once).
    pub duplicates: usize,
    /// Expected ids never handled.
    pub lost: usize,
    pub lost_sample: Vec<Uuid>,
    /// Ids in the ledger that nobody expected.
    pub unexpected: usize,
    /// The longest time from emit to first handling, for events that carry `emitted_at`.
    pub max_latency: Option<Duration>,
    /// Its 99th percentile.
    pub p99_latency: Option<Duration>,
    /// Its median.
    pub p50_latency: Option<Duration>,
}

/// Prints one result row (`| case | emitted | handled | duplicates | lost | recovery |`) and
/// appends it to `$FAULT_RESULTS_FILE` when that is set.
pub fn report(case: &str, tally: &Tally, recovery: &str) {
    let row = format!(
        "| {case} | {} | {} | {} | {} | {recovery} |",
        tally.emitted, tally.handled, tally.duplicates, tally.lost
    );
    eprintln!("fault-matrix result: {row}");
    if let Ok(path) = std::env::var("FAULT_RESULTS_FILE")
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(file, "{row}");
    }
}
