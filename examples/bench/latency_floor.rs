//! `latency_floor`: the latency pipeline written the simplest possible way, without
//! actix-outbox: a bare SQL emitter, a textbook relay process and a bare lapin consumer
//! process. It shows what emit → handler latency a minimal hand-written transactional outbox
//! reaches on this machine, the floor the `latency` scenario is compared against.

use super::*;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
};
use sea_orm::sqlx;

/// The outbox table of the bare pipeline; also its NOTIFY channel.
const TABLE: &str = "bench_raw_outbox";

/// Creates [`TABLE`] and its statement-level trigger that notifies the relay on every
/// committed insert.
const SETUP: [&str; 4] = [
    "DROP TABLE IF EXISTS bench_raw_outbox",
    "CREATE TABLE bench_raw_outbox (
        id bigserial PRIMARY KEY,
        routing_key text NOT NULL,
        payload bytea NOT NULL
    )",
    "CREATE OR REPLACE FUNCTION bench_raw_outbox_notify() RETURNS trigger
     LANGUAGE plpgsql AS $$
     BEGIN
         PERFORM pg_notify('bench_raw_outbox', '');
         RETURN NULL;
     END
     $$",
    "CREATE TRIGGER bench_raw_outbox_notify AFTER INSERT ON bench_raw_outbox
     FOR EACH STATEMENT EXECUTE FUNCTION bench_raw_outbox_notify()",
];

/// Drops [`TABLE`] (with its trigger) and the trigger function.
const TEARDOWN: [&str; 2] = [
    "DROP TABLE IF EXISTS bench_raw_outbox",
    "DROP FUNCTION IF EXISTS bench_raw_outbox_notify()",
];

/// The relay's claim: the oldest rows not locked by another relay.
const CLAIM: &str = "SELECT id, routing_key, payload FROM bench_raw_outbox \
                     ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED";

/// Removes the published rows of a batch.
const DELETE: &str = "DELETE FROM bench_raw_outbox WHERE id = ANY($1)";

/// `DATABASE_URL`, with the default of `scripts/services`.
fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://outbox:outbox@127.0.0.1:5432/outbox".into())
}

/// `AMQP_URL`, with the default of `scripts/services`.
fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://outbox:outbox@127.0.0.1:5672/%2f".into())
}

fn sql_err(e: sqlx::Error) -> Error {
    bad("sqlx", e.to_string())
}

/// One lapin connection driven by the current tokio runtime (the child processes' only one).
async fn amqp_connection() -> Result<Connection, Error> {
    let rt = async_rs_runtime(tokio::runtime::Handle::current());
    Ok(Connection::connect_with_runtime(&amqp_url(), ConnectionProperties::default(), rt).await?)
}

/// Parses the `n`-th argument after the mode flag.
fn arg<T: std::str::FromStr>(args: &[String], n: usize, name: &'static str) -> Result<T, Error> {
    let value = args
        .get(n)
        .ok_or_else(|| bad(name, "missing argument".into()))?;
    value.parse().map_err(|_| bad(name, value.clone()))
}

/// The bare outbox pipeline at `rate` events/s for `latency_seconds`: a bare SQL emitter in
/// this process, this program in `--raw-relay-process` and `--raw-worker-process` mode. Prints
/// one JSON line with the latency percentiles, computed as in `latency`.
pub(super) async fn latency_floor(b: &Bench) -> Result<(), Error> {
    let exchange = "bench_raw_latency";
    let queue = format!("bench_raw_latency_{}", b.params.queue_type);
    for sql in SETUP {
        b.db.execute_unprepared(sql).await?;
    }
    let conn = b.raw_connection().await?;
    conn.create_channel()
        .await?
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    b.queue(&conn, exchange, &queue).await?;
    let total = b.params.rate * b.params.latency_seconds;
    let exe = std::env::current_exe().map_err(|e| bad("exe", e.to_string()))?;
    let child = |args: &[&str], stdout: std::process::Stdio| {
        std::process::Command::new(&exe)
            .args(args)
            .env("DATABASE_URL", database_url())
            .env("AMQP_URL", &b.amqp_url)
            .stdout(stdout)
            .spawn()
            .map_err(|e| bad("bare pipeline process", e.to_string()))
    };
    let worker = child(
        &[
            "--raw-worker-process",
            &queue,
            &b.params.prefetch.to_string(),
            &total.to_string(),
        ],
        std::process::Stdio::piped(),
    )?;
    let mut relay = child(
        &[
            "--raw-relay-process",
            exchange,
            &b.params.batch_size.to_string(),
        ],
        std::process::Stdio::inherit(),
    )?;
    // Both processes connect and LISTEN/consume before the load starts (start-up, not sync).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let emitted = raw_paced_emit(b, "bench.raw").await;
    // The consumer exits by itself once it handled `total` messages (or after 60 s).
    let report = worker_report(worker).await;
    stop_process(&mut relay);
    for sql in TEARDOWN {
        b.db.execute_unprepared(sql).await?;
    }
    delete_queue_and_close(conn, &queue).await;
    let (total, emitting, mut commits) = emitted?;
    commits.sort_unstable();
    let report = report?;
    let l = sorted_latencies(&report);
    let achieved = total as f64 / emitting;
    let kept_up = l.len() as u64 == total && achieved >= 0.95 * b.params.rate as f64;
    println!(
        "{}",
        json!({
            "scenario": "latency_floor",
            "params": {"rate": b.params.rate, "seconds": b.params.latency_seconds, "queue_type": b.params.queue_type,
                       "prefetch": b.params.prefetch, "batch_size": b.params.batch_size,
                       "layout": "bare SQL emitter, bare relay process, bare lapin consumer process"},
            "result": {"p50_ms": percentile(&l, 0.5), "p95_ms": percentile(&l, 0.95), "p99_ms": percentile(&l, 0.99),
                       "max_ms": percentile(&l, 1.0), "handled": l.len(), "emitted": total, "kept_up": kept_up},
            "stages": {"emit_commit": {"p50_ms": percentile(&commits, 0.5), "p95_ms": percentile(&commits, 0.95),
                                       "p99_ms": percentile(&commits, 0.99)}},
        })
    );
    Ok(())
}

/// Inserts `rate` rows/s into [`TABLE`] for `latency_seconds`, one transaction per row, with
/// plain SQL; returns (rows inserted, seconds taken to insert them, each row's emit →
/// committed time in µs).
async fn raw_paced_emit(b: &Bench, key: &str) -> Result<(u64, f64, Vec<u64>), Error> {
    let pad = b.payload["pad"].clone();
    paced(b, || {
        let (db, pad, key) = (b.db.clone(), pad.clone(), key.to_owned());
        async move {
            let sent_us = now_us();
            let body = serde_json::to_vec(&json!({"sent_us": sent_us, "pad": pad}))
                .map_err(Error::Json)?;
            let txn = db.begin().await?;
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO bench_raw_outbox (routing_key, payload) VALUES ($1, $2)",
                [key.into(), body.into()],
            ))
            .await?;
            txn.commit().await?;
            Ok(now_us().saturating_sub(sent_us))
        }
    })
    .await
}

/// `bench --raw-relay-process <exchange> <batch_size>`: the textbook relay, one async loop.
/// Waits for a NOTIFY on [`TABLE`] (or 100 ms), then relays batches until one comes back
/// not full. Exits on SIGTERM/SIGINT, between batches.
pub(super) async fn raw_relay_process() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let exchange: String = arg(&args, 0, "exchange")?;
    let batch_size: i64 = arg(&args, 1, "batch_size")?;
    let shutdown = actix_outbox_actors::shutdown_signal();
    tokio::pin!(shutdown);
    // One connection for the batches, one held by the listener.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&database_url())
        .await
        .map_err(sql_err)?;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .map_err(sql_err)?;
    listener.listen(TABLE).await.map_err(sql_err)?;
    let conn = amqp_connection().await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    loop {
        // Notifications already received are covered by the drain below.
        while listener.next_buffered().is_some() {}
        while relay_batch(&pool, &ch, &exchange, batch_size).await? == batch_size {}
        tokio::select! {
            _ = &mut shutdown => break,
            woken = tokio::time::timeout(Duration::from_millis(100), listener.recv()) => {
                if let Ok(Err(e)) = woken {
                    return Err(sql_err(e));
                }
            }
        }
    }
    close_raw(conn).await;
    // `close` waits for every pooled connection, the listener's too: release it first.
    drop(listener);
    pool.close().await;
    Ok(())
}

/// One relay batch in one transaction: claim up to `batch_size` rows, publish them all
/// (persistent, pipelined), await every confirm, delete the rows, commit. Returns the number
/// of rows relayed. A nacked message rolls the batch back and fails the relay.
async fn relay_batch(
    pool: &sqlx::PgPool,
    ch: &lapin::Channel,
    exchange: &str,
    batch_size: i64,
) -> Result<i64, Error> {
    let mut tx = pool.begin().await.map_err(sql_err)?;
    let rows: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(CLAIM)
        .bind(batch_size)
        .fetch_all(&mut *tx)
        .await
        .map_err(sql_err)?;
    if rows.is_empty() {
        tx.commit().await.map_err(sql_err)?;
        return Ok(0);
    }
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let mut confirms = Vec::with_capacity(rows.len());
    for (_, key, payload) in &rows {
        confirms.push(
            ch.basic_publish(
                exchange.into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                payload,
                props.clone(),
            )
            .await?,
        );
    }
    for confirm in confirms {
        if !confirm.await?.is_ack() {
            return Err(bad("relay", "message not confirmed by the broker".into()));
        }
    }
    let ids: Vec<i64> = rows.iter().map(|(id, _, _)| *id).collect();
    sqlx::query(DELETE)
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(sql_err)?;
    tx.commit().await.map_err(sql_err)?;
    Ok(rows.len() as i64)
}

/// `bench --raw-worker-process <queue> <prefetch> <expected>`: a bare lapin consumer with
/// manual acks. Records emit → receive latency of each message, then acks it; after
/// `expected` messages (or 60 s) prints one JSON line `{"handled", "latencies_us"}`.
pub(super) async fn raw_worker_process() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let queue: String = arg(&args, 0, "queue")?;
    let prefetch: u16 = arg(&args, 1, "prefetch")?;
    let expected: u64 = arg(&args, 2, "expected")?;
    let conn = amqp_connection().await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "raw-worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut latencies = Vec::with_capacity(expected as usize);
    while (latencies.len() as u64) < expected {
        let Ok(Some(delivery)) = tokio::time::timeout_at(deadline, consumer.next()).await else {
            break;
        };
        let delivery = delivery?;
        let p: BenchPayload = serde_json::from_slice(&delivery.data).map_err(Error::Json)?;
        latencies.push(now_us().saturating_sub(p.sent_us));
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    close_raw(conn).await;
    println!(
        "{}",
        json!({"handled": latencies.len(), "latencies_us": latencies})
    );
    Ok(())
}
