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
//! `--emit-seconds` [5], `--rate` [1000], `--latency-seconds` [10], `--runs` [3],
//! `--scale-sizes` comma list [10000,100000,1000000]. Needs `DATABASE_URL` and `AMQP_URL` (defaults match
//! `scripts/services`). Each scenario runs `--runs` times; the JSON line reports the median,
//! min and max, the ceiling's median, their ratio and the target ratio.
//!
//! Scenarios: `emit`, `emit_many`, `relay_drain`, `consume`, `end_to_end`, `latency` (with a
//! per-stage breakdown from the relay's `batch done` events), `latency_poll` (the same with
//! the table's NOTIFY trigger off and the relay polling adaptively), `latency_floor` (the same
//! pipeline written bare, without this library), `footprint` and `ordered` (per-key
//! ordering beside the unordered path: relay drains with 100 keys and with one, an ordered
//! listener against a plain queue) and `scale` (backlogs of `--scale-sizes` rows drained by
//! a relay process: rate and resident memory over time, claim time against table size and
//! after delete churn, with default and recommended autovacuum settings). `BENCH_RELAY_BIN` runs the
//! latency scenario with another build of the `relay` example, for before/after comparisons.
//! `OUTBOX_METRICS=1` makes every process of the run (this one, its worker processes, the
//! relay example) record its metrics into a Prometheus recorder; each JSON line says whether
//! it was on (`"metrics"`).
#![allow(clippy::print_stdout)]

mod broker_floor;
mod consume;
mod cpu;
mod emit;
mod latency;
mod latency_floor;
mod ordered;
/// `OUTBOX_METRICS=1` (shared with the `relay` example).
#[path = "../shared/record_metrics.rs"]
mod record_metrics;
mod relay;
mod scale;
use record_metrics::record_metrics_if_asked;

use broker_floor::*;
use consume::*;
use cpu::*;
use emit::*;
use latency::*;
use latency_floor::*;
use ordered::*;
use relay::*;
use scale::*;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Actor;
use actix_outbox::{Error, Event, HandlerResult, OutboxEvent};
use actix_outbox_actors::{
    BrokerConfig, ConnectionSupervisor, GetRelayStats, Listen, QueueType, RelayActor, RelayConfig,
    RunningWorker, StopBroker, StopRelay, WakeUp, Worker, WorkerConfig,
};
use futures_util::StreamExt;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
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
    scale_sizes: Vec<usize>,
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
                "latency_poll",
                "latency_floor",
                "footprint",
                "ordered",
                "scale",
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
            scale_sizes: vec![10_000, 100_000, 1_000_000],
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
                "--scale-sizes" => {
                    p.scale_sizes = value
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
        "metrics": std::env::var("OUTBOX_METRICS").as_deref() == Ok("1"),
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

    /// The end of a scenario: deletes its queue, closes its raw connection and drops its
    /// outbox table.
    async fn teardown(&self, conn: Connection, queue: &str, table: &str) -> Result<(), Error> {
        delete_queue_and_close(conn, queue).await;
        self.db
            .execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
            .await?;
        Ok(())
    }

    async fn purge(&self, conn: &Connection, name: &str) -> Result<(), Error> {
        let ch = conn.create_channel().await?;
        ch.queue_purge(name.into(), QueuePurgeOptions::default())
            .await?;
        close_channel(ch).await;
        Ok(())
    }
}

/// How long the bench waits for a raw connection or channel to close, or for a queue it no
/// longer needs to be deleted. Unbounded, a CI smoke run once hung for ten minutes in a
/// connection close whose socket was already gone.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Closes a raw connection, bounded by `CLOSE_WAIT`. Close its channels first (awaited): lapin
/// 4.12 closes a dropped channel in the background, and when that races the connection's close
/// it logs "Connection error: invalid channel state: Closing (channel.close)".
async fn close_raw(conn: Connection) {
    let _ = tokio::time::timeout(CLOSE_WAIT, conn.close(200, "".into())).await;
}

/// Closes a raw channel, bounded by `CLOSE_WAIT`.
async fn close_channel(ch: lapin::Channel) {
    let _ = tokio::time::timeout(CLOSE_WAIT, ch.close(200, "".into())).await;
}

/// Deletes `queue` (with whatever it holds) on a channel of its own, closes that channel and
/// then `conn`, each step bounded by `CLOSE_WAIT`.
async fn delete_queue_and_close(conn: Connection, queue: &str) {
    if let Ok(Ok(ch)) = tokio::time::timeout(CLOSE_WAIT, conn.create_channel()).await {
        let deleting = ch.queue_delete(queue.into(), QueueDeleteOptions::default());
        let _ = tokio::time::timeout(CLOSE_WAIT, deleting).await;
        close_channel(ch).await;
    }
    close_raw(conn).await;
}

fn async_rs_runtime(handle: tokio::runtime::Handle) -> async_rs::TokioRuntime {
    async_rs::Runtime::tokio_with_handle(handle)
}

#[actix::main]
async fn main() -> Result<(), Error> {
    record_metrics_if_asked()?;
    if std::env::args().nth(1).as_deref() == Some("--worker-process") {
        return worker_process().await;
    }
    if std::env::args().nth(1).as_deref() == Some("--raw-relay-process") {
        return raw_relay_process().await;
    }
    if std::env::args().nth(1).as_deref() == Some("--raw-worker-process") {
        return raw_worker_process().await;
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
    let db = actix_outbox::DatabaseConfig::new(db_url.as_str())
        .with_max_connections(20)
        .connect()
        .await?;
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
            "ordered" => ordered(&bench).await?,
            "scale" => scale(&bench).await?,
            "consume" => consume(&bench).await?,
            "end_to_end" => end_to_end(&bench).await?,
            "latency" => {
                let footprint_too = bench.params.scenarios.iter().any(|s| s == "footprint");
                latency(&bench, true, footprint_too, Wake::Notify).await?
            }
            "latency_poll" => latency(&bench, true, false, Wake::Poll).await?,
            "footprint" if bench.params.scenarios.iter().any(|s| s == "latency") => {}
            "footprint" => latency(&bench, false, true, Wake::Notify).await?,
            "latency_floor" => latency_floor(&bench).await?,
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
