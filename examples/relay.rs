//! A relay process: moves committed outbox rows to RabbitMQ until Ctrl-C or SIGTERM.
//!
//! The production layout runs this as its own process (several of them on PostgreSQL, side by
//! side), next to the applications that emit and the workers that consume.
//!
//! ```text
//! scripts/services      # PostgreSQL and RabbitMQ, or: docker compose up -d
//! cargo run --release --example relay
//! ```
//!
//! Environment: `DATABASE_URL` (default `postgres://outbox:outbox@127.0.0.1:5432/outbox`),
//! `AMQP_URL` (default `amqp://outbox:outbox@127.0.0.1:5672/%2f`), `OUTBOX_TABLE` (default
//! `outbox`), `OUTBOX_EXCHANGE` (default `outbox`), `OUTBOX_BATCH_SIZE` (default 500),
//! `OUTBOX_RELAY_CONCURRENCY` (batches in flight, default 2), `RUST_LOG` (default `info`;
//! `actix_outbox_actors::relay::batch=debug` logs each batch's stage timings),
//! `OUTBOX_ADAPTIVE_POLL` (`min,max`, e.g. `2ms,100ms`: poll adaptively, for a table whose
//! NOTIFY trigger is off), `OUTBOX_LISTEN=0` (no LISTEN connection),
//! `OUTBOX_METRICS=1` (record metrics into a Prometheus recorder; the benchmark's "metrics on"
//! runs; serve them as `examples/actix_web/ops.rs` does). On stop it finishes the batch in flight, closes the broker
//! connection, then the database, and prints its counters.

use actix::Actor;
use actix_outbox::{DatabaseConfig, Error, TableName, parse_duration, redact_url};
use actix_outbox_actors::{
    BrokerConfig, ConnectionSupervisor, RelayActor, RelayConfig, StopBroker, StopRelay,
};
use tracing::info;

/// `OUTBOX_METRICS=1` (shared with the benchmark).
#[path = "shared/record_metrics.rs"]
mod record_metrics;
use record_metrics::record_metrics_if_asked;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// A number from the environment, or `default`; a value that is not a number is an error.
fn env_number(name: &'static str, default: u32) -> Result<u32, Error> {
    Ok(env_number_opt(name)?.unwrap_or(default))
}

/// A number from the environment, if set; a value that is not a number is an error.
fn env_number_opt(name: &'static str) -> Result<Option<u32>, Error> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(value) => value.parse().map(Some).map_err(|e| Error::InvalidConfig {
            field: name,
            reason: format!("{value:?}: {e}"),
        }),
    }
}

#[actix::main]
async fn main() -> Result<(), Error> {
    // Installed before anything else, so a SIGTERM during start-up still stops gracefully.
    let stop = actix_outbox_actors::shutdown_signal();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    record_metrics_if_asked()?;
    let db_url = env_or(
        "DATABASE_URL",
        "postgres://outbox:outbox@127.0.0.1:5432/outbox",
    );
    let table = TableName::new(env_or("OUTBOX_TABLE", "outbox"))?;
    let batch_size = env_number("OUTBOX_BATCH_SIZE", 500)?;
    let concurrency = env_number("OUTBOX_RELAY_CONCURRENCY", 2)?;
    let mut config = RelayConfig::default()
        .with_table(table.clone())
        .with_exchange(env_or("OUTBOX_EXCHANGE", "outbox"))
        .with_batch_size(batch_size)
        .with_concurrency(concurrency);
    let ms = |n: u32| std::time::Duration::from_millis(u64::from(n));
    if let Some(n) = env_number_opt("OUTBOX_CONFIRM_TIMEOUT_MS")? {
        config = config.with_confirm_timeout(ms(n));
    }
    if let Some(n) = env_number_opt("OUTBOX_CLAIM_LEASE_MS")? {
        config = config.with_claim_lease(ms(n));
    }
    if let Ok(poll) = std::env::var("OUTBOX_ADAPTIVE_POLL") {
        let (min, max) = poll.split_once(',').ok_or_else(|| Error::InvalidConfig {
            field: "OUTBOX_ADAPTIVE_POLL",
            reason: format!("{poll:?}: expected two durations, as in 2ms,100ms"),
        })?;
        config = config.with_adaptive_poll(parse_duration(min)?, parse_duration(max)?);
    }
    if std::env::var("OUTBOX_LISTEN").is_ok_and(|v| v == "0") {
        config = config.with_listen(false);
    }
    config.validate()?;

    info!(database = %redact_url(&db_url), "connecting to the database");
    // DatabaseConfig keeps the URL (and its password) out of every log, at any level, and
    // pings only connections idle for 30 s instead of on every checkout: one round trip less
    // per batch. A connection that died anyway fails its batch, which is retried.
    let db = DatabaseConfig::new(db_url).connect().await?;
    actix_outbox::Outbox::new(table).setup(&db).await?;

    let broker = ConnectionSupervisor::start_supervised(BrokerConfig::from_env()?)?;
    let relay = RelayActor::new(db.clone(), broker.clone(), config)?.start();

    stop.await;
    info!("stopping: finishing the batch in flight");
    let stats = relay.send(StopRelay).await?;
    broker.send(StopBroker).await?;
    db.close().await?;
    info!(?stats, "relay stopped");
    Ok(())
}
