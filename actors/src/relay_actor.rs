//! `RelayActor`: moves committed outbox rows to the RabbitMQ topic exchange.
//!
//! **Owns** a publishing channel (in confirm mode) and, on PostgreSQL, a LISTEN task.
//! **Receives** [`WakeUp`] (from the LISTEN task, its poll timer, its due-time timer, or you),
//! [`GetRelayStats`] and [`StopRelay`].
//! **Asks** the [`ConnectionSupervisor`] for a channel whenever it has none or its channel
//! broke.
//!
//! It runs one batch at a time (see `relay_batch`): claim due rows, publish them pipelined
//! with confirms, delete (or mark) the confirmed ones, all in one transaction. After a full
//! batch it runs the next at once; otherwise it sleeps until a NOTIFY, the poll interval or
//! the next due row, whichever comes first. A broker or database error drops the channel and
//! pauses with exponential backoff; the rows of a failed batch are released untouched.
//!
//! **Restart / crash**: the outbox rows are the source of truth. An uncommitted batch is
//! rolled back by the database and its rows are claimed again (at-least-once: rows confirmed
//! just before a crash go out twice, with the same message id). Several relays may run side by
//! side on PostgreSQL; on SQLite run one per database file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_outbox::{Error, Result};
use lapin::Channel;
use lapin::options::ConfirmSelectOptions;
use sea_orm::{DatabaseConnection, DbBackend};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::connection_supervisor::{ConnectionSupervisor, GetChannel};
use crate::relay_batch::{self, BatchReport};
use crate::relay_config::{RelayConfig, Unroutable};
use crate::relay_sql::RelaySql;
use crate::topology;

/// Asks the relay to look for due rows now (it coalesces wake-ups while a batch runs).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct WakeUp;

/// Asks for the relay's counters.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "RelayStats")]
pub struct GetRelayStats;

/// Stops the relay gracefully: the batch in flight finishes (and commits) first, the LISTEN
/// task ends, the channel closes. Resolves with the final counters once the relay has stopped.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "RelayStats")]
pub struct StopRelay;

/// Counters of one relay since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Claim rounds run, including those that found nothing due.
    pub rounds: u64,
    /// Batches that claimed at least one row.
    pub batches: u64,
    /// Messages confirmed by the broker (their rows deleted or marked sent).
    pub published: u64,
    /// Unroutable messages dropped and counted (only with [`Unroutable::Drop`]).
    pub unroutable_dropped: u64,
    /// Messages waiting in `<exchange>.unroutable` when last checked.
    pub unroutable_queued: u64,
    /// Publishes the broker refused (nack, or unroutable without an alternate route).
    pub refused: u64,
    /// Rows parked after too many refused publishes.
    pub parked: u64,
    /// Messages published after their deadline had passed (sent with expiration 0, so
    /// queues with a dead-letter exchange dead-letter them).
    pub expired: u64,
    /// Rows released unconfirmed after a broker failure (they go out again: possible
    /// duplicates).
    pub released: u64,
    /// Batches that failed on a database or broker error.
    pub errors: u64,
    /// Sent rows purged (keep mode).
    pub purged: u64,
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
    /// The publishing channel (confirm mode, topology declared); `None` until needed.
    channel: Option<Channel>,
    /// Batches in flight (at most `config.concurrency`).
    running: usize,
    /// Batches allowed in flight at once (1 on SQLite).
    concurrency: usize,
    /// A wake-up arrived during the batch: run another right after.
    wake_again: bool,
    /// Consecutive failed batches (drives the error backoff).
    error_streak: u32,
    /// The timer for the next due row, if one is set.
    due_timer: Option<SpawnHandle>,
    /// The LISTEN task (PostgreSQL).
    listener: Option<tokio::task::JoinHandle<()>>,
    /// Last housekeeping (purge, unroutable depth).
    last_housekeeping: Instant,
    /// Counters.
    stats: RelayStats,
    /// Callers of [`StopRelay`] waiting for the stop.
    stop_waiters: Option<Vec<oneshot::Sender<RelayStats>>>,
}

impl std::fmt::Debug for RelayActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayActor")
            .field("config", &self.config)
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
    /// databases other than PostgreSQL and SQLite.
    pub fn new(
        db: DatabaseConnection,
        supervisor: Addr<ConnectionSupervisor>,
        config: RelayConfig,
    ) -> Result<Self> {
        config.validate()?;
        let backend = db.get_database_backend();
        if !matches!(backend, DbBackend::Postgres | DbBackend::Sqlite) {
            return Err(Error::UnsupportedBackend(format!("{backend:?}")));
        }
        let sql = RelaySql::new(backend, config.table().clone());
        let concurrency = match backend {
            DbBackend::Postgres => config.concurrency as usize,
            _ => 1,
        };
        Ok(Self {
            db,
            supervisor,
            config: Arc::new(config),
            sql: Arc::new(sql),
            channel: None,
            running: 0,
            concurrency,
            wake_again: false,
            error_streak: 0,
            due_timer: None,
            listener: None,
            last_housekeeping: Instant::now(),
            stats: RelayStats::default(),
            stop_waiters: None,
        })
    }
}

impl Actor for RelayActor {
    type Context = Context<Self>;

    /// Starts the LISTEN task (PostgreSQL), the poll timer, and a first batch.
    fn started(&mut self, ctx: &mut Context<Self>) {
        info!(table = %self.config.table(), exchange = %self.config.exchange(), "relay started");
        if self.config.listen && self.sql.backend() == DbBackend::Postgres {
            self.listener = Some(crate::notify_listener::spawn(
                &self.db,
                self.config.table().notify_channel().to_owned(),
                ctx.address().recipient(),
            ));
        }
        ctx.run_interval(self.config.poll_interval, |act, ctx| act.start_batch(ctx));
        self.start_batch(ctx);
    }

    /// Ends the LISTEN task so no pooled connection outlives the relay.
    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(task) = self.listener.take() {
            task.abort();
        }
        for waiter in self.stop_waiters.take().unwrap_or_default() {
            let _ = waiter.send(self.stats);
        }
        info!(table = %self.config.table(), stats = ?self.stats, "relay stopped");
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

impl Handler<StopRelay> for RelayActor {
    type Result = ResponseFuture<RelayStats>;

    fn handle(&mut self, _: StopRelay, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.stop_waiters.get_or_insert_with(Vec::new).push(tx);
        if self.running == 0 {
            self.finish_stop(ctx);
        }
        let last_known = self.stats;
        Box::pin(async move { rx.await.unwrap_or(last_known) })
    }
}

impl RelayActor {
    /// Runs a batch unless `concurrency` batches are in flight (then remembers to run
    /// another). Concurrent batches claim disjoint rows (`SKIP LOCKED`); the second one
    /// claims and publishes while the first waits for its confirms.
    fn start_batch(&mut self, ctx: &mut Context<Self>) {
        if self.stop_waiters.is_some() {
            return;
        }
        if self.running >= self.concurrency {
            self.wake_again = true;
            return;
        }
        self.running += 1;
        self.wake_again = false;
        let channel = self.channel.clone();
        let supervisor = self.supervisor.clone();
        let (db, config, sql) = (self.db.clone(), self.config.clone(), self.sql.clone());
        let batch = async move {
            let channel = match channel {
                Some(c) if c.status().connected() => c,
                _ => match open_channel(&supervisor, &config).await {
                    Ok(c) => c,
                    Err(e) => return (None, Err(e)),
                },
            };
            let result = relay_batch::run_batch(&db, &channel, &config, &sql).await;
            (Some(channel), result)
        };
        ctx.spawn(batch.into_actor(self).map(|(channel, result), act, ctx| {
            act.batch_done(channel, result, ctx);
        }));
    }

    /// Books the batch's outcome and decides when the next one runs.
    fn batch_done(
        &mut self,
        channel: Option<Channel>,
        result: Result<BatchReport>,
        ctx: &mut Context<Self>,
    ) {
        self.running -= 1;
        match result {
            Ok(report) => {
                let full = report.claimed >= self.config.batch_size as usize;
                let broken = report.channel_error.clone();
                self.book(&report);
                if let Some(reason) = broken {
                    warn!(%reason, released = report.released, "publishing channel broke; reconnecting");
                    self.channel = None;
                    self.after_error(ctx);
                } else {
                    self.channel = channel;
                    self.error_streak = 0;
                    if self.stop_waiters.is_some() {
                        if self.running == 0 {
                            self.finish_stop(ctx);
                        }
                        return;
                    }
                    if full || self.wake_again {
                        // Fill every free slot: a full batch means more is waiting.
                        for _ in self.running..self.concurrency {
                            self.start_batch(ctx);
                        }
                    } else if self.running == 0 {
                        self.idle(ctx);
                    }
                }
            }
            Err(e) => {
                self.stats.errors += 1;
                warn!(error = %e, streak = self.error_streak + 1, "relay batch failed");
                self.channel = None;
                self.after_error(ctx);
            }
        }
    }

    fn book(&mut self, r: &BatchReport) {
        let s = &mut self.stats;
        s.rounds += 1;
        s.batches += u64::from(r.claimed > 0);
        s.published += r.sent as u64;
        s.unroutable_dropped += r.dropped_unroutable as u64;
        s.refused += r.refused as u64;
        s.parked += r.parked as u64;
        s.expired += r.expired as u64;
        s.released += r.released as u64;
        s.errors += u64::from(r.channel_error.is_some());
    }

    /// Pauses with backoff after an error, then tries again (or stops, if asked to).
    fn after_error(&mut self, ctx: &mut Context<Self>) {
        if self.stop_waiters.is_some() {
            if self.running == 0 {
                self.finish_stop(ctx);
            }
            return;
        }
        if self.running > 0 {
            return; // the batch still in flight decides what happens next
        }
        let delay = self
            .config
            .error_backoff
            .delay_with_jitter(self.error_streak);
        self.error_streak = self.error_streak.saturating_add(1);
        ctx.run_later(delay, |act, ctx| act.start_batch(ctx));
    }

    /// Nothing more is due now: arm the due-time timer and do housekeeping.
    fn idle(&mut self, ctx: &mut Context<Self>) {
        let (db, sql, config) = (self.db.clone(), self.sql.clone(), self.config.clone());
        let channel = self.channel.clone();
        let housekeeping = self.last_housekeeping.elapsed() >= config.poll_interval;
        if housekeeping {
            self.last_housekeeping = Instant::now();
        }
        let work = async move {
            let due = relay_batch::next_due(&db, &sql).await;
            let mut purged = 0;
            let mut depth = None;
            if housekeeping {
                purged = relay_batch::purge(&db, &config, &sql)
                    .await
                    .unwrap_or_else(|e| {
                        warn!(error = %e, "purging sent rows failed");
                        0
                    });
                if let (Some(c), Unroutable::AlternateExchange) = (&channel, config.unroutable) {
                    depth = topology::unroutable_depth(c, &config).await.ok();
                }
            }
            (due, purged, depth)
        };
        ctx.spawn(work.into_actor(self).map(|(due, purged, depth), act, ctx| {
            act.stats.purged += purged;
            if let Some(depth) = depth {
                let depth = u64::from(depth);
                if depth > act.stats.unroutable_queued {
                    warn!(queue = %act.config.unroutable_name(), depth, "unroutable messages are waiting: bind a queue for their routing keys, then move them back");
                }
                act.stats.unroutable_queued = depth;
            }
            match due {
                Ok(Some(delay)) if delay < act.config.poll_interval => act.arm_due_timer(delay, ctx),
                Ok(_) => {}
                Err(e) => debug!(error = %e, "next-due query failed; the poll timer covers it"),
            }
        }));
    }

    fn arm_due_timer(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        if let Some(handle) = self.due_timer.take() {
            ctx.cancel_future(handle);
        }
        // A little slack so the row is due by the database clock when we look.
        let delay = delay + Duration::from_millis(5);
        self.due_timer = Some(ctx.run_later(delay, |act, ctx| {
            act.due_timer = None;
            act.start_batch(ctx);
        }));
    }

    /// Closes the channel (bounded), then stops the actor.
    fn finish_stop(&mut self, ctx: &mut Context<Self>) {
        if let Some(task) = self.listener.take() {
            task.abort();
        }
        let channel = self.channel.take();
        let close = async move {
            if let Some(c) = channel {
                let closing = c.close(200, "relay stopping".into());
                let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
            }
        };
        ctx.wait(close.into_actor(self).map(|(), _, ctx| ctx.stop()));
    }
}

/// Gets a channel from the supervisor (bounded), puts it in confirm mode and declares (or
/// checks) the topology.
async fn open_channel(
    supervisor: &Addr<ConnectionSupervisor>,
    config: &RelayConfig,
) -> Result<Channel> {
    let wait = config.confirm_timeout;
    let channel = tokio::time::timeout(wait, supervisor.send(GetChannel))
        .await
        .map_err(|_| Error::Timeout {
            what: "waiting for a broker channel",
            after: wait,
        })???;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    topology::declare_relay_topology(&channel, config).await?;
    Ok(channel)
}
