//! A worker process for the fault matrix (`tests/fault_*.rs`) and the soak (`scripts/soak`):
//! it consumes one queue and writes a row per handled event into a PostgreSQL table
//! **before** answering `Ok`, so the ack always follows a durable record. Kill it with
//! SIGKILL at any moment and the table still tells what it handled; count rows per message
//! id to find losses (no row) and duplicates (more than one `done` row).
//!
//! ```text
//! scripts/services
//! FAULT_QUEUE=demo FAULT_SEEN_TABLE=demo_seen cargo run --example fault_worker
//! ```
//!
//! It runs until SIGTERM or Ctrl-C, then stops gracefully (cancel, let handlers in flight
//! finish within the grace period, ack them), closes the broker connection and the database,
//! and exits 0. Log lines go to stderr; once it consumes it logs `fault_worker ready`.
//!
//! Environment (defaults in brackets):
//!
//! | variable | meaning |
//! |---|---|
//! | `DATABASE_URL` | PostgreSQL [`postgres://outbox:outbox@127.0.0.1:5432/outbox`] |
//! | `AMQP_URL` | RabbitMQ [`amqp://outbox:outbox@127.0.0.1:5672/%2f`] |
//! | `OUTBOX_EXCHANGE` | the relay's topic exchange [`outbox`] |
//! | `FAULT_QUEUE` | the queue consumed (dead letters go to `dlq_<queue>`) [`fault_worker`] |
//! | `FAULT_BINDING` | binding key of the queue [`#`] |
//! | `FAULT_SEEN_TABLE` | the record table, created if missing [`fault_seen`] |
//! | `FAULT_WORKER_NAME` | written into each record's `worker` column [`fault_worker`] |
//! | `FAULT_PREFETCH` | unacked deliveries, so also handlers in flight [50] |
//! | `FAULT_HANDLER_DELAY_MS` | simulated work per event: `75` or a range `50-100` [0] |
//! | `FAULT_GRACE_MS` | graceful-stop grace period [10000] |
//! | `FAULT_RETRY_DELAYS` | retry tiers, comma separated [`100ms,200ms,300ms,400ms`] |
//! | `FAULT_RECORD_STARTS` | `1`: also record a `start` row when a handler begins [0] |
//! | `FAULT_DB_POOL` | database connections [8] |
//! | `FAULT_QUEUE_TYPE` | `quorum` or `classic` [`quorum`] |
//! | `FAULT_MAX_REDELIVERIES` | deliveries unsettled before a message is dead-lettered [20] |
//! | `FAULT_ORDERED` | an ordered listener (`Listen::ordered`) with this many partitions [none] |
//! | `FAULT_INBOX` | an inbox table: the `done` record is written only the first time, in one transaction with the inbox entry (exactly-once effects) [none] |
//!
//! The record table has the columns `message_id uuid, routing_key text, attempt int,
//! phase text ('start' | 'done'), worker text, emitted_at timestamptz (from the payload's
//! `emitted_at`, for latency), handled_at timestamptz (database clock at insert)`,
//! `ordering_key text` (the event's), `seq bigint` (the payload's `seq`, if any) and
//! `recorded bigint` (an identity: the order in which records were inserted).
//!
//! Poison on request, read from the JSON payload: `"panic": "once"` panics in the handler
//! on the first attempt (the consumer replaces the actor and retries), `"panic": "always"`
//! on every attempt (dead-lettered once the retry tiers are used up), `"panic": "abort"`
//! aborts the whole process on every delivery (dead-lettered at the redelivery limit, the
//! test restarting the process after each death); `"crash": "after_commit"` (with
//! `FAULT_INBOX`) aborts the process right after the first delivery's transaction commits,
//! before the ack: the window the inbox exists for. `"fail": n` fails the first `n`
//! attempts with a plain error (retried).  Payloads that are not
//! JSON never reach the handler: the consumer dead-letters them as undecodable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_outbox::{
    DatabaseConfig, Error, Event, HandlerError, HandlerResult, Inbox, TableName, redact_url,
};
use actix_outbox_actors::{
    BrokerConfig, ConnectionSupervisor, Listen, QueueType, RetryDelay, StopBroker, Worker,
    WorkerConfig,
};
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use serde_json::Value;
use tracing::{info, warn};
use uuid::Uuid;

/// How long a handler keeps retrying its record while the database is unreachable before it
/// gives the delivery back as a retry.
const DB_PATIENCE: Duration = Duration::from_secs(60);

/// Everything read from the environment, checked.
#[derive(Debug)]
struct Settings {
    database_url: String,
    amqp_url: String,
    exchange: String,
    queue: String,
    binding: String,
    seen_table: TableName,
    worker_name: String,
    prefetch: u16,
    delay: DelayRange,
    grace: Duration,
    retry_delays: Vec<RetryDelay>,
    record_starts: bool,
    pool: u32,
    queue_type: QueueType,
    max_redeliveries: u32,
    inbox: Option<Inbox>,
    partitions: Option<u16>,
}

impl Settings {
    fn from_env() -> Result<Self, Error> {
        Ok(Self {
            database_url: env_or(
                "DATABASE_URL",
                "postgres://outbox:outbox@127.0.0.1:5432/outbox",
            ),
            amqp_url: env_or("AMQP_URL", "amqp://outbox:outbox@127.0.0.1:5672/%2f"),
            exchange: env_or("OUTBOX_EXCHANGE", "outbox"),
            queue: env_or("FAULT_QUEUE", "fault_worker"),
            binding: env_or("FAULT_BINDING", "#"),
            seen_table: TableName::new(env_or("FAULT_SEEN_TABLE", "fault_seen"))?,
            worker_name: env_or("FAULT_WORKER_NAME", "fault_worker"),
            prefetch: parse("FAULT_PREFETCH", "50")?,
            delay: DelayRange::parse(&env_or("FAULT_HANDLER_DELAY_MS", "0"))?,
            grace: Duration::from_millis(parse("FAULT_GRACE_MS", "10000")?),
            retry_delays: env_or("FAULT_RETRY_DELAYS", "100ms,200ms,300ms,400ms")
                .split(',')
                .filter(|d| !d.trim().is_empty())
                .map(|d| RetryDelay::from(d.trim()))
                .collect(),
            record_starts: env_or("FAULT_RECORD_STARTS", "0") == "1",
            pool: parse("FAULT_DB_POOL", "8")?,
            queue_type: match env_or("FAULT_QUEUE_TYPE", "quorum").as_str() {
                "quorum" => QueueType::Quorum,
                "classic" => QueueType::Classic,
                other => {
                    return Err(Error::InvalidConfig {
                        field: "FAULT_QUEUE_TYPE",
                        reason: format!("{other:?} is neither `quorum` nor `classic`"),
                    });
                }
            },
            max_redeliveries: parse("FAULT_MAX_REDELIVERIES", "20")?,
            inbox: std::env::var("FAULT_INBOX")
                .ok()
                .map(|t| TableName::new(t).map(Inbox::new))
                .transpose()?,
            partitions: match std::env::var("FAULT_ORDERED") {
                Ok(n) => Some(n.parse().map_err(|_| Error::InvalidConfig {
                    field: "FAULT_ORDERED",
                    reason: format!("not a number of partitions: {n:?}"),
                })?),
                Err(_) => None,
            },
        })
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn parse<T: std::str::FromStr>(name: &'static str, default: &str) -> Result<T, Error>
where
    T::Err: std::fmt::Display,
{
    env_or(name, default)
        .trim()
        .parse()
        .map_err(|e: T::Err| Error::InvalidConfig {
            field: name,
            reason: e.to_string(),
        })
}

/// Simulated work per event: a fixed time, or one spread evenly over a range by message id.
#[derive(Debug, Clone, Copy)]
struct DelayRange {
    min_ms: u64,
    max_ms: u64,
}

impl DelayRange {
    /// `"75"` or `"50-100"` (milliseconds).
    fn parse(text: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::InvalidConfig {
            field: "FAULT_HANDLER_DELAY_MS",
            reason,
        };
        let (lo, hi) = text.split_once('-').unwrap_or((text, text));
        let lo: u64 = lo.trim().parse().map_err(|e| bad(format!("{e}")))?;
        let hi: u64 = hi.trim().parse().map_err(|e| bad(format!("{e}")))?;
        if lo > hi {
            return Err(bad(format!("range {lo}-{hi} is reversed")));
        }
        Ok(Self {
            min_ms: lo,
            max_ms: hi,
        })
    }

    /// The delay of one message: its id's random bits pick a point in the range.
    fn for_id(self, id: Uuid) -> Duration {
        let span = self.max_ms - self.min_ms + 1;
        let bits = id.as_u64_pair().1;
        Duration::from_millis(self.min_ms + bits % span)
    }
}

/// When a record is written.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// The handler began (only with `FAULT_RECORD_STARTS=1`).
    Start,
    /// The handler finished; the next step is the ack.
    Done,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::Done => "done",
        }
    }
}

/// Writes records into the seen table, riding out database restarts.
#[derive(Debug)]
struct Recorder {
    db: DatabaseConnection,
    insert: String,
    worker: String,
    inbox: Option<Inbox>,
}

impl Recorder {
    fn new(
        db: DatabaseConnection,
        table: &TableName,
        worker: String,
        inbox: Option<Inbox>,
    ) -> Self {
        let insert = format!(
            "INSERT INTO {table} (message_id, routing_key, attempt, phase, worker, emitted_at, \
             ordering_key, seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        );
        Self {
            db,
            insert,
            worker,
            inbox,
        }
    }

    /// With an inbox: the `done` record only the first time, in one transaction with the
    /// inbox entry. Returns whether this was the first time.
    async fn record_once(
        &self,
        inbox: &Inbox,
        event: &Event<Value>,
        statement: Statement,
    ) -> Result<bool, Error> {
        let txn = self.db.begin().await?;
        let first = inbox.first_time(&txn, event).await?;
        if first {
            txn.execute_raw(statement).await?;
        }
        txn.commit().await?;
        Ok(first)
    }

    /// Inserts one record (autocommit). While the database is away it retries with backoff
    /// for up to [`DB_PATIENCE`]; after that the delivery goes back as a retry, so the
    /// message is never acked without its record.
    async fn record(&self, event: &Event<Value>, phase: Phase) -> HandlerResult {
        let emitted_at = event.payload()["emitted_at"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let statement = Statement::from_sql_and_values(
            DbBackend::Postgres,
            self.insert.as_str(),
            [
                event.message_id().into(),
                event.routing_key().to_owned().into(),
                i32::try_from(event.attempt()).unwrap_or(i32::MAX).into(),
                phase.as_str().into(),
                self.worker.clone().into(),
                emitted_at.into(),
                event.ordering_key().map(str::to_owned).into(),
                event.payload()["seq"].as_i64().into(),
            ],
        );
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let done = match (&self.inbox, phase) {
                (Some(inbox), Phase::Done) => {
                    self.record_once(inbox, event, statement.clone()).await
                }
                _ => self
                    .db
                    .execute_raw(statement.clone())
                    .await
                    .map(|_| true)
                    .map_err(Error::from),
            };
            match done {
                Ok(first) => {
                    if first && event.payload()["crash"].as_str() == Some("after_commit") {
                        eprintln!(
                            "fault_worker: injected abort after the commit of {}",
                            event.message_id()
                        );
                        std::process::abort();
                    }
                    return Ok(());
                }
                Err(e) if started.elapsed() < DB_PATIENCE => {
                    warn!(error = %e, retry_in = ?pause, "cannot record the event yet");
                    // Backoff while the database is away, not synchronisation.
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(HandlerError::retry(format!("cannot record: {e}"))),
            }
        }
    }
}

/// The handler actor: optional poison, simulated work, then the durable record.
struct Recording {
    recorder: Arc<Recorder>,
    delay: DelayRange,
    record_starts: bool,
}

impl Actor for Recording {
    type Context = Context<Self>;
}

impl Handler<Event<Value>> for Recording {
    type Result = ResponseFuture<HandlerResult>;

    fn handle(&mut self, event: Event<Value>, _: &mut Context<Self>) -> Self::Result {
        let poison = event.payload()["panic"].as_str();
        if poison == Some("abort") {
            eprintln!("fault_worker: injected abort for {}", event.message_id());
            std::process::abort();
        }
        if poison == Some("always") || (poison == Some("once") && event.attempt() == 1) {
            // Kills this actor; the consumer replaces it from the factory.
            panic!(
                "fault_worker: injected panic for {} (attempt {})",
                event.message_id(),
                event.attempt()
            );
        }
        let fail = event.payload()["fail"].as_u64().unwrap_or(0);
        if u64::from(event.attempt()) <= fail {
            return Box::pin(async move {
                Err(HandlerError::failed(format!(
                    "fault_worker: injected failure (attempt {} of {fail} failing)",
                    event.attempt()
                )))
            });
        }
        let recorder = self.recorder.clone();
        let work = self.delay.for_id(event.message_id());
        let record_starts = self.record_starts;
        Box::pin(async move {
            if record_starts {
                recorder.record(&event, Phase::Start).await?;
            }
            if !work.is_zero() {
                // The simulated work of the handler (keeps deliveries in flight).
                tokio::time::sleep(work).await;
            }
            recorder.record(&event, Phase::Done).await
        })
    }
}

/// Creates the record table if missing; an advisory lock lets several workers start at once.
async fn create_seen_table(db: &DatabaseConnection, table: &TableName) -> Result<(), Error> {
    let txn = db.begin().await?;
    txn.execute_unprepared(&format!(
        "SELECT pg_advisory_xact_lock(hashtext('{table}'))"
    ))
    .await?;
    txn.execute_unprepared(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            message_id uuid NOT NULL,
            routing_key text NOT NULL,
            attempt integer NOT NULL,
            phase text NOT NULL,
            worker text NOT NULL,
            emitted_at timestamptz,
            handled_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            ordering_key text,
            seq bigint,
            recorded bigint GENERATED BY DEFAULT AS IDENTITY
        )"
    ))
    .await?;
    txn.commit().await?;
    Ok(())
}

/// Listens for SIGTERM (and Ctrl-C) from the moment it is called: a SIGTERM that arrives
/// while the worker is still starting is kept and stops it once it consumes, instead of
/// killing it with the default action.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        #[cfg(unix)]
        if let Ok(mut term) = term {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[actix::main]
async fn main() -> Result<(), Error> {
    let stop = stop_signal();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    let s = Settings::from_env()?;
    info!(database = %redact_url(&s.database_url), queue = %s.queue, worker = %s.worker_name, "connecting");
    let db = DatabaseConfig::new(s.database_url.clone())
        .with_max_connections(s.pool)
        .with_acquire_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    create_seen_table(&db, &s.seen_table).await?;
    if let Some(inbox) = &s.inbox {
        inbox.setup(&db).await?;
    }

    let broker_config = BrokerConfig::new(s.amqp_url.as_str())?
        .with_reconnect(Duration::from_millis(50), Duration::from_secs(2))
        .with_connection_name(s.worker_name.clone());
    let broker = ConnectionSupervisor::start_supervised(broker_config)?;
    let config = WorkerConfig::default()
        .with_exchange(s.exchange.as_str())
        .with_prefetch(s.prefetch)
        .with_queue_type(s.queue_type)
        .with_max_redeliveries(s.max_redeliveries)
        .with_retry_delays(s.retry_delays.clone())
        .with_grace_period(s.grace)
        .with_reconnect_backoff(Duration::from_millis(50), Duration::from_secs(2));
    let recorder = Arc::new(Recorder::new(
        db.clone(),
        &s.seen_table,
        s.worker_name.clone(),
        s.inbox.clone(),
    ));
    let (delay, record_starts) = (s.delay, s.record_starts);
    let mut listen = Listen::new([s.binding.as_str()])?.with_queue(s.queue.as_str());
    if let Some(partitions) = s.partitions {
        listen = listen.ordered(partitions);
    }
    let running = Worker::new(broker.clone(), config)?
        .listen(listen, move || Recording {
            recorder: recorder.clone(),
            delay,
            record_starts,
        })?
        .start()
        .await?;
    info!(queue = %s.queue, prefetch = s.prefetch, "fault_worker ready");

    stop.await;
    info!("stopping: draining the handlers in flight");
    running.stop().await;
    broker.send(StopBroker).await?;
    db.close().await?;
    info!(worker = %s.worker_name, "fault_worker stopped");
    Ok(())
}
