//! `RelayActor`: moves committed outbox rows to the RabbitMQ topic exchange.
//!
//! **Owns** its publishing channels (in confirm mode, one per batch in flight, so the returns
//! of a batch are never confused with another's) and, on PostgreSQL, a LISTEN task.
//! **Receives** [`WakeUp`] (from the LISTEN task, its poll timer, its due-time timer, or you),
//! [`GetRelayStats`] and [`StopRelay`].
//! **Asks** the [`ConnectionSupervisor`] for a channel whenever it has none or its channel
//! broke.
//!
//! It keeps up to `concurrency` batches in flight (see `batch`): claim due rows, publish them
//! pipelined with confirms, delete (or mark) the confirmed ones, all in one transaction. After
//! a full batch it runs the next at once; otherwise it sleeps until a NOTIFY, the poll interval
//! or the next due row, whichever comes first (with adaptive polling: until its next look,
//! soon after a batch with rows, later after each empty one). A broker or database error drops the channel
//! and pauses with exponential backoff ([`State::BackingOff`]: wake-ups wait for the pause to
//! end); the rows of a failed batch are released untouched.
//!
//! **Restart / crash**: the outbox rows are the source of truth. An uncommitted batch is
//! rolled back by the database and its rows are claimed again (at-least-once: rows confirmed
//! just before a crash go out twice, with the same message id). Several relays may run side by
//! side on PostgreSQL; on SQLite one relay per file and table drains it, others stand by
//! ([`State::Standby`], see `lifecycle`).

mod lifecycle;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_outbox::{Error, Result};
use sea_orm::{DatabaseConnection, DbBackend};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::batch::{self, Publisher};
use super::config::RelayConfig;
use super::fate::{self, BatchReport, Probe};
use super::file_lock::RelayLock;
use super::housekeeping::{self, Chores, Schedule};
use super::sql::RelaySql;
use super::{GetRelayStats, RelayStats, WakeUp};
use crate::broker::ConnectionSupervisor;
use crate::metrics::RelayMetrics;

/// The relay's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// SQLite only: waiting for the file's relay lock (another relay holds it, or the lock
    /// file is not found yet); tried again at each poll.
    Standby,
    /// Running batches, or waiting for a wake-up.
    Active,
    /// Paused after a failed batch until the error backoff ends; wake-ups meanwhile only
    /// mark that a batch is wanted.
    BackingOff,
    /// [`StopRelay`] arrived: no new batches; waiting for those in flight.
    Stopping,
    /// Closing the channel; the actor is about to stop.
    Stopped,
}

/// The relay actor. See the module docs for its lifecycle.
pub struct RelayActor {
    /// The application's database (the outbox table lives there).
    db: DatabaseConnection,
    /// Where channels come from.
    supervisor: Addr<ConnectionSupervisor>,
    /// Validated settings.
    config: Arc<RelayConfig>,
    /// Statements for this table and backend.
    sql: Arc<RelaySql>,
    /// Where in its lifecycle the relay is.
    state: State,
    /// Idle publishing channels (confirm mode, topology declared). A batch takes one for
    /// itself and gives it back when done, so no two batches share a channel: a return is
    /// then always among its own batch's confirms (see `exchange::answer`).
    channels: Vec<Publisher>,
    /// Batches in flight (at most `concurrency`).
    running: usize,
    /// Batches allowed in flight at once (1 on SQLite).
    concurrency: usize,
    /// A wake-up arrived while no batch could start: run another as soon as one can.
    wake_again: bool,
    /// Consecutive failed batches (drives the error backoff).
    error_streak: u32,
    /// A batch failed while another was still in flight: no new batch starts until that one
    /// ends (then the relay backs off, or carries on if it succeeded). Without this, wake-ups
    /// arriving meanwhile would each start a batch and fail again, outside the backoff.
    failed_in_flight: bool,
    /// One row per batch for a while after a channel failed under a bigger batch.
    probe: Probe,
    /// Consecutive claims that found nothing (drives the due timer's backoff: see
    /// `fate::due_wait`).
    empty_rounds: u32,
    /// The timer for the next due row (or, with adaptive polling, the next look), if set.
    due_timer: Option<SpawnHandle>,
    /// When the last batch started (adaptive polling counts its next look from there).
    last_start: std::time::Instant,
    /// The LISTEN task (PostgreSQL).
    listener: Option<tokio::task::JoinHandle<()>>,
    /// When housekeeping (purge, unroutable depth) runs next.
    housekeeping: Schedule,
    /// Counters.
    stats: RelayStats,
    /// The same, and more, as metrics.
    metrics: RelayMetrics,
    /// Callers of [`StopRelay`] waiting for the stop.
    stop_waiters: Vec<oneshot::Sender<RelayStats>>,
    /// SQLite: the file's relay lock, once found.
    lock: Option<RelayLock>,
    /// SQLite: the lock file is being looked for.
    locating: bool,
}

impl std::fmt::Debug for RelayActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayActor")
            .field("config", &self.config)
            .field("state", &self.state)
            .field("running", &self.running)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl RelayActor {
    /// A relay draining `config.table()` of `db` through `supervisor`'s connection.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for invalid settings, [`Error::UnsupportedBackend`] for
    /// databases other than PostgreSQL, SQLite and (with the `mysql` feature) MySQL/MariaDB.
    pub fn new(
        db: DatabaseConnection,
        supervisor: Addr<ConnectionSupervisor>,
        config: RelayConfig,
    ) -> Result<Self> {
        config.validate()?;
        let backend = db.get_database_backend();
        if !supported(backend) {
            return Err(Error::UnsupportedBackend(format!("{backend:?}")));
        }
        let mut config = config;
        if backend == DbBackend::MySql && !config.poll_interval_set {
            config.poll_interval = super::config::MYSQL_POLL_INTERVAL;
        }
        let sql = RelaySql::new(backend, config.table().clone());
        let concurrency = match backend {
            DbBackend::Postgres | DbBackend::MySql => config.concurrency as usize,
            _ => 1,
        };
        let metrics = RelayMetrics::new(config.table().as_str());
        Ok(Self {
            metrics,
            db,
            supervisor,
            config: Arc::new(config),
            sql: Arc::new(sql),
            state: State::Active,
            channels: Vec::new(),
            running: 0,
            concurrency,
            wake_again: false,
            error_streak: 0,
            failed_in_flight: false,
            empty_rounds: 0,
            probe: Probe::default(),
            due_timer: None,
            last_start: std::time::Instant::now(),
            listener: None,
            housekeeping: Schedule::new(),
            stats: RelayStats::default(),
            stop_waiters: Vec::new(),
            lock: None,
            locating: false,
        })
    }
}

impl Handler<WakeUp> for RelayActor {
    type Result = ();

    fn handle(&mut self, _: WakeUp, ctx: &mut Context<Self>) {
        self.start_batch(ctx);
    }
}

impl Handler<GetRelayStats> for RelayActor {
    type Result = MessageResult<GetRelayStats>;

    fn handle(&mut self, _: GetRelayStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats)
    }
}

/// Whether the relay runs on `backend` (a connection to MySQL exists only in a build with
/// SeaORM's MySQL driver, which the `mysql` feature turns on).
pub(crate) fn supported(backend: DbBackend) -> bool {
    matches!(
        backend,
        DbBackend::Postgres | DbBackend::Sqlite | DbBackend::MySql
    )
}

impl RelayActor {
    /// Runs a batch unless `concurrency` batches are in flight or the relay is pausing (then
    /// remembers to run another). Concurrent batches claim disjoint rows (`SKIP LOCKED`); the
    /// second one claims and publishes while the first waits for its confirms.
    fn start_batch(&mut self, ctx: &mut Context<Self>) {
        match self.state {
            State::Active => {}
            State::Standby => return self.take_lock(ctx),
            State::BackingOff => return self.wake_again = true,
            State::Stopping | State::Stopped => return,
        }
        if self.failed_in_flight || self.running >= self.probe.slots(self.concurrency) {
            self.wake_again = true;
            return;
        }
        self.running += 1;
        self.wake_again = false;
        self.last_start = std::time::Instant::now();
        if let Some(poll) = self.config.adaptive_poll
            && self.empty_rounds == 0
        {
            // Busy: the next look starts `min` from now, in the other slot if this one is
            // still running then.
            self.arm_due_timer(poll.min, ctx);
        }
        let limit = self.probe.limit(self.config.batch_size);
        let channel = self.channels.pop();
        let chores = self.housekeeping.take(self.config.poll_interval);
        let supervisor = self.supervisor.clone();
        let (db, config, sql) = (self.db.clone(), self.config.clone(), self.sql.clone());
        let batch = async move {
            let publisher = match channel {
                Some(p) if p.channel.status().connected() => Ok(p),
                _ => batch::open_channel(&supervisor, &config).await,
            };
            let (channel, result) = match publisher {
                Ok(p) => {
                    let result = batch::run_batch(&db, &p, &config, &sql, limit).await;
                    (Some(p), result)
                }
                Err(e) => (None, Err(e)),
            };
            // After the batch committed, in its slot: see `housekeeping`.
            let chores = match chores {
                true => Some(housekeeping::run(&db, &supervisor, &config, &sql).await),
                false => None,
            };
            (channel, result, chores)
        };
        ctx.spawn(
            batch
                .into_actor(self)
                .map(|(channel, result, chores), act, ctx| {
                    if let Some(chores) = chores {
                        act.book_chores(chores);
                    }
                    act.batch_done(channel, result, ctx);
                }),
        );
    }

    /// Books the batch's outcome and decides when the next one runs.
    fn batch_done(
        &mut self,
        channel: Option<Publisher>,
        result: Result<BatchReport>,
        ctx: &mut Context<Self>,
    ) {
        self.running -= 1;
        let broke = matches!(&result, Ok(report) if report.channel_error.is_some());
        match channel {
            Some(p) if !broke && p.channel.status().connected() => self.channels.push(p),
            _ => {} // broken, or to be opened afresh: dropped
        }
        let report = match result {
            Ok(report) => report,
            Err(e) => {
                self.stats.errors += 1;
                self.metrics.errors.increment(1);
                warn!(error = %e, streak = self.error_streak + 1, "relay batch failed");
                return self.after_error(ctx);
            }
        };
        self.stats.book(&report, &self.metrics);
        if self.probe.after(&report) {
            warn!(
                rows = report.claimed,
                "the channel failed under a batch: publishing the next rows one at a time to find the cause"
            );
        }
        if let Some(reason) = &report.channel_error {
            warn!(%reason, released = report.released, "publishing channel broke; reconnecting");
            return self.after_error(ctx);
        }
        self.error_streak = 0;
        self.failed_in_flight = false;
        self.empty_rounds = match report.claimed {
            0 => self.empty_rounds.saturating_add(1),
            _ => 0,
        };
        if self.state == State::Stopping {
            return self.stop_when_idle(ctx);
        }
        // Rows held back for their ordering key filled the claim too: look again soon, but not
        // at once when nothing could be published (they wait for another batch to end).
        let full = report.claimed > 0
            && report.claimed + report.held_back
                >= self.probe.limit(self.config.batch_size) as usize;
        if full || self.wake_again {
            // Fill every free slot: a full batch means more is waiting.
            for _ in self.running..self.probe.slots(self.concurrency) {
                self.start_batch(ctx);
            }
        } else if let Some(poll) = self.config.adaptive_poll {
            // Adaptive polling: while batches find rows, one starts every `min` (counted from
            // the last start, so both slots take turns); after each empty look the wait
            // doubles. Batches take their housekeeping turns themselves.
            let wait = fate::poll_wait(&poll, self.empty_rounds, self.last_start.elapsed());
            self.arm_due_timer(wait, ctx);
        } else if self.running == 0 {
            self.idle(ctx);
        }
    }

    /// Once no batch is in flight, pauses with backoff before trying again (or stops, if
    /// asked to).
    fn after_error(&mut self, ctx: &mut Context<Self>) {
        if self.state == State::Stopping {
            return self.stop_when_idle(ctx);
        }
        if self.running > 0 {
            // The batch still in flight decides what follows; none starts meanwhile.
            self.failed_in_flight = true;
            return;
        }
        self.failed_in_flight = false;
        if self.state != State::Active {
            return; // the pause under way decides what follows
        }
        let delay = self
            .config
            .error_backoff
            .delay_with_jitter(self.error_streak);
        self.error_streak = self.error_streak.saturating_add(1);
        self.state = State::BackingOff;
        ctx.run_later(delay, |act, ctx| {
            if act.state == State::BackingOff {
                act.state = State::Active;
                act.start_batch(ctx);
            }
        });
    }

    /// Nothing more is due now: arm the due-time timer, and do housekeeping if it is due.
    fn idle(&mut self, ctx: &mut Context<Self>) {
        let (db, sql, config) = (self.db.clone(), self.sql.clone(), self.config.clone());
        let supervisor = self.supervisor.clone();
        let chores = self.housekeeping.take(config.poll_interval);
        let work = async move {
            let due = batch::next_due(&db, &sql).await;
            let chores = match chores {
                true => Some(housekeeping::run(&db, &supervisor, &config, &sql).await),
                false => None,
            };
            (due, chores)
        };
        ctx.spawn(work.into_actor(self).map(|(due, chores), act, ctx| {
            if let Some(chores) = chores {
                act.book_chores(chores);
            }
            match due {
                Ok(Some(due_in)) => {
                    if let Some(wait) =
                        fate::due_wait(due_in, act.empty_rounds, act.config.poll_interval)
                    {
                        act.arm_due_timer(wait, ctx);
                    }
                }
                Ok(None) => {}
                Err(e) => debug!(error = %e, "next-due query failed; the poll timer covers it"),
            }
        }));
    }

    /// Counts what a housekeeping round did (see [`Chores::book`]).
    fn book_chores(&mut self, chores: Chores) {
        self.housekeeping.done(chores.behind);
        chores.book(&mut self.stats, &self.metrics, &self.config);
    }

    fn arm_due_timer(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        if let Some(handle) = self.due_timer.take() {
            ctx.cancel_future(handle);
        }
        self.due_timer = Some(ctx.run_later(delay, |act, ctx| {
            act.due_timer = None;
            act.start_batch(ctx);
        }));
    }
}
