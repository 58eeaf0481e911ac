//! Throughput and latency of actix-outbox against the raw ceilings of PostgreSQL and
//! RabbitMQ, measured in the same run on the same services. One JSON line per scenario.
//!
//! ```text
//! scripts/bench                                   # services up, release build, all scenarios
//! cargo run --release --example bench -- --scenarios relay_drain --messages 20000
//! ```
//!
//! Flags (defaults in brackets): `--scenarios` comma list [all], `--messages` [20000],
//! `--batch-size` [500], `--prefetch` [500], `--payload-bytes` [256], `--queue-type`
//! quorum|classic [quorum], `--relays` comma list [1,2,4], `--emit-tasks` [8],
//! `--emit-seconds` [5], `--rate` [1000], `--latency-seconds` [10], `--runs` [3]. Needs `DATABASE_URL` and `AMQP_URL` (defaults match
//! `scripts/services`). Each scenario runs `--runs` times; the JSON line reports the median,
//! min and max, the ceiling's median, their ratio and the target ratio.
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Actor;
use actix_outbox::{Error, Event, HandlerResult, OutboxEvent};
use actix_outbox_actors::{
    BrokerConfig, ConnectionSupervisor, Listen, QueueType, RelayActor, RelayConfig, RunningWorker,
    Shutdown, StopRelay, Worker, WorkerConfig,
};
use futures_util::StreamExt;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
    TransactionTrait,
};
use serde_json::{Value, json};

/// Command-line parameters.
#[derive(Debug, Clone)]
struct Params {
    scenarios: Vec<String>,
    messages: usize,
    batch_size: u32,
    prefetch: u16,
    payload_bytes: usize,
    queue_type: String,
    relays: Vec<usize>,
    emit_tasks: usize,
    emit_seconds: u64,
    rate: u64,
    latency_seconds: u64,
    runs: usize,
}

impl Params {
    fn parse() -> Result<Self, Error> {
        let mut p = Params {
            scenarios: [
                "emit",
                "emit_many",
                "relay_drain",
                "consume",
                "end_to_end",
                "latency",
                "footprint",
            ]
            .map(String::from)
            .to_vec(),
            messages: 20_000,
            batch_size: 500,
            prefetch: 500,
            payload_bytes: 256,
            queue_type: "quorum".into(),
            relays: vec![1, 2, 4],
            emit_tasks: 8,
            emit_seconds: 5,
            rate: 1_000,
            latency_seconds: 10,
            runs: 3,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        for pair in args.chunks(2) {
            let [flag, value] = pair else {
                return Err(bad("flags", format!("{:?} has no value", pair[0])));
            };
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|e| bad("flag", format!("{flag}: {e}")))
            };
            match flag.as_str() {
                "--scenarios" => p.scenarios = value.split(',').map(String::from).collect(),
                "--messages" => p.messages = num(value)? as usize,
                "--batch-size" => p.batch_size = num(value)? as u32,
                "--prefetch" => p.prefetch = num(value)? as u16,
                "--payload-bytes" => p.payload_bytes = num(value)? as usize,
                "--queue-type" => p.queue_type = value.clone(),
                "--relays" => {
                    p.relays = value
                        .split(',')
                        .map(|v| num(v).map(|n| n as usize))
                        .collect::<Result<_, _>>()?
                }
                "--emit-tasks" => p.emit_tasks = num(value)? as usize,
                "--emit-seconds" => p.emit_seconds = num(value)?,
                "--runs" => p.runs = num(value)?.max(1) as usize,
                "--rate" => p.rate = num(value)?.max(1),
                "--latency-seconds" => p.latency_seconds = num(value)?.max(1),
                other => return Err(bad("flag", format!("unknown flag {other}"))),
            }
        }
        Ok(p)
    }
}

fn bad(field: &'static str, reason: String) -> Error {
    Error::InvalidConfig { field, reason }
}

/// Median, min and max of a scenario's runs.
#[derive(Debug, Clone, Copy)]
struct Summary {
    median: f64,
    min: f64,
    max: f64,
}

fn summarize(mut values: Vec<f64>) -> Summary {
    values.sort_by(f64::total_cmp);
    Summary {
        median: values[values.len() / 2],
        min: values[0],
        max: values[values.len() - 1],
    }
}

fn report(
    scenario: &str,
    params: Value,
    result: Summary,
    unit: &str,
    ceiling: Option<(&str, Summary)>,
    target: f64,
) {
    let mut line = json!({
        "scenario": scenario,
        "params": params,
        "result": {"median": result.median.round(), "min": result.min.round(), "max": result.max.round(), "unit": unit},
        "target_ratio": target,
    });
    if let Some((name, c)) = ceiling {
        let ratio = result.median / c.median;
        line["ceiling"] = json!({"name": name, "median": c.median.round(), "min": c.min.round(), "max": c.max.round(), "unit": unit});
        line["ratio"] = json!((ratio * 1000.0).round() / 1000.0);
        line["meets_target"] = json!(ratio >= target);
    }
    println!("{line}");
}

/// Shared handles of the run.
struct Bench {
    params: Params,
    db: DatabaseConnection,
    amqp_url: String,
    /// lapin's runtime for the raw ceilings (like the supervisor's own).
    lapin_rt: LapinRuntime,
    payload: Value,
}

impl Bench {
    async fn raw_connection(&self) -> Result<Connection, Error> {
        let handle = self.lapin_rt.handle();
        let url = self.amqp_url.clone();
        let conn = handle
            .clone()
            .spawn(async move {
                let rt = async_rs_runtime(handle);
                Connection::connect_with_runtime(&url, ConnectionProperties::default(), rt).await
            })
            .await
            .map_err(|e| bad("runtime", e.to_string()))??;
        Ok(conn)
    }

    fn events(&self, n: usize, key: &str) -> Result<Vec<OutboxEvent>, Error> {
        (0..n)
            .map(|_| OutboxEvent::json(key, &self.payload))
            .collect()
    }

    /// A fresh queue of the configured type bound to `exchange` with `#`.
    async fn queue(&self, conn: &Connection, exchange: &str, name: &str) -> Result<(), Error> {
        let ch = conn.create_channel().await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(self.params.queue_type.as_str().into()),
        );
        let _ = ch
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await;
        let ch = conn.create_channel().await?;
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
        ch.queue_bind(
            name.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(())
    }

    async fn purge(&self, conn: &Connection, name: &str) -> Result<(), Error> {
        let ch = conn.create_channel().await?;
        ch.queue_purge(name.into(), QueuePurgeOptions::default())
            .await?;
        Ok(())
    }
}

fn async_rs_runtime(handle: tokio::runtime::Handle) -> async_rs::TokioRuntime {
    async_rs::Runtime::tokio_with_handle(handle)
}

#[actix::main]
async fn main() -> Result<(), Error> {
    if std::env::args().nth(1).as_deref() == Some("--worker-process") {
        return worker_process().await;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let params = Params::parse()?;
    let db_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://outbox:outbox@127.0.0.1:5432/outbox".into());
    let amqp_url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://outbox:outbox@127.0.0.1:5672/%2f".into());
    let mut options = ConnectOptions::new(db_url);
    options.sqlx_logging(false).max_connections(20);
    let db = Database::connect(options).await?;
    let lapin_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| bad("runtime", e.to_string()))?;
    let filler = "x".repeat(params.payload_bytes.saturating_sub(40));
    let lapin_rt = LapinRuntime(Some(lapin_rt));
    let bench = Bench {
        payload: json!({"id": 0, "pad": filler}),
        params,
        db,
        amqp_url,
        lapin_rt,
    };
    eprintln!("params: {:?}", bench.params);
    for scenario in bench.params.scenarios.clone() {
        match scenario.as_str() {
            "emit" => emit(&bench).await?,
            "emit_many" => emit_many(&bench).await?,
            "relay_drain" => relay_drain(&bench).await?,
            "consume" => consume(&bench).await?,
            "end_to_end" => end_to_end(&bench).await?,
            "latency" => {
                let footprint_too = bench.params.scenarios.iter().any(|s| s == "footprint");
                latency(&bench, true, footprint_too).await?
            }
            "footprint" if bench.params.scenarios.iter().any(|s| s == "latency") => {}
            "footprint" => latency(&bench, false, true).await?,
            other => return Err(bad("scenario", format!("unknown scenario {other}"))),
        }
    }
    bench.db.close().await?;
    Ok(())
}

/// A runtime that shuts down without blocking when dropped (also on an early `?` return,
/// where a plain drop inside the actix runtime would panic).
struct LapinRuntime(Option<tokio::runtime::Runtime>);

impl LapinRuntime {
    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .map(|rt| rt.handle().clone())
            .unwrap_or_else(tokio::runtime::Handle::current)
    }
}

impl Drop for LapinRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------- emit ---

/// One-event transactions (business row + emit) from N tasks for S seconds, against the same
/// transactions inserting the same row into a plain table with bare SQL.
async fn emit(b: &Bench) -> Result<(), Error> {
    let db = &b.db;
    db.execute_unprepared("DROP TABLE IF EXISTS bench_emit_outbox, bench_plain, bench_users")
        .await?;
    actix_outbox::Outbox::new(actix_outbox::TableName::new("bench_emit_outbox")?)
        .setup(db)
        .await?;
    db.execute_unprepared(
        "CREATE TABLE bench_users (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);
         CREATE TABLE bench_plain (id BIGSERIAL PRIMARY KEY, message_id UUID NOT NULL, routing_key VARCHAR(255) NOT NULL,
             payload BYTEA NOT NULL, content_type TEXT NOT NULL, headers JSONB NOT NULL DEFAULT '{}',
             created_at TIMESTAMPTZ NOT NULL DEFAULT now(), send_after TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await?;
    let outbox = actix_outbox::Outbox::new(actix_outbox::TableName::new("bench_emit_outbox")?);
    let payload = serde_json::to_vec(&b.payload).map_err(Error::Json)?;
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..b.params.runs {
        ours.push(
            timed_tasks(b, |db| {
                let outbox = outbox.clone();
                let payload = b.payload.clone();
                async move {
                    let txn = db.begin().await?;
                    txn.execute_unprepared("INSERT INTO bench_users (name) VALUES ('bench')")
                        .await?;
                    outbox.emit(&txn, "bench.emit", &payload).await?;
                    txn.commit().await?;
                    Ok(())
                }
            })
            .await?,
        );
        raw.push(timed_tasks(b, |db| {
            let payload = payload.clone();
            async move {
                let txn = db.begin().await?;
                txn.execute_unprepared("INSERT INTO bench_users (name) VALUES ('bench')").await?;
                txn.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "INSERT INTO bench_plain (message_id, routing_key, payload, content_type, headers) VALUES ($1, $2, $3, $4, $5)",
                    [uuid::Uuid::now_v7().into(), "bench.emit".into(), payload.into(), "application/json".into(), json!({}).into()],
                ))
                .await?;
                txn.commit().await?;
                Ok(())
            }
        })
        .await?);
    }
    let params = json!({"tasks": b.params.emit_tasks, "seconds": b.params.emit_seconds, "payload_bytes": b.params.payload_bytes});
    report(
        "emit",
        params,
        summarize(ours),
        "events/s",
        Some(("bare_sql_insert", summarize(raw))),
        0.75,
    );
    db.execute_unprepared("DROP TABLE IF EXISTS bench_emit_outbox, bench_plain, bench_users")
        .await?;
    Ok(())
}

/// Runs `op` in a loop from `emit_tasks` tasks for `emit_seconds`; returns operations/s.
async fn timed_tasks<F, Fut>(b: &Bench, op: F) -> Result<f64, Error>
where
    F: Fn(DatabaseConnection) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>> + 'static,
{
    let deadline = Instant::now() + Duration::from_secs(b.params.emit_seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..b.params.emit_tasks {
        let db = b.db.clone();
        let op = &op;
        tasks.push(async move {
            let mut n = 0_u64;
            while Instant::now() < deadline {
                op(db.clone()).await?;
                n += 1;
            }
            Ok::<u64, Error>(n)
        });
    }
    let counts = futures_util::future::try_join_all(tasks).await?;
    Ok(counts.iter().sum::<u64>() as f64 / start.elapsed().as_secs_f64())
}

/// Inserts `n` outbox-shaped rows into `table` with bare multi-row INSERTs (1,000 rows a
/// statement, one transaction); returns how long it took.
async fn bare_multi_row_insert(
    db: &DatabaseConnection,
    table: &str,
    n: usize,
    payload: &[u8],
) -> Result<Duration, Error> {
    let start = Instant::now();
    let txn = db.begin().await?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        let mut sql = format!(
            "INSERT INTO {table} (message_id, routing_key, payload, content_type, headers, expires_at) VALUES "
        );
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 6);
        for (i, _) in chunk.iter().enumerate() {
            let k = i * 6;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${},${},${},${},${},${})",
                k + 1,
                k + 2,
                k + 3,
                k + 4,
                k + 5,
                k + 6
            ));
            values.extend([
                uuid::Uuid::now_v7().into(),
                "bench.many".into(),
                payload.to_vec().into(),
                "application/json".into(),
                json!({"x-outbox-tracking-ids": [uuid::Uuid::now_v7().to_string()]}).into(),
                Option::<chrono::DateTime<chrono::Utc>>::None.into(),
            ]);
        }
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await?;
    }
    txn.commit().await?;
    Ok(start.elapsed())
}

/// 20,000 events in one transaction, against a bare multi-row INSERT of the same rows.
async fn emit_many(b: &Bench) -> Result<(), Error> {
    let db = &b.db;
    let table = actix_outbox::TableName::new("bench_many_outbox")?;
    let outbox = actix_outbox::Outbox::new(table);
    db.execute_unprepared("DROP TABLE IF EXISTS bench_many_outbox, bench_many_plain")
        .await?;
    outbox.setup(db).await?;
    db.execute_unprepared("CREATE TABLE bench_many_plain (LIKE bench_many_outbox INCLUDING ALL)")
        .await?;
    let n = b.params.messages;
    let payload = serde_json::to_vec(&b.payload).map_err(Error::Json)?;
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..b.params.runs {
        let events = b.events(n, "bench.many")?;
        let start = Instant::now();
        let txn = db.begin().await?;
        outbox.emit_many(&txn, events).await?;
        txn.commit().await?;
        ours.push(n as f64 / start.elapsed().as_secs_f64());

        let took = bare_multi_row_insert(db, "bench_many_plain", n, &payload).await?;
        raw.push(n as f64 / took.as_secs_f64());
        db.execute_unprepared("TRUNCATE bench_many_outbox, bench_many_plain")
            .await?;
    }
    let params = json!({"events": n, "payload_bytes": b.params.payload_bytes});
    report(
        "emit_many",
        params,
        summarize(ours),
        "events/s",
        Some(("bare_multi_row_insert", summarize(raw))),
        0.75,
    );
    db.execute_unprepared("DROP TABLE IF EXISTS bench_many_outbox, bench_many_plain")
        .await?;
    Ok(())
}

// --------------------------------------------------------- relay_drain ---

/// A backlog drained by 1, 2 and 4 relays into a durable queue, against raw lapin publishing
/// with confirms (same exchange, queue type, batch window) and a raw SQL claim-and-delete of
/// the same rows in the same batch size.
async fn relay_drain(b: &Bench) -> Result<(), Error> {
    let n = b.params.messages;
    let table = actix_outbox::TableName::new("bench_relay_outbox")?;
    let outbox = actix_outbox::Outbox::new(table.clone());
    b.db.execute_unprepared("DROP TABLE IF EXISTS bench_relay_outbox")
        .await?;
    outbox.setup(&b.db).await?;
    let exchange = "bench_relay";
    let queue = "bench_relay_q";
    let conn = b.raw_connection().await?;
    // Let a relay declare the exchange the way it always does, then bind the queue.
    let config = RelayConfig::default()
        .with_table(table.clone())
        .with_exchange(exchange)
        .with_batch_size(b.params.batch_size);
    run_relays(b, &config, 1, 0).await?;
    b.queue(&conn, exchange, queue).await?;

    let publish = summarize(raw_publish_runs(b, &conn, exchange, queue).await?);
    let sql = summarize(raw_claim_delete_runs(b, &outbox).await?);
    let (ceiling_name, ceiling) = if publish.median <= sql.median {
        ("lapin_publish_confirms", publish)
    } else {
        ("sql_claim_delete", sql)
    };
    for &relays in &b.params.relays {
        let mut runs = Vec::new();
        for _ in 0..b.params.runs {
            let txn = b.db.begin().await?;
            outbox.emit_many(&txn, b.events(n, "bench.relay")?).await?;
            txn.commit().await?;
            runs.push(run_relays(b, &config, relays, n).await?);
            b.purge(&conn, queue).await?;
        }
        let params = json!({"backlog": n, "relays": relays, "batch_size": b.params.batch_size,
            "payload_bytes": b.params.payload_bytes, "queue_type": b.params.queue_type,
            "ceilings": {"lapin_publish_confirms": publish.median.round(), "sql_claim_delete": sql.median.round()}});
        report(
            "relay_drain",
            params,
            summarize(runs),
            "msg/s",
            Some((ceiling_name, ceiling)),
            0.7,
        );
    }
    let ch = conn.create_channel().await?;
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "".into()).await;
    b.db.execute_unprepared("DROP TABLE IF EXISTS bench_relay_outbox")
        .await?;
    Ok(())
}

/// Starts `relays` relays, waits until the table is empty, stops them; returns rows/s.
async fn run_relays(
    b: &Bench,
    config: &RelayConfig,
    relays: usize,
    n: usize,
) -> Result<f64, Error> {
    let broker = ConnectionSupervisor::start_supervised(BrokerConfig::new(b.amqp_url.clone())?)?;
    let start = Instant::now();
    let running: Vec<_> = (0..relays)
        .map(|_| RelayActor::new(b.db.clone(), broker.clone(), config.clone()).map(Actor::start))
        .collect::<Result<_, _>>()?;
    let count = format!("SELECT count(*) AS n FROM {}", config.table());
    let mut published = 0;
    loop {
        let left =
            b.db.query_one_raw(Statement::from_string(DbBackend::Postgres, count.clone()))
                .await?
                .map(|r| r.try_get::<i64>("", "n"))
                .transpose()?
                .unwrap_or(0);
        if left == 0 {
            break;
        }
        if start.elapsed() > Duration::from_secs(300) {
            return Err(Error::Timeout {
                what: "relays draining the backlog",
                after: Duration::from_secs(300),
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    for relay in running {
        published += relay.send(StopRelay).await?.published;
    }
    broker.send(Shutdown).await?;
    if published < n as u64 {
        return Err(bad("bench", format!("relays published {published} of {n}")));
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

async fn raw_publish_runs(
    b: &Bench,
    conn: &Connection,
    exchange: &str,
    queue: &str,
) -> Result<Vec<f64>, Error> {
    let body = serde_json::to_vec(&b.payload).map_err(Error::Json)?;
    let mut runs = Vec::new();
    for _ in 0..b.params.runs {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let start = Instant::now();
        for chunk in (0..b.params.messages)
            .collect::<Vec<_>>()
            .chunks(b.params.batch_size as usize)
        {
            let mut confirms = Vec::with_capacity(chunk.len());
            for _ in chunk {
                let props = BasicProperties::default()
                    .with_message_id(uuid::Uuid::now_v7().to_string().into())
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2);
                confirms.push(
                    ch.basic_publish(
                        exchange.into(),
                        "bench.relay".into(),
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        &body,
                        props,
                    )
                    .await?,
                );
            }
            for c in confirms {
                c.await?;
            }
        }
        runs.push(b.params.messages as f64 / start.elapsed().as_secs_f64());
        b.purge(conn, queue).await?;
    }
    Ok(runs)
}

async fn raw_claim_delete_runs(
    b: &Bench,
    outbox: &actix_outbox::Outbox,
) -> Result<Vec<f64>, Error> {
    let t = outbox.table().as_str();
    let mut runs = Vec::new();
    for _ in 0..b.params.runs {
        let txn = b.db.begin().await?;
        outbox
            .emit_many(&txn, b.events(b.params.messages, "bench.sql")?)
            .await?;
        txn.commit().await?;
        let start = Instant::now();
        loop {
            let txn = b.db.begin().await?;
            let rows = txn
                .query_all_raw(Statement::from_string(
                    DbBackend::Postgres,
                    format!("SELECT id, message_id, routing_key, payload, content_type, headers FROM {t} WHERE sent_at IS NULL AND parked_at IS NULL AND send_after <= now() ORDER BY send_after, id LIMIT {} FOR UPDATE SKIP LOCKED", b.params.batch_size),
                ))
                .await?;
            if rows.is_empty() {
                txn.commit().await?;
                break;
            }
            let ids: Vec<String> = rows
                .iter()
                .map(|r| r.try_get::<i64>("", "id").map(|i| i.to_string()))
                .collect::<Result<_, _>>()?;
            txn.execute_unprepared(&format!("DELETE FROM {t} WHERE id IN ({})", ids.join(",")))
                .await?;
            txn.commit().await?;
        }
        runs.push(b.params.messages as f64 / start.elapsed().as_secs_f64());
    }
    Ok(runs)
}

// ------------------------------------------------------------- consume ---

/// What the bench handlers receive.
#[derive(serde::Deserialize)]
struct BenchPayload {
    /// Microseconds since the Unix epoch when the event was emitted (latency runs).
    #[serde(default)]
    sent_us: u64,
}

/// A no-op handler that counts, and records latencies when asked to.
struct Counter {
    handled: Arc<AtomicU64>,
    latencies: Option<Arc<Mutex<Vec<u64>>>>,
    /// When the latest message was handled (µs since the epoch).
    last_us: Arc<AtomicU64>,
}

impl actix::Actor for Counter {
    type Context = actix::Context<Self>;
}

impl actix::Handler<Event<BenchPayload>> for Counter {
    type Result = HandlerResult;
    fn handle(
        &mut self,
        event: Event<BenchPayload>,
        _: &mut actix::Context<Self>,
    ) -> HandlerResult {
        if let Some(latencies) = &self.latencies {
            let now = now_us();
            if let Ok(mut l) = latencies.lock() {
                l.push(now.saturating_sub(event.payload().sent_us));
            }
        }
        self.last_us.store(now_us(), Ordering::Relaxed);
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Starts a worker with one counting handler on `queue` (bound with `#`).
async fn start_worker(
    b: &Bench,
    broker: &actix::Addr<ConnectionSupervisor>,
    exchange: &str,
    queue: &str,
    handled: Arc<AtomicU64>,
    latencies: Option<Arc<Mutex<Vec<u64>>>>,
) -> Result<RunningWorker, Error> {
    let queue_type = if b.params.queue_type == "classic" {
        QueueType::Classic
    } else {
        QueueType::Quorum
    };
    let config = WorkerConfig::default()
        .with_exchange(exchange)
        .with_prefetch(b.params.prefetch)
        .with_queue_type(queue_type);
    Worker::new(broker.clone(), config)?
        .listen(Listen::new(["#"])?.queue(queue), move || Counter {
            handled: handled.clone(),
            latencies: latencies.clone(),
            last_us: Arc::default(),
        })?
        .start()
        .await
}

/// Publishes `n` bench messages with confirms (windows of the batch size).
async fn publish_raw(
    b: &Bench,
    ch: &lapin::Channel,
    exchange: &str,
    n: usize,
) -> Result<(), Error> {
    let body = serde_json::to_vec(&b.payload).map_err(Error::Json)?;
    for chunk in (0..n)
        .collect::<Vec<_>>()
        .chunks(b.params.batch_size as usize)
    {
        let mut confirms = Vec::with_capacity(chunk.len());
        for _ in chunk {
            let props = BasicProperties::default()
                .with_message_id(uuid::Uuid::now_v7().to_string().into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            confirms.push(
                ch.basic_publish(
                    exchange.into(),
                    "bench.item".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &body,
                    props,
                )
                .await?,
            );
        }
        for c in confirms {
            c.await?;
        }
    }
    Ok(())
}

/// Raw consume + ack of `n` messages with the bench prefetch; returns when all are acked.
async fn consume_raw(conn: &Connection, queue: &str, prefetch: u16, n: usize) -> Result<(), Error> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(prefetch, lapin::options::BasicQosOptions::default())
        .await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "bench-raw".into(),
            lapin::options::BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Each message is decoded and acked on its own; acks are pipelined (awaited in bulk),
    // as a tuned hand-written consumer would do.
    let mut acks = Vec::with_capacity(prefetch as usize);
    let mut done = 0;
    while done < n {
        let Some(delivery) = consumer.next().await else {
            break;
        };
        let delivery = delivery?;
        let _: BenchPayload = serde_json::from_slice(&delivery.data).map_err(Error::Json)?;
        let acker = delivery.acker;
        acks.push(async move { acker.ack(lapin::options::BasicAckOptions::default()).await });
        done += 1;
        if acks.len() >= usize::from(prefetch / 2).max(1) {
            for r in futures_util::future::join_all(acks.drain(..)).await {
                r?;
            }
        }
    }
    for r in futures_util::future::join_all(acks).await {
        r?;
    }
    let _ = ch.close(200, "".into()).await;
    Ok(())
}

async fn wait_count(counter: &AtomicU64, n: u64, what: &'static str) -> Result<(), Error> {
    let start = Instant::now();
    while counter.load(Ordering::Relaxed) < n {
        if start.elapsed() > Duration::from_secs(300) {
            return Err(Error::Timeout {
                what,
                after: Duration::from_secs(300),
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// 20,000 messages waiting in a queue, handled by one worker with a no-op handler, against a
/// raw lapin consumer acking each with the same prefetch, on the same queue.
async fn consume(b: &Bench) -> Result<(), Error> {
    let n = b.params.messages;
    let (exchange, queue) = ("bench_consume", "bench_consume_q");
    let conn = b.raw_connection().await?;
    let broker = ConnectionSupervisor::start_supervised(BrokerConfig::new(b.amqp_url.clone())?)?;
    let pub_ch = conn.create_channel().await?;
    pub_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    // Declare the worker's topology once (and empty the queue of earlier runs).
    let handled = Arc::new(AtomicU64::new(0));
    start_worker(b, &broker, exchange, queue, handled.clone(), None)
        .await?
        .stop()
        .await;
    b.purge(&conn, queue).await?;
    for _ in 0..b.params.runs {
        publish_raw(b, &pub_ch, exchange, n).await?;
        let handled = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let worker = start_worker(b, &broker, exchange, queue, handled.clone(), None).await?;
        wait_count(&handled, n as u64, "the worker consuming the queue").await?;
        ours.push(n as f64 / start.elapsed().as_secs_f64());
        worker.stop().await;

        publish_raw(b, &pub_ch, exchange, n).await?;
        let start = Instant::now();
        consume_raw(&conn, queue, b.params.prefetch, n).await?;
        raw.push(n as f64 / start.elapsed().as_secs_f64());
    }
    broker.send(Shutdown).await?;
    let _ = conn.close(200, "".into()).await;
    let params = json!({"messages": n, "prefetch": b.params.prefetch, "queue_type": b.params.queue_type, "payload_bytes": b.params.payload_bytes, "handler": "no-op"});
    report(
        "consume",
        params,
        summarize(ours),
        "msg/s",
        Some(("lapin_consume_ack", summarize(raw))),
        0.7,
    );
    Ok(())
}

// ---------------------------------------------------------- end_to_end ---

/// 20,000 events emitted in one transaction; time until the last is handled (relay and
/// worker running in their own processes, as in production), against raw lapin publishing with confirms and consuming with acks the
/// same number of messages at the same time.
async fn end_to_end(b: &Bench) -> Result<(), Error> {
    let n = b.params.messages;
    let (exchange, queue) = ("bench_e2e", "bench_e2e_q");
    let table = actix_outbox::TableName::new("bench_e2e_outbox")?;
    let outbox = actix_outbox::Outbox::new(table.clone());
    b.db.execute_unprepared("DROP TABLE IF EXISTS bench_e2e_outbox")
        .await?;
    outbox.setup(&b.db).await?;
    b.db.execute_unprepared(
        "DROP TABLE IF EXISTS bench_e2e_plain; CREATE TABLE bench_e2e_plain (LIKE bench_e2e_outbox INCLUDING ALL)",
    )
    .await?;
    let body = serde_json::to_vec(&b.payload).map_err(Error::Json)?;
    let conn = b.raw_connection().await?;
    let pub_ch = conn.create_channel().await?;
    pub_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (mut ours, mut raw, mut composed) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..b.params.runs {
        // The production layout: relay and worker in their own processes.
        let (worker, mut relay) = spawn_pipeline(b, &table, exchange, queue, n as u64).await?;
        tokio::time::sleep(Duration::from_secs(2)).await; // start-up, not synchronisation
        let events = b.events(n, "bench.e2e")?;
        let start_us = now_us();
        let txn = b.db.begin().await?;
        outbox.emit_many(&txn, events).await?;
        txn.commit().await?;
        let report = worker_report(worker).await;
        stop_process(&mut relay);
        let report = report?;
        let handled = report["handled"].as_u64().unwrap_or(0);
        if handled < n as u64 {
            return Err(bad("end_to_end", format!("the worker handled {handled} of {n}")));
        }
        let last_us = report["last_us"].as_u64().unwrap_or(0);
        ours.push(n as f64 / (last_us.saturating_sub(start_us) as f64 / 1e6));

        let start = Instant::now();
        let consuming = consume_raw(&conn, queue, b.params.prefetch, n);
        let publishing = publish_raw(b, &pub_ch, exchange, n);
        let (c, p) = tokio::join!(consuming, publishing);
        c?;
        p?;
        let pubsub = start.elapsed();
        raw.push(n as f64 / pubsub.as_secs_f64());
        // The events must be committed before anything can leave: the bare insert of the same
        // rows plus the raw publish-and-consume is what an outbox could reach at best here.
        let insert = bare_multi_row_insert(&b.db, "bench_e2e_plain", n, &body).await?;
        composed.push(n as f64 / (insert + pubsub).as_secs_f64());
    }
    let _ = conn.close(200, "".into()).await;
    b.db.execute_unprepared("DROP TABLE IF EXISTS bench_e2e_outbox, bench_e2e_plain")
        .await?;
    let composed = summarize(composed);
    let params = json!({"events": n, "batch_size": b.params.batch_size, "prefetch": b.params.prefetch, "queue_type": b.params.queue_type, "payload_bytes": b.params.payload_bytes,
        "layout": "relay and worker in separate processes",
        "composed_floor": {"what": "bare multi-row insert, then raw publish+consume", "median": composed.median.round(), "ratio": ((summarize(ours.clone()).median / composed.median) * 1000.0).round() / 1000.0}});
    report(
        "end_to_end",
        params,
        summarize(ours),
        "msg/s",
        Some(("lapin_publish_and_consume_concurrently", summarize(raw))),
        0.8,
    );
    Ok(())
}

// ------------------------------------------------------------- latency ---

/// Emits `rate` events/s, one per transaction, for `latency_seconds` while a relay and a
/// worker run in this process; returns (latencies in µs, emitted, seconds taken to emit).
async fn paced_emit(
    b: &Bench,
    outbox: &actix_outbox::Outbox,
    key: &str,
) -> Result<(u64, f64), Error> {
    let total = b.params.rate * b.params.latency_seconds;
    let period = Duration::from_secs_f64(1.0 / b.params.rate as f64);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let pad = b.payload["pad"].clone();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for _ in 0..total {
        ticker.tick().await;
        let (db, outbox, pad, key) = (b.db.clone(), outbox.clone(), pad.clone(), key.to_owned());
        // Each emit is its own transaction; spawned so a slow commit does not delay the pace.
        tasks.push(actix::spawn(async move {
            let txn = db.begin().await?;
            outbox
                .emit(&txn, &key, &json!({"sent_us": now_us(), "pad": pad}))
                .await?;
            txn.commit().await?;
            Ok::<(), Error>(())
        }));
    }
    let emitting = start.elapsed().as_secs_f64();
    for task in tasks {
        task.await.map_err(|e| bad("emit task", e.to_string()))??;
    }
    Ok((total, emitting))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

/// Emit → handler latency at a fixed rate (1,000/s by default) for 10 s, with the relay and
/// the worker each in its own process (the production layout): the `relay` example and this
/// program in `--worker-process` mode. Also reports both processes' peak RSS (`footprint`).
async fn latency(b: &Bench, print_latency: bool, print_footprint: bool) -> Result<(), Error> {
    let (exchange, queue) = (
        "bench_latency",
        format!("bench_latency_{}", b.params.queue_type),
    );
    let table = actix_outbox::TableName::new("bench_latency_outbox")?;
    let outbox = actix_outbox::Outbox::new(table.clone());
    b.db.execute_unprepared("DROP TABLE IF EXISTS bench_latency_outbox")
        .await?;
    outbox.setup(&b.db).await?;
    let total = b.params.rate * b.params.latency_seconds;
    let (worker, mut relay) = spawn_pipeline(b, &table, exchange, &queue, total).await?;
    // Both processes connect, declare and LISTEN before the load starts (start-up, not sync).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let emitted = paced_emit(b, &outbox, "bench.latency").await;
    // The worker exits by itself once it handled `total` messages (or after 60 s).
    let report = worker_report(worker).await;
    let relay_kib = peak_rss_kib(relay.id());
    stop_process(&mut relay);
    b.db.execute_unprepared("DROP TABLE IF EXISTS bench_latency_outbox")
        .await?;
    let (total, emitting) = emitted?;
    let report = report?;
    let floor = broker_latency_floor(b, exchange).await?;
    let mut l: Vec<u64> = report["latencies_us"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    l.sort_unstable();
    let achieved = total as f64 / emitting;
    let kept_up = l.len() as u64 == total && achieved >= 0.95 * b.params.rate as f64;
    let p99 = percentile(&l, 0.99);
    let params = json!({"rate": b.params.rate, "seconds": b.params.latency_seconds, "queue_type": b.params.queue_type,
        "prefetch": b.params.prefetch, "layout": "emitter, relay and worker in separate processes"});
    if print_latency {
        println!(
            "{}",
            json!({
                "scenario": "latency",
                "params": params,
                "result": {"p50_ms": percentile(&l, 0.5), "p95_ms": percentile(&l, 0.95), "p99_ms": p99, "max_ms": percentile(&l, 1.0),
                           "handled": l.len(), "emitted": total, "achieved_rate": achieved.round(), "kept_up": kept_up},
                "floor_raw_broker": floor,
                "target": {"p99_ms": 10.0},
                "meets_target": kept_up && p99 <= 10.0,
            })
        );
    }
    if print_footprint {
        let mib = |k: Option<u64>| k.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0);
        println!(
            "{}",
            json!({
                "scenario": "footprint",
                "params": params,
                "result": {"relay_peak_rss_mib": mib(relay_kib), "worker_peak_rss_mib": mib(report["peak_rss_kib"].as_u64())},
            })
        );
    }
    Ok(())
}

/// Starts the production layout for `table`: the `relay` example and this program in
/// `--worker-process` mode (which exits after `expected` messages), on an empty `queue`.
async fn spawn_pipeline(
    b: &Bench,
    table: &actix_outbox::TableName,
    exchange: &str,
    queue: &str,
    expected: u64,
) -> Result<(std::process::Child, std::process::Child), Error> {
    // Messages left by an interrupted earlier run would distort the numbers: start empty.
    let conn = b.raw_connection().await?;
    let _ = conn
        .create_channel()
        .await?
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "".into()).await;
    let exe = std::env::current_exe().map_err(|e| bad("exe", e.to_string()))?;
    let dir = exe
        .parent()
        .ok_or_else(|| bad("exe", "no parent directory".into()))?;
    let worker = std::process::Command::new(&exe)
        .args([
            "--worker-process",
            exchange,
            queue,
            &b.params.prefetch.to_string(),
            &b.params.queue_type,
            &expected.to_string(),
        ])
        .env("AMQP_URL", &b.amqp_url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| bad("worker process", e.to_string()))?;
    let relay = std::process::Command::new(dir.join("relay"))
        .env(
            "DATABASE_URL",
            std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://outbox:outbox@127.0.0.1:5432/outbox".into()),
        )
        .env("AMQP_URL", &b.amqp_url)
        .env("OUTBOX_TABLE", table.as_str())
        .env("OUTBOX_EXCHANGE", exchange)
        .env("OUTBOX_BATCH_SIZE", b.params.batch_size.to_string())
        .env("RUST_LOG", "warn")
        .spawn()
        .map_err(|e| {
            bad(
                "relay process (cargo build --release --example relay)",
                e.to_string(),
            )
        })?;
    Ok((worker, relay))
}

/// Waits for the worker process to exit and parses its report line.
async fn worker_report(worker: std::process::Child) -> Result<Value, Error> {
    let output = tokio::task::spawn_blocking(move || worker.wait_with_output())
        .await
        .map_err(|e| bad("worker process", e.to_string()))?
        .map_err(|e| bad("worker process", e.to_string()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| bad("worker process", format!("no report on stdout: {stdout:?}")))
}

fn stop_process(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// The broker's own latency floor at the same rate: raw lapin publishing one persistent
/// message per tick (with confirms) to a queue of the same type, a raw consumer measuring
/// publish → receive. No database, no outbox: what no outbox can beat on this machine.
async fn broker_latency_floor(b: &Bench, exchange: &str) -> Result<Value, Error> {
    let queue = format!("bench_floor_{}", b.params.queue_type);
    let conn = b.raw_connection().await?;
    // Its own exchange: the latency scenario's queue must not receive these messages.
    let exchange = format!("{exchange}_floor");
    let exchange = exchange.as_str();
    conn.create_channel()
        .await?
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    b.queue(&conn, exchange, &queue).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(
        b.params.prefetch,
        lapin::options::BasicQosOptions::default(),
    )
    .await?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "floor".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let total = b.params.rate * b.params.latency_seconds;
    let receiving = async {
        let mut l = Vec::with_capacity(total as usize);
        while (l.len() as u64) < total {
            let Ok(Some(Ok(d))) =
                tokio::time::timeout(Duration::from_secs(30), consumer.next()).await
            else {
                break;
            };
            let p: BenchPayload = serde_json::from_slice(&d.data).map_err(Error::Json)?;
            l.push(now_us().saturating_sub(p.sent_us));
        }
        Ok::<_, Error>(l)
    };
    let pub_ch = conn.create_channel().await?;
    pub_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let publishing = async {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / b.params.rate as f64));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut confirms = Vec::with_capacity(total as usize);
        for _ in 0..total {
            ticker.tick().await;
            let body = serde_json::to_vec(&json!({"sent_us": now_us(), "pad": b.payload["pad"]}))
                .map_err(Error::Json)?;
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            confirms.push(
                pub_ch
                    .basic_publish(
                        exchange.into(),
                        "bench.floor".into(),
                        BasicPublishOptions::default(),
                        &body,
                        props,
                    )
                    .await?,
            );
        }
        for c in confirms {
            c.await?;
        }
        Ok::<(), Error>(())
    };
    let (received, published) = tokio::join!(receiving, publishing);
    published?;
    let mut l = received?;
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "".into()).await;
    l.sort_unstable();
    Ok(
        json!({"p50_ms": percentile(&l, 0.5), "p95_ms": percentile(&l, 0.95), "p99_ms": percentile(&l, 0.99), "max_ms": percentile(&l, 1.0), "received": l.len()}),
    )
}

/// VmHWM (peak resident set) of a process, from /proc (Linux).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `bench --worker-process <exchange> <queue> <prefetch> <queue-type> <expected>`: the worker
/// side of `latency`/`footprint`. Handles messages with the recording no-op handler until
/// `expected` arrived (or 60 s passed), then prints one JSON line with the latencies and its
/// own peak RSS, and exits.
async fn worker_process() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let [exchange, queue, prefetch, queue_type, expected] = args.as_slice() else {
        return Err(bad(
            "worker-process",
            "expected <exchange> <queue> <prefetch> <queue-type> <expected>".into(),
        ));
    };
    let prefetch: u16 = prefetch
        .parse()
        .map_err(|_| bad("prefetch", prefetch.clone()))?;
    let expected: u64 = expected
        .parse()
        .map_err(|_| bad("expected", expected.clone()))?;
    let queue_type = if queue_type == "classic" {
        QueueType::Classic
    } else {
        QueueType::Quorum
    };
    let broker = ConnectionSupervisor::start_supervised(BrokerConfig::from_env()?)?;
    let handled = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(expected as usize)));
    let last_us = Arc::new(AtomicU64::new(0));
    let (h, l, t) = (handled.clone(), latencies.clone(), last_us.clone());
    let config = WorkerConfig::default()
        .with_exchange(exchange.as_str())
        .with_prefetch(prefetch)
        .with_queue_type(queue_type);
    let running = Worker::new(broker.clone(), config)?
        .listen(Listen::new(["#"])?.queue(queue.as_str()), move || Counter {
            handled: h.clone(),
            latencies: Some(l.clone()),
            last_us: t.clone(),
        })?
        .start()
        .await?;
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        wait_count(&handled, expected, "worker process"),
    )
    .await;
    running.stop().await;
    broker.send(Shutdown).await?;
    let latencies = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    println!(
        "{}",
        json!({"handled": handled.load(Ordering::Relaxed), "latencies_us": latencies,
        "last_us": last_us.load(Ordering::Relaxed), "peak_rss_kib": peak_rss_kib(std::process::id())})
    );
    Ok(())
}
