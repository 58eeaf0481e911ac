//! Housekeeping beside the batches: purging rows sent longer ago than the retention (keep
//! mode) and reading the depth of `<exchange>.unroutable`.
//!
//! It runs at most once per poll interval, whether the relay is idle or busy: on a relay that
//! never idles (batches always full), a purge that waited for an idle moment would never run
//! and the kept rows would pile up. A round runs inside a batch's slot, after the batch has
//! committed, so on SQLite (one batch at a time) the purge never competes with a batch for
//! the database's write lock. A round deletes in chunks until nothing old enough is left or
//! its time budget is spent; a round cut short by the budget makes the next one due at once.

use std::time::{Duration, Instant};

use actix::Addr;
use actix_outbox::Result;
use chrono::Utc;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use tracing::warn;

use super::RelayStats;
use super::config::{Cleanup, RelayConfig};
use super::sql::RelaySql;
use crate::broker::{self, ConnectionSupervisor};
use crate::exchange::Unroutable;
use crate::metrics::RelayMetrics;

/// Rows deleted per purge statement.
const PURGE_CHUNK: u32 = 1_000;

/// The most time one round spends purging.
const PURGE_BUDGET: Duration = Duration::from_millis(500);

/// When the next round is due, and whether one is under way.
#[derive(Debug)]
pub(crate) struct Schedule {
    /// When the last round began (`None`: due now).
    last: Option<Instant>,
    /// A round is under way.
    running: bool,
}

impl Schedule {
    /// The first round is due one interval after start (the relay's first batches matter
    /// more).
    pub(crate) fn new() -> Self {
        Self {
            last: Some(Instant::now()),
            running: false,
        }
    }

    /// Takes the next round if it is due (`interval` since the last began) and none is under
    /// way.
    pub(crate) fn take(&mut self, interval: Duration) -> bool {
        let due = self.last.is_none_or(|last| last.elapsed() >= interval);
        if self.running || !due {
            return false;
        }
        self.running = true;
        self.last = Some(Instant::now());
        true
    }

    /// The round ended; `behind` (its budget ran out) makes the next one due at once.
    pub(crate) fn done(&mut self, behind: bool) {
        self.running = false;
        if behind {
            self.last = None;
        }
    }
}

/// What one round found.
#[derive(Debug, Default)]
pub(crate) struct Chores {
    /// Sent rows purged.
    pub(crate) purged: u64,
    /// The purge stopped at its budget with more rows to go.
    pub(crate) behind: bool,
    /// Messages waiting in `<exchange>.unroutable` (when that is checked and could be read).
    pub(crate) unroutable_depth: Option<u32>,
    /// Why purging or reading the gauges failed, if it did.
    pub(crate) error: Option<String>,
    /// The table's gauges, when they could be read.
    pub(crate) gauges: Option<TableGauges>,
}

/// What the table holds, read once per round for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct TableGauges {
    /// Rows due now, unsent and not parked.
    pub(crate) due: u64,
    /// How long the oldest of them has been due.
    pub(crate) oldest_due_age: Duration,
    /// Parked rows.
    pub(crate) parked: u64,
    /// Sent rows kept (keep mode).
    pub(crate) kept: u64,
}

impl Chores {
    /// Adds the round to `stats` and `metrics`, and warns about what needs an operator.
    pub(crate) fn book(self, stats: &mut RelayStats, metrics: &RelayMetrics, config: &RelayConfig) {
        stats.purged += self.purged;
        metrics.purged.increment(self.purged);
        if let Some(error) = self.error {
            warn!(%error, "housekeeping failed");
        }
        if let Some(g) = self.gauges {
            stats.backlog = g.due;
            stats.oldest_due_age = g.oldest_due_age;
            metrics.backlog.set(g.due as f64);
            metrics.oldest_due_age.set(g.oldest_due_age.as_secs_f64());
            metrics.parked_rows.set(g.parked as f64);
            metrics.kept_rows.set(g.kept as f64);
        }
        if let Some(depth) = self.unroutable_depth {
            let depth = u64::from(depth);
            if depth > stats.unroutable_queued {
                warn!(queue = %config.unroutable_name(), depth, "unroutable messages are waiting: bind a queue for their routing keys, then move them back");
            }
            stats.unroutable_queued = depth;
            metrics.unroutable_queued.set(depth as f64);
        }
    }
}

/// Runs one round.
pub(crate) async fn run(
    db: &DatabaseConnection,
    supervisor: &Addr<ConnectionSupervisor>,
    config: &RelayConfig,
    sql: &RelaySql,
) -> Chores {
    let mut chores = Chores::default();
    if let Cleanup::Keep { retention } = config.cleanup {
        match purge(db, sql, retention, PURGE_BUDGET).await {
            Ok((purged, behind)) => (chores.purged, chores.behind) = (purged, behind),
            Err(e) => chores.error = Some(e.to_string()),
        }
    }
    match gauges(db, sql).await {
        Ok(g) => chores.gauges = Some(g),
        Err(e) => chores.error = Some(format!("reading the table's gauges: {e}")),
    }
    if config.unroutable == Unroutable::AlternateExchange {
        let queue = config.unroutable_name();
        chores.unroutable_depth =
            broker::queue_depth(supervisor, config.confirm_timeout, &queue).await;
    }
    chores
}

/// Reads the table's gauges (four counts on partial indexes).
pub(crate) async fn gauges(db: &DatabaseConnection, sql: &RelaySql) -> Result<TableGauges> {
    let Some(row) = db.query_one_raw(sql.gauges(Utc::now())).await? else {
        return Ok(TableGauges::default());
    };
    let count = |name: &str| -> Result<u64> {
        let n: i64 = row.try_get("", name)?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    let oldest: Option<chrono::DateTime<Utc>> = row.try_get("", "oldest")?;
    let now: chrono::DateTime<Utc> = row.try_get("", "db_now")?;
    Ok(TableGauges {
        due: count("due")?,
        oldest_due_age: oldest.map_or(Duration::ZERO, |o| (now - o).to_std().unwrap_or_default()),
        parked: count("parked")?,
        kept: count("kept")?,
    })
}

/// Deletes rows sent more than `retention` ago, a chunk at a time, until none is left or
/// `budget` is spent. Returns how many went and whether more are left.
async fn purge(
    db: &DatabaseConnection,
    sql: &RelaySql,
    retention: Duration,
    budget: Duration,
) -> Result<(u64, bool)> {
    let started = Instant::now();
    let mut purged = 0;
    loop {
        let deleted = db
            .execute_raw(sql.purge(retention, PURGE_CHUNK, Utc::now()))
            .await?
            .rows_affected();
        purged += deleted;
        if deleted < u64::from(PURGE_CHUNK) {
            return Ok((purged, false));
        }
        if started.elapsed() >= budget {
            return Ok((purged, true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_round_at_a_time_once_per_interval() {
        let mut s = Schedule::new();
        let interval = Duration::from_secs(3600);
        assert!(!s.take(interval), "not due right after start");
        assert!(s.take(Duration::ZERO), "due once the interval passed");
        assert!(!s.take(Duration::ZERO), "not while a round is under way");
        s.done(false);
        assert!(!s.take(interval), "the interval starts again");
        assert!(s.take(Duration::ZERO));
        s.done(true);
        assert!(
            s.take(interval),
            "a round cut short makes the next due at once"
        );
    }
}
