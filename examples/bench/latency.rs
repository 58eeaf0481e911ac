//! `latency` and `footprint` with relay and worker as processes (the broker's own floor is
//! in `broker_floor.rs`).

use super::*;
/// Emits `rate` events/s, one per transaction, for `latency_seconds` while the relay and the
/// worker run; returns (emitted, seconds taken to emit, each event's emit → committed time
/// in µs).
pub(super) async fn paced_emit(
    b: &Bench,
    outbox: &actix_outbox::Outbox,
    key: &str,
) -> Result<(u64, f64, Vec<u64>), Error> {
    let pad = b.payload["pad"].clone();
    paced(b, || {
        let (db, outbox, pad, key) = (b.db.clone(), outbox.clone(), pad.clone(), key.to_owned());
        async move {
            let txn = db.begin().await?;
            let sent_us = now_us();
            outbox
                .emit(&txn, &key, &json!({"sent_us": sent_us, "pad": pad}))
                .await?;
            txn.commit().await?;
            Ok(now_us().saturating_sub(sent_us))
        }
    })
    .await
}

/// Runs `emit_one` `rate` times a second for `latency_seconds`, each call spawned so a slow
/// commit does not delay the pace; returns (calls, seconds taken to start them all, and what
/// each call returned: its emit → committed time in µs).
pub(super) async fn paced<F, Fut>(b: &Bench, emit_one: F) -> Result<(u64, f64, Vec<u64>), Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<u64, Error>> + 'static,
{
    let total = b.params.rate * b.params.latency_seconds;
    let period = Duration::from_secs_f64(1.0 / b.params.rate as f64);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for _ in 0..total {
        ticker.tick().await;
        tasks.push(actix::spawn(emit_one()));
    }
    let emitting = start.elapsed().as_secs_f64();
    let mut commits = Vec::with_capacity(tasks.len());
    for task in tasks {
        commits.push(task.await.map_err(|e| bad("emit task", e.to_string()))??);
    }
    Ok((total, emitting, commits))
}

/// The `latencies_us` of a worker process's report, sorted.
pub(super) fn sorted_latencies(report: &Value) -> Vec<u64> {
    let mut l: Vec<u64> = report["latencies_us"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    l.sort_unstable();
    l
}

pub(super) fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

/// Emit → handler latency at a fixed rate (1,000/s by default) for 10 s, with the relay and
/// the worker each in its own process (the production layout): the `relay` example and this
/// program in `--worker-process` mode. Also reports both processes' peak RSS (`footprint`).
/// How the relay of a latency run learns of new rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wake {
    /// The table's NOTIFY trigger and the relay's LISTEN (the default set-up).
    Notify,
    /// The trigger switched off (`Outbox::set_notify`) and the relay polling adaptively
    /// ([`ADAPTIVE_POLL`]), without LISTEN.
    Poll,
}

/// The relay's adaptive poll in [`Wake::Poll`] runs (`OUTBOX_ADAPTIVE_POLL` of the relay
/// example): 1 ms after the last batch started while batches find rows, doubling after each
/// empty look up to 100 ms.
/// `BENCH_ADAPTIVE_POLL` sets another (`min,max`).
pub(super) const ADAPTIVE_POLL: &str = "1ms,100ms";

/// The adaptive poll of this run: `BENCH_ADAPTIVE_POLL`, else [`ADAPTIVE_POLL`].
fn adaptive_poll() -> String {
    std::env::var("BENCH_ADAPTIVE_POLL").unwrap_or_else(|_| ADAPTIVE_POLL.to_owned())
}

pub(super) async fn latency(
    b: &Bench,
    print_latency: bool,
    print_footprint: bool,
    wake: Wake,
) -> Result<(), Error> {
    let (exchange, queue) = (
        "bench_latency",
        format!("bench_latency_{}", b.params.queue_type),
    );
    let table = actix_outbox::TableName::new("bench_latency_outbox")?;
    let outbox = actix_outbox::Outbox::new(table.clone());
    b.db.execute_unprepared("DROP TABLE IF EXISTS bench_latency_outbox")
        .await?;
    outbox.setup(&b.db).await?;
    let poll = adaptive_poll();
    let relay_env: &[(&str, &str)] = match wake {
        Wake::Notify => &[],
        Wake::Poll => {
            outbox.set_notify(&b.db, false).await?;
            &[
                ("OUTBOX_ADAPTIVE_POLL", poll.as_str()),
                ("OUTBOX_LISTEN", "0"),
            ]
        }
    };
    let total = b.params.rate * b.params.latency_seconds;
    let (worker, mut relay) = spawn_pipeline(b, &table, exchange, &queue, total, relay_env).await?;
    let relay_log = collect_batch_stages(&mut relay);
    // Both processes connect, declare and LISTEN before the load starts (start-up, not sync).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let emitted = paced_emit(b, &outbox, "bench.latency").await;
    // The worker exits by itself once it handled `total` messages (or after 60 s).
    let report = worker_report(worker).await;
    let relay_kib = peak_rss_kib(relay.id());
    stop_process(&mut relay);
    let relay_stages = relay_log.join().unwrap_or_default();
    b.db.execute_unprepared("DROP TABLE IF EXISTS bench_latency_outbox")
        .await?;
    let (total, emitting, mut commits) = emitted?;
    commits.sort_unstable();
    let report = report?;
    let floor = broker_latency_floor(b, exchange).await?;
    let l = sorted_latencies(&report);
    let achieved = total as f64 / emitting;
    let kept_up = l.len() as u64 == total && achieved >= 0.95 * b.params.rate as f64;
    let p99 = percentile(&l, 0.99);
    let wake_up = match wake {
        Wake::Notify => json!("NOTIFY trigger + LISTEN"),
        Wake::Poll => json!({"trigger": "off", "adaptive_poll": poll}),
    };
    let params = json!({"rate": b.params.rate, "seconds": b.params.latency_seconds, "queue_type": b.params.queue_type,
        "prefetch": b.params.prefetch, "layout": "emitter, relay and worker in separate processes", "wake_up": wake_up});
    if print_latency {
        println!(
            "{}",
            json!({
                "scenario": match wake { Wake::Notify => "latency", Wake::Poll => "latency_poll" },
                "params": params,
                "result": {"p50_ms": percentile(&l, 0.5), "p95_ms": percentile(&l, 0.95), "p99_ms": p99, "max_ms": percentile(&l, 1.0),
                           "handled": l.len(), "emitted": total, "achieved_rate": achieved.round(), "kept_up": kept_up},
                "floor_raw_broker": floor,
                "stages": stages_json(&commits, &relay_stages),
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
pub(super) async fn spawn_pipeline(
    b: &Bench,
    table: &actix_outbox::TableName,
    exchange: &str,
    queue: &str,
    expected: u64,
    relay_env: &[(&str, &str)],
) -> Result<(std::process::Child, std::process::Child), Error> {
    // Messages left by an interrupted earlier run would distort the numbers: start empty.
    delete_queue_and_close(b.raw_connection().await?, queue).await;
    let exe = std::env::current_exe().map_err(|e| bad("exe", e.to_string()))?;
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
    let mut worker = worker;
    let relay = relay_command(b, table.as_str(), exchange)?
        .envs(relay_env.iter().copied())
        .spawn()
        .map_err(|e| {
            // An orphaned worker would keep consuming the next run's messages.
            stop_process(&mut worker);
            bad(
                "relay process (cargo build --release --example relay)",
                e.to_string(),
            )
        })?;
    Ok((worker, relay))
}

/// The `relay` example (or `BENCH_RELAY_BIN`, another build to compare before/after) on
/// `table` and `exchange`, logging each batch's stage timings (its `batch done` debug events)
/// to a piped stdout: see `collect_batch_stages`.
pub(super) fn relay_command(
    b: &Bench,
    table: &str,
    exchange: &str,
) -> Result<std::process::Command, Error> {
    let exe = std::env::current_exe().map_err(|e| bad("exe", e.to_string()))?;
    let dir = exe
        .parent()
        .ok_or_else(|| bad("exe", "no parent directory".into()))?;
    let relay_bin =
        std::env::var_os("BENCH_RELAY_BIN").map_or_else(|| dir.join("relay"), Into::into);
    let mut relay = std::process::Command::new(relay_bin);
    relay
        .env(
            "DATABASE_URL",
            std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://outbox:outbox@127.0.0.1:5432/outbox".into()),
        )
        .env("AMQP_URL", &b.amqp_url)
        .env("OUTBOX_TABLE", table)
        .env("OUTBOX_EXCHANGE", exchange)
        .env("OUTBOX_BATCH_SIZE", b.params.batch_size.to_string())
        .env("RUST_LOG", "warn,actix_outbox_actors::relay::batch=debug")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped());
    Ok(relay)
}

/// Stage timings of the relay's batches, in µs: one vector per field of its `batch done`
/// debug events (`due_lag_us`, `claim_us`, `publish_us`, `confirm_us`, ...).
pub(super) type BatchStages = std::collections::BTreeMap<String, Vec<u64>>;

/// Reads the relay process's log (its stdout) on a thread until it exits, keeping the fields
/// of its `batch done` events.
pub(super) fn collect_batch_stages(
    relay: &mut std::process::Child,
) -> std::thread::JoinHandle<BatchStages> {
    let stdout = relay.stdout.take();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut stages = BatchStages::new();
        let Some(stdout) = stdout else { return stages };
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if !line.contains("batch done") {
                continue;
            }
            let fields: Vec<(&str, u64)> = line
                .split_whitespace()
                .filter_map(|f| f.split_once('='))
                .filter_map(|(k, v)| Some((k, v.parse::<u64>().ok()?)))
                .collect();
            for &(key, value) in &fields {
                stages.entry(key.to_owned()).or_default().push(value);
            }
            // Per event: every row of the batch counted with the batch's (oldest row's) lag.
            let get = |name: &str| fields.iter().find(|(k, _)| *k == name).map(|&(_, v)| v);
            if let (Some(lag), Some(rows)) = (get("due_lag_us"), get("sent")) {
                let per_event = stages.entry("event_due_lag_us".to_owned()).or_default();
                per_event.extend(std::iter::repeat_n(lag, rows as usize));
            }
        }
        stages
    })
}

/// The stage breakdown of the latency run: emit → commit in the emitter, and the relay's
/// per-batch stages (p50/p95/p99 in ms, over batches). `relay_due_to_claimed_per_event`
/// counts each row with its batch's lag (an upper bound per event: the batch's oldest row
/// waited longest), so a stalled batch of 100 rows weighs as 100 events, not as one batch.
pub(super) fn stages_json(commits: &[u64], relay: &BatchStages) -> Value {
    let summary = |sorted: &[u64]| json!({"p50_ms": percentile(sorted, 0.5), "p95_ms": percentile(sorted, 0.95), "p99_ms": percentile(sorted, 0.99)});
    let mut out = json!({"emit_commit": summary(commits)});
    for (field, name) in [
        ("due_lag_us", "relay_due_to_claimed"),
        ("event_due_lag_us", "relay_due_to_claimed_per_event"),
        ("begin_us", "relay_begin"),
        ("claim_us", "relay_claim"),
        ("publish_us", "relay_publish"),
        ("confirm_us", "relay_confirm_wait"),
        ("settle_us", "relay_delete"),
        ("commit_us", "relay_commit"),
        ("elapsed_us", "relay_batch_total"),
    ] {
        let mut v = relay.get(field).cloned().unwrap_or_default();
        v.sort_unstable();
        out[name] = summary(&v);
    }
    let mut sizes = relay.get("sent").cloned().unwrap_or_default();
    sizes.sort_unstable();
    out["relay_batches"] = json!(sizes.len());
    out["relay_rows_per_batch_p50"] = json!(sizes.get(sizes.len() / 2));
    out
}

/// Waits for the worker process to exit and parses its report line.
pub(super) async fn worker_report(worker: std::process::Child) -> Result<Value, Error> {
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

pub(super) fn stop_process(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// VmHWM (peak resident set) of a process, from /proc (Linux).
pub(super) fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `bench --worker-process <exchange> <queue> <prefetch> <queue-type> <expected>`: the worker
/// side of `latency`/`footprint`. Handles messages with the recording no-op handler until
/// `expected` arrived (or 60 s passed), then prints one JSON line with the latencies and its
/// own peak RSS, and exits.
pub(super) async fn worker_process() -> Result<(), Error> {
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
        .listen(Listen::new(["#"])?.with_queue(queue.as_str()), move || {
            Counter {
                handled: h.clone(),
                latencies: Some(l.clone()),
                last_us: t.clone(),
            }
        })?
        .start()
        .await?;
    let cpu_started = cpu_ms(std::process::id());
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        wait_count(&handled, expected, "worker process"),
    )
    .await;
    // CPU spent from the moment it was consuming to the last message handled.
    let cpu_ms = cpu_ms(std::process::id())
        .zip(cpu_started)
        .map(|(end, start)| end - start);
    let ack_frames: u64 = running.stats().await.values().map(|s| s.ack_frames).sum();
    running.stop().await;
    broker.send(StopBroker).await?;
    let latencies = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    println!(
        "{}",
        json!({"handled": handled.load(Ordering::Relaxed), "latencies_us": latencies,
        "last_us": last_us.load(Ordering::Relaxed), "peak_rss_kib": peak_rss_kib(std::process::id()),
        "cpu_ms": cpu_ms, "ack_frames": ack_frames})
    );
    Ok(())
}
