//! `scale`: how the relay behaves as the outbox grows. For each backlog size (10k, 100k and
//! 1M rows by default) a relay process drains a committed backlog; the scenario records the
//! drain rate over time, the relay's resident memory over time, and the claim time of each
//! batch (from the relay's `batch done` events). Right after the drain it commits 10,000 more
//! rows into the churned table and drains them too: the claim time after heavy delete churn,
//! with the table's dead tuples as the statistics then show them. Each size runs once with
//! PostgreSQL's default autovacuum settings and once with the per-table settings that
//! `docs/tuning.md` recommends. The ceiling is bare lapin publishing with confirms (the
//! scenario's `--messages`, measured before and after).

use super::*;

/// The storage parameters `docs/tuning.md` recommends for an outbox table (keep the two in
/// step).
pub(super) const RECOMMENDED_AUTOVACUUM: &str = "autovacuum_vacuum_scale_factor = 0, \
     autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_scale_factor = 0, \
     autovacuum_vacuum_insert_threshold = 10000, autovacuum_analyze_scale_factor = 0, \
     autovacuum_analyze_threshold = 10000, autovacuum_vacuum_cost_delay = 0";

/// Rows committed after the drain to time claims on the churned table.
const AFTER_CHURN_ROWS: usize = 10_000;

/// Rows per `emit_many` transaction while filling the backlog.
const FILL_CHUNK: usize = 10_000;

/// One `batch done` event of the relay process.
#[derive(Debug, Clone, Copy)]
struct BatchEvent {
    /// When the event was read (the batch had just committed).
    at: Instant,
    sent: u64,
    claim_us: u64,
}

/// The relay's batches so far, shared between the thread reading its log and the scenario.
#[derive(Default)]
struct BatchLog {
    events: Mutex<Vec<BatchEvent>>,
    sent: AtomicU64,
}

pub(super) async fn scale(b: &Bench) -> Result<(), Error> {
    let table = actix_outbox::TableName::new("bench_scale_outbox")?;
    let outbox = actix_outbox::Outbox::new(table.clone());
    let (exchange, queue) = ("bench_scale", "bench_scale_q");
    let conn = b.raw_connection().await?;
    let mut ceiling = Vec::new();
    // A first relay round declares the exchange, so the queue can be bound before the ceiling.
    b.db.execute_unprepared("DROP TABLE IF EXISTS bench_scale_outbox")
        .await?;
    outbox.setup(&b.db).await?;
    let config = RelayConfig::default()
        .with_table(table.clone())
        .with_exchange(exchange)
        .with_batch_size(b.params.batch_size);
    run_relays(b, &outbox, &config, 1, 0, 0).await?;
    b.queue(&conn, exchange, queue).await?;
    ceiling.push(raw_publish_once(b, &conn, exchange, queue).await?);
    let mut results = Vec::new();
    for &size in &b.params.scale_sizes {
        for recommended in [false, true] {
            results.push(drain_once(b, &outbox, &conn, exchange, queue, size, recommended).await?);
        }
    }
    ceiling.push(raw_publish_once(b, &conn, exchange, queue).await?);
    let ceiling = summarize(ceiling);
    for (params, rate, details) in results {
        let mut params = params;
        params["details"] = details;
        report(
            "scale",
            params,
            summarize(vec![rate]),
            "msg/s",
            Some(("lapin_publish_confirms", ceiling)),
            0.7,
        );
    }
    b.teardown(conn, queue, "bench_scale_outbox").await
}

/// Fills a fresh table with `size` rows, drains it with a relay process, then drains
/// `AFTER_CHURN_ROWS` more. Returns the JSON params, the drain rate and the details.
async fn drain_once(
    b: &Bench,
    outbox: &actix_outbox::Outbox,
    conn: &Connection,
    exchange: &str,
    queue: &str,
    size: usize,
    recommended: bool,
) -> Result<(Value, f64, Value), Error> {
    let t = outbox.table().as_str();
    b.db.execute_unprepared(&format!("DROP TABLE IF EXISTS {t}"))
        .await?;
    outbox.setup(&b.db).await?;
    if recommended {
        b.db.execute_unprepared(&format!("ALTER TABLE {t} SET ({RECOMMENDED_AUTOVACUUM})"))
            .await?;
    }
    let fill_start = Instant::now();
    for chunk in (0..size).step_by(FILL_CHUNK) {
        let txn = b.db.begin().await?;
        outbox
            .emit_many(&txn, b.events(FILL_CHUNK.min(size - chunk), "bench.scale")?)
            .await?;
        txn.commit().await?;
    }
    let fill_rate = size as f64 / fill_start.elapsed().as_secs_f64();
    b.db.execute_unprepared(&format!("ANALYZE {t}")).await?;
    b.purge(conn, queue).await?;

    let log = Arc::new(BatchLog::default());
    let mut relay = spawn_relay(b, t, exchange)?;
    let reader = read_batches(&mut relay, log.clone());
    let drained = follow_drain(b, conn, queue, &log, relay.id(), size as u64).await;
    let rss = match drained {
        Ok(rss) => rss,
        Err(e) => {
            stop_process(&mut relay);
            return Err(e);
        }
    };
    let main_batches = log.events.lock().map(|e| e.len()).unwrap_or(0);
    let dead = dead_tuples(&b.db, t).await?;

    // The churned table: every drained row is a deleted tuple until vacuum reclaims it.
    let txn = b.db.begin().await?;
    outbox
        .emit_many(&txn, b.events(AFTER_CHURN_ROWS, "bench.scale")?)
        .await?;
    txn.commit().await?;
    let after = follow_drain(
        b,
        conn,
        queue,
        &log,
        relay.id(),
        (size + AFTER_CHURN_ROWS) as u64,
    )
    .await;
    stop_process(&mut relay);
    let _ = reader.join();
    after?;
    b.purge(conn, queue).await?;

    let events = log.events.lock().map(|e| e.clone()).unwrap_or_default();
    let (main, churn) = events.split_at(main_batches.min(events.len()));
    let claim_ms = |batches: &[BatchEvent]| {
        let mut us: Vec<u64> = batches.iter().map(|e| e.claim_us).collect();
        us.sort_unstable();
        // `percentile` answers in ms.
        json!({"batches": us.len(), "p50": round2(percentile(&us, 0.5)), "p99": round2(percentile(&us, 0.99)), "max": round2(us.last().copied().unwrap_or(0) as f64 / 1000.0)})
    };
    let first = &main[..main.len().min(10)];
    let last = &main[main.len().saturating_sub(10)..];
    let (rate, drain_s) = drain_rate(main);
    let details = json!({
        "fill_rows_per_s": fill_rate.round(),
        "drain_s": (drain_s * 100.0).round() / 100.0,
        "rate_by_tenth": rate_by_tenth(main, size as u64),
        "relay_rss_mib": {
            "first": mib(rss.first().copied().unwrap_or(0)),
            "max": mib(rss.iter().copied().max().unwrap_or(0)),
            "last": mib(rss.last().copied().unwrap_or(0)),
            "samples": rss.len(),
        },
        "claim_ms": {
            "first_10_batches": claim_ms(first),
            "last_10_batches": claim_ms(last),
            "all": claim_ms(main),
            "after_churn": claim_ms(churn),
        },
        "dead_tuples_after_drain": dead.0,
        "autovacuum_runs_during_drain": dead.1,
    });
    let params = json!({"backlog": size, "autovacuum": if recommended { "recommended" } else { "default" },
        "batch_size": b.params.batch_size, "payload_bytes": b.params.payload_bytes, "queue_type": b.params.queue_type});
    eprintln!("scale {size} ({params}): {rate:.0} msg/s {details}");
    Ok((params, rate, details))
}

/// Waits until the relay process has sent `target` rows in all, sampling its resident set
/// every 250 ms (and purging the queue now and then, so 1M messages do not pile up in the
/// broker). Fails if the relay exits or makes no progress for 60 s.
async fn follow_drain(
    b: &Bench,
    conn: &Connection,
    queue: &str,
    log: &BatchLog,
    pid: u32,
    target: u64,
) -> Result<Vec<u64>, Error> {
    let mut samples = Vec::new();
    let (mut last_sent, mut last_progress) = (0, Instant::now());
    loop {
        let sent = log.sent.load(Ordering::Relaxed);
        let Some(rss) = rss_kib(pid) else {
            return Err(bad("scale", "the relay process exited".into()));
        };
        samples.push(rss);
        if sent >= target {
            return Ok(samples);
        }
        if sent > last_sent {
            (last_sent, last_progress) = (sent, Instant::now());
        } else if last_progress.elapsed() > Duration::from_secs(60) {
            return Err(Error::Timeout {
                what: "the relay process draining the backlog (no progress)",
                after: Duration::from_secs(60),
            });
        }
        if samples.len() % 8 == 0 {
            b.purge(conn, queue).await?;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Rows/s from the end of the first batch to the end of the last (the first batch's own
/// rows are left out: its start, with the process's, is not seen), and those seconds.
fn drain_rate(batches: &[BatchEvent]) -> (f64, f64) {
    let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
        return (0.0, 0.0);
    };
    let rows: u64 = batches[1..].iter().map(|e| e.sent).sum();
    let secs = (last.at - first.at).as_secs_f64();
    (if secs > 0.0 { rows as f64 / secs } else { 0.0 }, secs)
}

/// The drain rate in each tenth of the backlog (rows/s): flat, or not.
fn rate_by_tenth(batches: &[BatchEvent], size: u64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut sent = 0;
    let mut from: Option<(Instant, u64)> = None;
    let mut tenth = 1;
    for e in batches {
        sent += e.sent;
        let Some((at, rows)) = from else {
            from = Some((e.at, sent));
            continue;
        };
        if sent >= size * tenth / 10 {
            let secs = (e.at - at).as_secs_f64();
            if secs > 0.0 {
                out.push(((sent - rows) as f64 / secs).round());
            }
            from = Some((e.at, sent));
            tenth += 1;
        }
    }
    out
}

/// Dead tuples of `table` as the statistics see them, and how many times autovacuum has
/// vacuumed it.
async fn dead_tuples(db: &DatabaseConnection, table: &str) -> Result<(i64, i64), Error> {
    // The statistics are flushed at most once a second or so: let them catch up.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT n_dead_tup, autovacuum_count FROM pg_stat_user_tables WHERE relname = '{table}'"),
        ))
        .await?
        .ok_or_else(|| bad("scale", format!("no statistics for {table}")))?;
    Ok((
        row.try_get_by_index::<i64>(0)?,
        row.try_get_by_index::<i64>(1)?,
    ))
}

/// Starts the `relay` example on `table`, logging its batches at debug level to stdout.
fn spawn_relay(b: &Bench, table: &str, exchange: &str) -> Result<std::process::Child, Error> {
    relay_command(b, table, exchange)?.spawn().map_err(|e| {
        bad(
            "relay process (cargo build --release --example relay)",
            e.to_string(),
        )
    })
}

/// Reads the relay's `batch done` events into `log` until the process exits.
fn read_batches(
    relay: &mut std::process::Child,
    log: Arc<BatchLog>,
) -> std::thread::JoinHandle<()> {
    let stdout = relay.stdout.take();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let Some(stdout) = stdout else { return };
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if !line.contains("batch done") {
                continue;
            }
            let field = |name: &str| {
                line.split_whitespace()
                    .filter_map(|f| f.split_once('='))
                    .find(|(k, _)| *k == name)
                    .and_then(|(_, v)| v.parse::<u64>().ok())
            };
            let event = BatchEvent {
                at: Instant::now(),
                sent: field("sent").unwrap_or(0),
                claim_us: field("claim_us").unwrap_or(0),
            };
            if let Ok(mut events) = log.events.lock() {
                events.push(event);
            }
            log.sent.fetch_add(event.sent, Ordering::Relaxed);
        }
    })
}

/// Resident set of a live process, from /proc (Linux); `None` once it has exited.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn round2(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 102.4).round() / 10.0
}
