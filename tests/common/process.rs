//! The child-process harness of the fault matrix (`tests/fault_*.rs`) and of the soak
//! (`examples/fault_soak.rs`): the real `relay` and `fault_worker` programs run as child
//! processes against the test PostgreSQL and RabbitMQ, an emitter commits events at a fixed
//! rate, and the worker's record table is the ledger every check reads.
//!
//! - **Names and services** — [`Services`] (the two URLs) and [`Names`] (a case's own outbox
//!   table, record table, exchange and queue: cases never share broker or table state).
//! - **Processes** — [`example_binary`] finds a built example next to the running test;
//!   [`ChildProcess`] starts, SIGKILLs, SIGTERMs and restarts one, with a log file per
//!   generation. Children are killed when dropped, and when the test is panicking their log
//!   tails are printed, so a failed assertion shows what the processes said.
//! - **[`FaultRig`]** — one case: its relays and workers, emission ([`FaultRig::emit_backlog`],
//!   [`Emitter`]), the ledger ([`FaultRig::tally`], [`FaultRig::wait_recovered`]) and
//!   [`FaultRig::finish`], the end-of-case checks (outbox empty, queue empty, dead letters
//!   exactly as expected, nothing unroutable, clean exits, none lost).
//! - **Service faults** — [`rabbitmqctl`] and [`restart_postgres`], each waiting (bounded)
//!   until the service is back before returning.
//!
//! Self-contained on purpose (nothing from `super`): the soak driver includes this file with
//! `#[path]`, so the tests and the soak count messages the same way.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use actix_outbox::{Outbox, OutboxEvent, TableName};
use chrono::{DateTime, Utc};
use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
    TransactionTrait,
};
use uuid::Uuid;

// ------------------------------------------------------------------ names and services ---

/// The services every case runs against.
#[derive(Debug, Clone)]
pub struct Services {
    pub database_url: String,
    pub amqp_url: String,
}

impl Services {
    /// Reads `DATABASE_URL` and `AMQP_URL`, failing loudly when either is missing.
    pub fn from_env() -> Self {
        Self {
            database_url: require_env("DATABASE_URL"),
            amqp_url: require_env("AMQP_URL"),
        }
    }
}

fn require_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set. The fault matrix needs real PostgreSQL and RabbitMQ: run \
             `scripts/test`, or start them with `scripts/services` and export the URLs it prints."
        ),
    }
}

/// One case's own tables, exchange and queue.
#[derive(Debug, Clone)]
pub struct Names {
    /// The outbox table the emitter writes and the relays drain.
    pub outbox_table: String,
    /// The workers' record table (the ledger).
    pub seen_table: String,
    /// The topic exchange.
    pub exchange: String,
    /// The queue every worker of the case consumes.
    pub queue: String,
}

impl Names {
    /// Names tagged with `case` (letters and digits, at most 12) and a random suffix.
    pub fn new(case: &str) -> Self {
        let id = Uuid::now_v7().simple().to_string();
        let id = &id[id.len() - 10..];
        let tag: String = case
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect::<String>()
            .to_ascii_lowercase();
        Self {
            outbox_table: format!("fo_{tag}_{id}"),
            seen_table: format!("fs_{tag}_{id}"),
            exchange: format!("fx_{tag}_{id}"),
            queue: format!("fq_{tag}_{id}"),
        }
    }

    /// The queue's dead-letter queue.
    pub fn dlq(&self) -> String {
        format!("dlq_{}", self.queue)
    }

    /// Where the exchange's unroutable messages go.
    pub fn unroutable(&self) -> String {
        format!("{}.unroutable", self.exchange)
    }

    /// The retry delay exchange and queue for `ms`.
    pub fn delay(&self, ms: u64) -> String {
        format!("{}.delay.{ms}ms", self.exchange)
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` naming
/// `what`.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------- processes ---

/// The path of example `name` built in the same profile as the running program: tests run
/// from `target/<profile>/deps/`, examples live in `target/<profile>/examples/`.
///
/// Panics with the build command when it is missing; warns when a source is newer.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running program");
    let dir = exe.parent().expect("directory of the running program");
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("deps" | "examples") => dir.parent().expect("target/<profile>"),
        _ => dir,
    };
    let path = profile.join("examples").join(name);
    let release = if profile.ends_with("release") {
        " --release"
    } else {
        ""
    };
    assert!(
        path.is_file(),
        "{} is missing. Build the fault-matrix programs first:\n    cargo build --all-features{release} \
         --example relay --example fault_worker\n(a plain `cargo test --all-features` builds every example)",
        path.display()
    );
    warn_if_stale(&path, name, release);
    path
}

/// Prints a warning when a source the example is built from is newer than the binary (a
/// `cargo test --test fault_x` run does not rebuild examples).
fn warn_if_stale(binary: &Path, name: &str, release: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = modified(binary);
    let sources = [
        root.join("src"),
        root.join("actors").join("src"),
        root.join("examples").join(format!("{name}.rs")),
    ];
    if sources.iter().filter_map(|p| newest(p)).max() > built {
        eprintln!(
            "WARNING: {} is older than its sources; rebuild it: cargo build --all-features{release} --example {name}",
            binary.display()
        );
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn newest(path: &Path) -> Option<SystemTime> {
    let Ok(entries) = std::fs::read_dir(path) else {
        return modified(path);
    };
    entries.flatten().filter_map(|e| newest(&e.path())).max()
}

/// A child process that can be killed and started again; every generation writes stdout
/// and stderr to its own log file `<log_dir>/<name>.<generation>.log`.
///
/// Each generation gets `FAULT_WORKER_NAME=<name>.<generation>` in its environment, which
/// `fault_worker` writes into its records: the ledger tells which process handled what.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    program: PathBuf,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    child: Option<Child>,
    generation: u32,
}

impl ChildProcess {
    /// Starts `program` with `env` (added to this process's environment).
    pub fn start(name: &str, program: &Path, env: Vec<(String, String)>, log_dir: &Path) -> Self {
        let mut process = Self {
            name: name.to_owned(),
            program: program.to_owned(),
            env,
            log_dir: log_dir.to_owned(),
            child: None,
            generation: 0,
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        self.generation += 1;
        let path = self.log_path();
        let out = File::create(&path)
            .unwrap_or_else(|e| panic!("cannot create log {}: {e}", path.display()));
        let err = out.try_clone().expect("clone log file handle");
        let child = Command::new(&self.program)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("FAULT_WORKER_NAME", self.instance())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// `<name>.<generation>`: this generation's worker name and log file stem.
    pub fn instance(&self) -> String {
        format!("{}.{}", self.name, self.generation)
    }

    /// How many times the process was started.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The current generation's log file.
    pub fn log_path(&self) -> PathBuf {
        self.log_dir.join(format!("{}.log", self.instance()))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, then reap. No-op when not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM (a graceful stop); see [`wait_exit`](Self::wait_exit).
    pub fn terminate(&self) {
        let pid = self.pid().expect("terminate: the process is not running");
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {pid} failed: {status}");
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut().expect("wait_exit: not running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "{} did not exit within {timeout:?}; log tail:\n{}",
                self.instance(),
                self.tail(30)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM and wait for the exit: returns the status and how long the stop took.
    pub async fn stop(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        self.terminate();
        let status = self.wait_exit(timeout).await;
        (status, start.elapsed())
    }

    /// Kills the process if it runs, then starts the next generation.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether the current generation still runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Panics, with the log tail, when the current generation is no longer running.
    pub fn assert_running(&mut self) {
        assert!(
            self.is_running(),
            "{} is no longer running; log tail:\n{}",
            self.instance(),
            self.tail(40)
        );
    }

    /// Waits (bounded) until the current generation's log contains `needle`.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if log.contains(needle) {
                return;
            }
            assert!(
                self.is_running(),
                "{} exited before logging {needle:?}; log tail:\n{}",
                self.instance(),
                self.tail(40)
            );
            assert!(
                start.elapsed() < timeout,
                "{} did not log {needle:?} within {timeout:?}; log tail:\n{}",
                self.instance(),
                self.tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How often `needle` occurs in the logs of every generation.
    pub fn count_in_logs(&self, needle: &str) -> usize {
        (1..=self.generation)
            .map(|g| self.log_dir.join(format!("{}.{g}.log", self.name)))
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .map(|log| log.matches(needle).count())
            .sum()
    }

    /// The last `lines` lines of the current generation's log.
    pub fn tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ChildProcess {
    /// Never leaves a stray process; shows the log tail when a test fails.
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() && self.generation > 0 {
            eprintln!(
                "----- {} ({}), last lines -----\n{}",
                self.instance(),
                self.log_path().display(),
                self.tail(25)
            );
        }
    }
}

// ------------------------------------------------------------------------------ the rig ---

/// Settings of the `fault_worker` processes a rig starts.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Unacked deliveries, so also handlers in flight.
    pub prefetch: u16,
    /// Simulated work per event: `"75"` or `"50-100"` ms.
    pub handler_delay_ms: String,
    /// Graceful-stop grace period.
    pub grace: Duration,
    /// Retry tiers (also the delay queues cleaned up at the end).
    pub retry_delays_ms: Vec<u64>,
    /// Also record when a handler begins.
    pub record_starts: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            prefetch: 50,
            handler_delay_ms: "0".to_owned(),
            grace: Duration::from_secs(10),
            retry_delays_ms: vec![100, 200, 300, 400],
            record_starts: false,
        }
    }
}

impl WorkerOptions {
    #[must_use]
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    #[must_use]
    pub fn with_handler_delay_ms(mut self, delay: &str) -> Self {
        self.handler_delay_ms = delay.to_owned();
        self
    }

    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    #[must_use]
    pub fn with_record_starts(mut self) -> Self {
        self.record_starts = true;
        self
    }
}

/// How long a process may take to be ready (debug build, connections, topology).
const PROCESS_READY: Duration = Duration::from_secs(60);
/// What the relay example logs once its relay actor runs.
const RELAY_READY: &str = "relay started";
/// How long a graceful stop of a child may take at the end of a case.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// One case: its names, database connection, outbox, relays and workers.
pub struct FaultRig {
    pub case: String,
    pub services: Services,
    pub names: Names,
    /// The case's own connection (plain `DATABASE_URL`, the case's tables by name).
    pub db: DatabaseConnection,
    /// The case's outbox table.
    pub outbox: Outbox,
    pub relays: Vec<ChildProcess>,
    pub workers: Vec<ChildProcess>,
    log_dir: PathBuf,
    relay_bin: PathBuf,
    worker_bin: PathBuf,
    /// Retry delays of the workers started (their delay queues are checked and deleted).
    delays_ms: HashSet<u64>,
}

impl FaultRig {
    /// Connects, creates the case's outbox table and finds the two programs.
    pub async fn new(case: &str) -> Self {
        let services = Services::from_env();
        let names = Names::new(case);
        let relay_bin = example_binary("relay");
        let worker_bin = example_binary("fault_worker");
        let mut options = ConnectOptions::new(services.database_url.clone());
        options
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .sqlx_logging(false);
        let db = Database::connect(options)
            .await
            .expect("connect to DATABASE_URL");
        let table = TableName::new(names.outbox_table.clone()).expect("valid table name");
        let outbox = Outbox::new(table);
        outbox.setup(&db).await.expect("set up the outbox table");
        let log_dir = std::env::temp_dir()
            .join("actix-outbox-faults")
            .join(&names.queue);
        std::fs::create_dir_all(&log_dir).expect("create the log directory");
        eprintln!("[{case}] child logs in {}", log_dir.display());
        Self {
            case: case.to_owned(),
            services,
            names,
            db,
            outbox,
            relays: Vec::new(),
            workers: Vec::new(),
            log_dir,
            relay_bin,
            worker_bin,
            delays_ms: HashSet::new(),
        }
    }

    /// Starts one more `relay` process claiming `batch_size` rows at a time and waits until
    /// its relay actor runs.
    pub async fn start_relay(&mut self, batch_size: u32) {
        let env = vec![
            env("DATABASE_URL", &self.services.database_url),
            env("AMQP_URL", &self.services.amqp_url),
            env("OUTBOX_TABLE", &self.names.outbox_table),
            env("OUTBOX_EXCHANGE", &self.names.exchange),
            env("OUTBOX_BATCH_SIZE", &batch_size.to_string()),
            env("RUST_LOG", "info,sqlx=warn"),
        ];
        let name = format!("relay{}", self.relays.len());
        let mut relay = ChildProcess::start(&name, &self.relay_bin, env, &self.log_dir);
        relay.wait_for_log(RELAY_READY, PROCESS_READY).await;
        self.relays.push(relay);
    }

    /// Starts one more `fault_worker` process and waits until it consumes.
    pub async fn start_worker(&mut self, options: &WorkerOptions) {
        let delays: Vec<String> = options
            .retry_delays_ms
            .iter()
            .map(|ms| format!("{ms}ms"))
            .collect();
        self.delays_ms
            .extend(options.retry_delays_ms.iter().copied());
        let env = vec![
            env("DATABASE_URL", &self.services.database_url),
            env("AMQP_URL", &self.services.amqp_url),
            env("OUTBOX_EXCHANGE", &self.names.exchange),
            env("FAULT_QUEUE", &self.names.queue),
            env("FAULT_SEEN_TABLE", &self.names.seen_table),
            env("FAULT_PREFETCH", &options.prefetch.to_string()),
            env("FAULT_HANDLER_DELAY_MS", &options.handler_delay_ms),
            env("FAULT_GRACE_MS", &options.grace.as_millis().to_string()),
            env("FAULT_RETRY_DELAYS", &delays.join(",")),
            env(
                "FAULT_RECORD_STARTS",
                if options.record_starts { "1" } else { "0" },
            ),
            env("RUST_LOG", "info,sqlx=warn"),
        ];
        let name = format!("worker{}", self.workers.len());
        let mut worker = ChildProcess::start(&name, &self.worker_bin, env, &self.log_dir);
        worker
            .wait_for_log("fault_worker ready", PROCESS_READY)
            .await;
        self.workers.push(worker);
    }

    /// SIGKILLs relay `i`, starts it again at once and waits until its relay actor runs.
    pub async fn restart_relay(&mut self, i: usize) {
        self.relays[i].restart();
        self.relays[i]
            .wait_for_log(RELAY_READY, PROCESS_READY)
            .await;
    }

    /// SIGKILLs worker `i`, starts it again and waits until it consumes.
    pub async fn restart_worker(&mut self, i: usize) {
        self.workers[i].restart();
        self.workers[i]
            .wait_for_log("fault_worker ready", PROCESS_READY)
            .await;
    }

    /// Panics (with log tails) when a relay or worker process is no longer running.
    pub fn assert_all_running(&mut self) {
        for p in self.relays.iter_mut().chain(self.workers.iter_mut()) {
            p.assert_running();
        }
    }

    // ---- emission

    /// A flow event: `{"n": n, "emitted_at": <now>}` with routing key `fault.flow`.
    pub fn flow_event(n: u64) -> OutboxEvent {
        let payload = serde_json::json!({ "n": n, "emitted_at": Utc::now().to_rfc3339() });
        OutboxEvent::json("fault.flow", &payload).expect("a valid event")
    }

    /// Commits `events` in transactions of 5,000 and returns their ids.
    pub async fn emit_backlog(&self, events: Vec<OutboxEvent>) -> Vec<Uuid> {
        let mut ids = Vec::with_capacity(events.len());
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let chunk: Vec<OutboxEvent> = events.by_ref().take(5_000).collect();
            let txn = self.db.begin().await.expect("begin");
            ids.extend(
                self.outbox
                    .emit_many(&txn, chunk)
                    .await
                    .expect("emit backlog"),
            );
            txn.commit().await.expect("commit backlog");
        }
        ids
    }

    /// Starts `tasks` emitter tasks committing `rate` events a second in total, one event
    /// per transaction, until stopped (see [`Emitter`]).
    pub fn start_emitter(&self, rate: u32, tasks: u32) -> Emitter {
        let plan = EmitPlan {
            rate,
            tasks,
            per_txn: 1,
            limit: None,
        };
        Emitter::start(self.db.clone(), self.outbox.clone(), plan)
    }

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
        let first = poll_until(
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
            "%FROM {} WHERE %FOR UPDATE SKIP LOCKED%",
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

    // ---- the broker

    async fn amqp(&self) -> Connection {
        Connection::connect(&self.services.amqp_url, ConnectionProperties::default())
            .await
            .expect("connect to AMQP_URL")
    }

    /// Messages ready in `queue`, or `None` when it does not exist.
    pub async fn depth(&self, queue: &str) -> Option<u32> {
        let conn = self.amqp().await;
        let channel = conn.create_channel().await.expect("channel");
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let depth = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .ok()
            .map(|q| q.message_count());
        let _ = conn.close(200, "".into()).await;
        depth
    }

    /// Takes every message of `queue` (acked: they are gone afterwards).
    pub async fn take_all(&self, queue: &str) -> Vec<DeadLetter> {
        let conn = self.amqp().await;
        let channel = conn.create_channel().await.expect("channel");
        let mut out = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap_or_else(|e| panic!("basic_get from {queue}: {e}"))
        {
            let props = &message.delivery.properties;
            let id = props
                .message_id()
                .as_ref()
                .and_then(|s| Uuid::parse_str(s.as_str()).ok())
                .unwrap_or_default();
            let reason = props
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-outbox-reason").cloned())
                .map(|v| match v {
                    AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            out.push(DeadLetter { id, reason });
        }
        let _ = conn.close(200, "".into()).await;
        out
    }

    // ---- the end of a case

    /// The end-of-case checks, in order: the outbox drains, every id of `handled` has a
    /// record, the queue drains and the dead-letter queue fills to `dead.len()`; then every
    /// relay and worker is stopped with SIGTERM and must exit 0; then the queue, the retry
    /// delay queues and the unroutable store must be empty, the dead-letter queue must hold
    /// exactly the ids of `dead`, and the ledger must have no record of an id outside
    /// `handled`. Returns the final tally (duplicates counted after the stop) and the dead
    /// letters; deletes the case's tables and broker objects.
    pub async fn finish(mut self, handled: &[Uuid], dead: &[Uuid], timeout: Duration) -> Finish {
        poll_until(
            &format!("[{}] the outbox table to drain", self.case),
            timeout,
            || async { (self.outbox_rows().await == 0).then_some(()) },
        )
        .await;
        self.wait_handled(handled, timeout).await;
        let (queue, dlq) = (self.names.queue.clone(), self.names.dlq());
        let want_dead = dead.len() as u32;
        poll_until(
            &format!(
                "[{}] the queue to drain and {want_dead} dead letters",
                self.case
            ),
            timeout,
            || async {
                let ready = self.depth(&queue).await == Some(0);
                let dead_ok = self.depth(&dlq).await.unwrap_or(0) >= want_dead;
                (ready && dead_ok).then_some(())
            },
        )
        .await;
        self.assert_all_running();
        self.stop_all().await;

        assert_eq!(
            self.depth(&queue).await,
            Some(0),
            "[{}] queue {queue} is not empty after the stop",
            self.case
        );
        let unroutable = self.names.unroutable();
        assert_eq!(
            self.depth(&unroutable).await.unwrap_or(0),
            0,
            "[{}] unroutable messages in {unroutable}",
            self.case
        );
        for ms in self.delays_ms.clone() {
            let delay = self.names.delay(ms);
            assert_eq!(
                self.depth(&delay).await.unwrap_or(0),
                0,
                "[{}] retries left in {delay}",
                self.case
            );
        }
        let letters = self.take_all(&dlq).await;
        let got: HashSet<Uuid> = letters.iter().map(|l| l.id).collect();
        let want: HashSet<Uuid> = dead.iter().copied().collect();
        assert_eq!(
            letters.len(),
            dead.len(),
            "[{}] dead letters in {dlq}: {letters:?}",
            self.case
        );
        assert_eq!(
            got, want,
            "[{}] the dead-letter queue holds other ids than expected",
            self.case
        );
        assert_eq!(
            self.outbox_rows().await,
            0,
            "[{}] outbox rows left",
            self.case
        );

        let tally = self.tally(handled).await;
        assert_eq!(tally.lost, 0, "[{}] LOST: {tally:?}", self.case);
        assert_eq!(
            tally.unexpected, 0,
            "[{}] records of ids nobody emitted: {tally:?}",
            self.case
        );
        self.cleanup().await;
        Finish {
            tally,
            dead_letters: letters,
        }
    }

    /// SIGTERM to every relay, then every worker; each must exit 0 within 30 s.
    async fn stop_all(&mut self) {
        for p in self.relays.iter_mut().chain(self.workers.iter_mut()) {
            let (status, took) = p.stop(STOP_TIMEOUT).await;
            assert!(
                status.success(),
                "{} exited with {status} after SIGTERM ({took:?}); log tail:\n{}",
                p.instance(),
                p.tail(30)
            );
        }
    }

    /// Drops the case's tables, deletes its broker objects and its logs (best effort).
    async fn cleanup(self) {
        for table in [&self.names.outbox_table, &self.names.seen_table] {
            let _ = self
                .db
                .execute_unprepared(&format!("DROP TABLE IF EXISTS {table} CASCADE"))
                .await;
            let _ = self
                .db
                .execute_unprepared(&format!("DROP FUNCTION IF EXISTS {table}_notify() CASCADE"))
                .await;
        }
        let conn = self.amqp().await;
        if let Ok(channel) = conn.create_channel().await {
            let n = &self.names;
            let mut queues = vec![n.queue.clone(), n.dlq(), n.unroutable()];
            let mut exchanges = vec![
                n.exchange.clone(),
                n.unroutable(),
                format!("{}.dlx", n.exchange),
            ];
            for ms in &self.delays_ms {
                queues.push(n.delay(*ms));
                exchanges.push(n.delay(*ms));
            }
            for q in &queues {
                let _ = channel
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            for e in &exchanges {
                let _ = channel
                    .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
        }
        let _ = conn.close(200, "".into()).await;
        let _ = self.db.close().await;
        if std::env::var_os("FAULT_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

fn env(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
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

// ---------------------------------------------------------------------------- emitter ---

/// The shape of an emitter's flow.
#[derive(Debug, Clone, Copy)]
pub struct EmitPlan {
    /// Events per second, all tasks together.
    pub rate: u32,
    /// Concurrent tasks (connections) emitting.
    pub tasks: u32,
    /// Events per transaction.
    pub per_txn: u32,
    /// Stop by themselves after this many events; `None`: until [`Emitter::stop`].
    pub limit: Option<u64>,
}

/// Tasks that commit events at a fixed pace, like an application emitting as it serves
/// requests. A failed begin, insert or commit is retried with the same events (same message
/// ids) until it commits, so every event whose commit succeeded is counted, and a commit that
/// failed on the client but succeeded on the server shows up as a duplicate, never as an
/// unknown id.
pub struct Emitter {
    stop: Arc<AtomicBool>,
    /// Each task's committed ids and when it ended.
    tasks: Vec<tokio::task::JoinHandle<(Vec<Uuid>, Instant)>>,
    committed: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    started: Instant,
}

/// What an [`Emitter`] committed.
#[derive(Debug)]
pub struct EmitReport {
    /// Ids whose transaction committed.
    pub committed: Vec<Uuid>,
    /// Attempts that failed and were retried.
    pub failed_attempts: u64,
    /// Committed events per second.
    pub rate: f64,
}

/// How long one transaction may keep failing before the emitter gives up (a panic).
const EMIT_PATIENCE: Duration = Duration::from_secs(90);

impl Emitter {
    /// Starts emitting `plan.rate` flow events a second ([`FaultRig::flow_event`]).
    pub fn start(db: DatabaseConnection, outbox: Outbox, plan: EmitPlan) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let per_second = f64::from(plan.rate.max(1)) / f64::from(plan.per_txn.max(1));
        let period = Duration::from_secs_f64(f64::from(plan.tasks.max(1)) / per_second);
        let handles = (0..plan.tasks.max(1))
            .map(|_| {
                let task = EmitTask {
                    db: db.clone(),
                    outbox: outbox.clone(),
                    stop: stop.clone(),
                    committed: committed.clone(),
                    failures: failures.clone(),
                    next: next.clone(),
                    per_txn: u64::from(plan.per_txn.max(1)),
                    limit: plan.limit.unwrap_or(u64::MAX),
                };
                tokio::spawn(task.run(period))
            })
            .collect();
        Self {
            stop,
            tasks: handles,
            committed,
            failures,
            started: Instant::now(),
        }
    }

    /// Events committed so far.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Attempts that failed so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Whether every task has ended (a limited plan reached its limit).
    pub fn is_done(&self) -> bool {
        self.tasks.iter().all(tokio::task::JoinHandle::is_finished)
    }

    /// Stops after each task's transaction in progress has committed.
    pub async fn stop(self) -> EmitReport {
        self.stop.store(true, Ordering::SeqCst);
        self.join().await
    }

    /// Waits for the tasks to end by themselves (a limited plan).
    pub async fn join(self) -> EmitReport {
        let mut committed = Vec::new();
        let mut ended = self.started;
        for task in self.tasks {
            let (ids, at) = task.await.expect("an emitter task panicked");
            committed.extend(ids);
            ended = ended.max(at);
        }
        let rate = committed.len() as f64 / (ended - self.started).as_secs_f64().max(0.001);
        EmitReport {
            committed,
            failed_attempts: self.failures.load(Ordering::Relaxed),
            rate,
        }
    }
}

struct EmitTask {
    db: DatabaseConnection,
    outbox: Outbox,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    /// The next event number, shared by the tasks.
    next: Arc<AtomicU64>,
    per_txn: u64,
    limit: u64,
}

impl EmitTask {
    async fn run(self, period: Duration) -> (Vec<Uuid>, Instant) {
        let mut ids = Vec::new();
        // Pacing of the flow (a fixed rate), not synchronisation.
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while !self.stop.load(Ordering::SeqCst) {
            tick.tick().await;
            let first = self.next.fetch_add(self.per_txn, Ordering::Relaxed);
            let last = (first + self.per_txn).min(self.limit);
            if first >= last {
                break;
            }
            let events: Vec<OutboxEvent> = (first..last).map(FaultRig::flow_event).collect();
            ids.extend(self.commit(events).await);
            self.committed.fetch_add(last - first, Ordering::Relaxed);
        }
        (ids, Instant::now())
    }

    /// Commits `events` in one transaction, retrying the same events until it commits.
    async fn commit(&self, events: Vec<OutboxEvent>) -> Vec<Uuid> {
        let first_try = Instant::now();
        loop {
            match self.try_commit(events.clone()).await {
                Ok(ids) => return ids,
                Err(e) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    assert!(
                        first_try.elapsed() < EMIT_PATIENCE,
                        "an emit kept failing for {EMIT_PATIENCE:?}: {e}"
                    );
                    // Backoff while the database is away, not synchronisation.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn try_commit(&self, events: Vec<OutboxEvent>) -> Result<Vec<Uuid>, actix_outbox::Error> {
        let txn = self.db.begin().await?;
        let ids = if let [event] = events.as_slice() {
            vec![self.outbox.emit_event(&txn, event.clone()).await?]
        } else {
            self.outbox.emit_many(&txn, events).await?
        };
        txn.commit().await?;
        Ok(ids)
    }
}

// ----------------------------------------------------------------------- service faults ---

/// Runs `rabbitmqctl <args>` (bounded at 120 s; `RABBITMQ_NODENAME` picks the node) and
/// panics on failure.
pub async fn rabbitmqctl(args: &[&str]) {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let output = run_tool("rabbitmqctl", args.clone()).await;
    assert!(
        output.status.success(),
        "rabbitmqctl {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Stops the broker app for `outage` and starts it again. Returns the moment `start_app`
/// returned (the broker accepts connections again), after also waiting for
/// `await_startup` so the broker is fully back before the caller goes on.
pub async fn restart_broker(outage: Duration) -> DateTime<Utc> {
    rabbitmqctl(&["stop_app"]).await;
    let guard = StartAppOnDrop;
    // The deliberate outage itself, not a synchronisation wait.
    tokio::time::sleep(outage).await;
    rabbitmqctl(&["start_app"]).await;
    std::mem::forget(guard);
    let back = Utc::now();
    rabbitmqctl(&["await_startup"]).await;
    back
}

/// Starts the broker app again if a broker restart is abandoned half-way (a panic, a
/// cancelled test), so the next test binary does not find the broker stopped.
struct StartAppOnDrop;

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .args(["120", "rabbitmqctl", "start_app"])
            .status();
    }
}

/// Restarts the PostgreSQL cluster that serves `database_url`'s port (found with
/// `pg_lsclusters`), then waits (bounded) until `pg_isready` accepts connections again.
pub async fn restart_postgres(database_url: &str) {
    let port = url_port(database_url, 5432);
    let clusters = run_tool("pg_lsclusters", vec!["-h".to_owned()]).await;
    let listing = String::from_utf8_lossy(&clusters.stdout).into_owned();
    let (version, name) = listing
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.get(2) == Some(&port.to_string().as_str()))
        .map(|cols| (cols[0].to_owned(), cols[1].to_owned()))
        .unwrap_or_else(|| {
            panic!("no PostgreSQL cluster on port {port} in pg_lsclusters: {listing}")
        });
    let output = run_tool(
        "pg_ctlcluster",
        vec![version.clone(), name.clone(), "restart".to_owned()],
    )
    .await;
    assert!(
        output.status.success(),
        "pg_ctlcluster {version} {name} restart failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let args = vec![
        "-q".to_owned(),
        "-h".to_owned(),
        "127.0.0.1".to_owned(),
        "-p".to_owned(),
        port.to_string(),
    ];
    poll_until(
        "PostgreSQL to accept connections again",
        Duration::from_secs(60),
        || {
            let args = args.clone();
            async move {
                run_tool("pg_isready", args)
                    .await
                    .status
                    .success()
                    .then_some(())
            }
        },
    )
    .await;
}

/// The port of a `scheme://user:pass@host:port/...` URL.
fn url_port(url: &str, default: u16) -> u16 {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split(['/', '?']).next().unwrap_or(host);
    host.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(default)
}

/// Runs a system tool under `timeout 120` off the async threads.
async fn run_tool(tool: &'static str, args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .arg("120")
            .arg(tool)
            .args(&args)
            .output()
    })
    .await
    .expect("spawn_blocking")
    .unwrap_or_else(|e| {
        panic!("cannot run {tool}: {e} (the fault matrix needs it on PATH, as root)")
    })
}
