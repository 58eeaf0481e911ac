//! [`FaultRig`], one fault case: its names, database connection and outbox, the `relay` and
//! `fault_worker` processes it starts (with [`WorkerOptions`]) and restarts, emission of a
//! backlog or of a paced flow, inspection of the case's broker queues, and
//! [`FaultRig::finish`], the end-of-case checks followed by the cleanup of the case's tables,
//! broker objects and logs. The ledger queries live in `ledger.rs`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use actix_outbox::{Outbox, OutboxEvent, TableName};
use chrono::Utc;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, TransactionTrait};
use uuid::Uuid;

use super::child::{ChildProcess, example_binary};
use super::emitter::{EmitPlan, Emitter};
use super::ledger::{DeadLetter, Finish};
use super::{Names, Services, wait_for};

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
    /// `quorum` or `classic`.
    pub queue_type: &'static str,
    /// Unsettled deliveries before a message is dead-lettered.
    pub max_redeliveries: u32,
    /// An inbox table (`FAULT_INBOX`): each event's `done` record written once.
    pub inbox: Option<String>,
    /// An ordered listener with this many partitions (`FAULT_ORDERED`); 0: a plain queue.
    pub partitions: u16,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            prefetch: 50,
            handler_delay_ms: "0".to_owned(),
            grace: Duration::from_secs(10),
            retry_delays_ms: vec![100, 200, 300, 400],
            record_starts: false,
            queue_type: "quorum",
            max_redeliveries: 20,
            inbox: None,
            partitions: 0,
        }
    }
}

impl WorkerOptions {
    #[must_use]
    pub fn with_partitions(mut self, partitions: u16) -> Self {
        self.partitions = partitions;
        self
    }

    pub fn with_inbox(mut self, table: impl Into<String>) -> Self {
        self.inbox = Some(table.into());
        self
    }

    #[must_use]
    pub fn with_queue_type(mut self, queue_type: &'static str) -> Self {
        self.queue_type = queue_type;
        self
    }

    #[must_use]
    pub fn with_max_redeliveries(mut self, max: u32) -> Self {
        self.max_redeliveries = max;
        self
    }

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
    /// Partitions of the ordered listener the workers run (0: a plain queue).
    partitions: u16,
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
            partitions: 0,
        }
    }

    /// Starts one more `relay` process claiming `batch_size` rows at a time and waits until
    /// its relay actor runs.
    pub async fn start_relay(&mut self, batch_size: u32) {
        self.start_relay_with(batch_size, &[]).await;
    }

    /// As [`start_relay`](Self::start_relay), with more environment variables (such as
    /// `OUTBOX_CLAIM_LEASE_MS`).
    pub async fn start_relay_with(&mut self, batch_size: u32, extra: &[(&str, &str)]) {
        let mut vars = vec![
            env("DATABASE_URL", &self.services.database_url),
            env("AMQP_URL", &self.services.amqp_url),
            env("OUTBOX_TABLE", &self.names.outbox_table),
            env("OUTBOX_EXCHANGE", &self.names.exchange),
            env("OUTBOX_BATCH_SIZE", &batch_size.to_string()),
            env("RUST_LOG", "info,sqlx=warn"),
        ];

        vars.extend(extra.iter().map(|(k, v)| env(k, v)));
        let name = format!("relay{}", self.relays.len());
        let mut relay = ChildProcess::start(&name, &self.relay_bin, vars, &self.log_dir);
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
        if options.partitions == 0 {
            // An ordered listener retries in place: it declares no delay queues.
            self.delays_ms
                .extend(options.retry_delays_ms.iter().copied());
        }
        let mut env = vec![
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
            env("FAULT_QUEUE_TYPE", options.queue_type),
            env(
                "FAULT_MAX_REDELIVERIES",
                &options.max_redeliveries.to_string(),
            ),
            env("RUST_LOG", "info,sqlx=warn"),
        ];
        if let Some(inbox) = &options.inbox {
            env.push(("FAULT_INBOX".to_owned(), inbox.clone()));
        }
        if options.partitions > 0 {
            self.partitions = options.partitions;
            env.push(("FAULT_ORDERED".to_owned(), options.partitions.to_string()));
        }
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

    /// The depth of `queue`, which must exist: a missing queue is a failure, not an empty one
    /// (a check of its depth would otherwise pass without looking at anything).
    pub async fn existing_depth(&self, queue: &str) -> u32 {
        self.depth(queue)
            .await
            .unwrap_or_else(|| panic!("[{}] queue {queue} does not exist", self.case))
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
        wait_for(
            &format!("[{}] the outbox table to drain", self.case),
            timeout,
            || async { (self.outbox_rows().await == 0).then_some(()) },
        )
        .await;
        self.wait_handled(handled, timeout).await;
        let (queue, dlq) = (self.names.queue.clone(), self.names.dlq());
        let want_dead = dead.len() as u32;
        wait_for(
            &format!(
                "[{}] the queue to drain and {want_dead} dead letters",
                self.case
            ),
            timeout,
            || async {
                let ready = self.handler_queues_empty().await;
                let dead_ok = self.depth(&dlq).await.unwrap_or(0) >= want_dead;
                (ready && dead_ok).then_some(())
            },
        )
        .await;
        self.assert_all_running();
        self.stop_all().await;

        assert!(
            self.handler_queues_empty().await,
            "[{}] queue {queue} (or a partition of it) is not empty after the stop",
            self.case
        );
        let unroutable = self.names.unroutable();
        assert_eq!(
            self.existing_depth(&unroutable).await,
            0,
            "[{}] unroutable messages in {unroutable}",
            self.case
        );
        for ms in self.delays_ms.clone() {
            let delay = self.names.delay(ms);
            assert_eq!(
                self.existing_depth(&delay).await,
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

    /// The queues the workers consume: the case's queue, or its partitions.
    fn handler_queues(&self) -> Vec<String> {
        match self.partitions {
            0 => vec![self.names.queue.clone()],
            n => (0..n)
                .map(|i| format!("{}.p{i}", self.names.queue))
                .collect(),
        }
    }

    /// Whether every handler queue exists and is empty.
    async fn handler_queues_empty(&self) -> bool {
        for queue in self.handler_queues() {
            if self.depth(&queue).await != Some(0) {
                return false;
            }
        }
        true
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
        {
            let n = &self.names;
            let mut queues = self.handler_queues();
            queues.extend([n.dlq(), n.unroutable()]);
            let mut exchanges = vec![
                n.exchange.clone(),
                n.unroutable(),
                format!("{}.dlx", n.exchange),
                format!("{}.ordered.{}", n.exchange, n.queue),
            ];
            for ms in &self.delays_ms {
                queues.push(n.delay(*ms));
                exchanges.push(n.delay(*ms));
            }
            super::delete_topology(conn, &queues, &exchanges).await;
        }
        let _ = self.db.close().await;
        if std::env::var_os("FAULT_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

fn env(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}
