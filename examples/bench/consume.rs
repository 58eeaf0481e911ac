//! `consume` and `end_to_end`, and the no-op handler the worker scenarios use.

use super::*;
/// What the bench handlers receive.
#[derive(serde::Deserialize)]
pub(super) struct BenchPayload {
    /// Microseconds since the Unix epoch when the event was emitted (latency runs).
    #[serde(default)]
    pub(super) sent_us: u64,
}

/// A no-op handler that counts, and records latencies when asked to.
pub(super) struct Counter {
    pub(super) handled: Arc<AtomicU64>,
    pub(super) latencies: Option<Arc<Mutex<Vec<u64>>>>,
    /// When the latest message was handled (µs since the epoch).
    pub(super) last_us: Arc<AtomicU64>,
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

pub(super) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Starts a worker with one counting handler on `queue` (bound with `#`).
pub(super) async fn start_worker(
    b: &Bench,
    broker: &actix::Addr<ConnectionSupervisor>,
    exchange: &str,
    queue: &str,
    handled: Arc<AtomicU64>,
    latencies: Option<Arc<Mutex<Vec<u64>>>>,
) -> Result<RunningWorker, Error> {
    let listen = Listen::new(["#"])?.with_queue(queue);
    start_worker_on(b, broker, exchange, listen, handled, latencies).await
}

/// Starts a worker with one counting handler registered with `listen`.
pub(super) async fn start_worker_on(
    b: &Bench,
    broker: &actix::Addr<ConnectionSupervisor>,
    exchange: &str,
    listen: Listen,
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
        .listen(listen, move || Counter {
            handled: handled.clone(),
            latencies: latencies.clone(),
            last_us: Arc::default(),
        })?
        .start()
        .await
}

/// Publishes `n` bench messages with confirms (windows of the batch size); with `keys > 0`
/// each carries an ordering key header, `key-<i % keys>`, as the relay sets it.
pub(super) async fn publish_raw(
    b: &Bench,
    ch: &lapin::Channel,
    exchange: &str,
    n: usize,
    keys: usize,
) -> Result<(), Error> {
    publish_raw_as(b, ch, exchange, n, keys, Format::Bare).await
}

/// What a raw message carries besides the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// Message id, content type, persistent: the least a tuned publisher sends.
    Bare,
    /// What the relay sends for an event emitted with `OutboxEvent::json`: the same
    /// plus the `x-outbox-routing-key` and `x-outbox-tracking-ids` headers, the correlation id
    /// (the chain's root) and the timestamp. Those are the outbox's semantics (retries keep
    /// the original key; handlers see the causal chain), and they cost the broker and the
    /// client's frame parsing on every message.
    Outbox,
}

/// [`publish_raw`] with messages of `format`.
pub(super) async fn publish_raw_as(
    b: &Bench,
    ch: &lapin::Channel,
    exchange: &str,
    n: usize,
    keys: usize,
    format: Format,
) -> Result<(), Error> {
    let body = serde_json::to_vec(&b.payload).map_err(Error::Json)?;
    for chunk in (0..n)
        .collect::<Vec<_>>()
        .chunks(b.params.batch_size as usize)
    {
        // Every publish of the window is polled once, in order, before any is awaited: lapin
        // then writes the window's frames in one go instead of handing each message to its
        // I/O thread and waiting (the same technique as the relay's, so the ceiling stays
        // the best plain lapin we know).
        let mut written = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let id = uuid::Uuid::now_v7().to_string();
            let mut props = BasicProperties::default()
                .with_message_id(id.as_str().into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            let mut headers = FieldTable::default();
            if format == Format::Outbox {
                headers.insert(
                    actix_outbox::headers::TRACKING_IDS.into(),
                    AMQPValue::FieldArray(vec![AMQPValue::LongString(id.as_str().into())].into()),
                );
                headers.insert(
                    actix_outbox::headers::ROUTING_KEY.into(),
                    AMQPValue::LongString("bench.item".into()),
                );
                props = props
                    .with_correlation_id(id.as_str().into())
                    .with_timestamp(chrono::Utc::now().timestamp() as u64);
            }
            if keys > 0 {
                headers.insert(
                    actix_outbox::headers::ORDERING_KEY.into(),
                    AMQPValue::LongString(format!("key-{}", i % keys).into()),
                );
            }
            if format == Format::Outbox || keys > 0 {
                props = props.with_headers(headers);
            }
            let mut publish = Box::pin(ch.basic_publish(
                exchange.into(),
                "bench.item".into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &body,
                props,
            ));
            let first = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(std::future::Future::poll(publish.as_mut(), cx))
            })
            .await;
            written.push(match first {
                std::task::Poll::Ready(done) => {
                    futures_util::future::Either::Left(std::future::ready(done))
                }
                std::task::Poll::Pending => futures_util::future::Either::Right(publish),
            });
        }
        let mut confirms = Vec::with_capacity(chunk.len());
        for w in written {
            confirms.push(w.await?);
        }
        for c in confirms {
            c.await?;
        }
    }
    Ok(())
}

/// How a raw consumer acks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RawAcks {
    /// One ack per message (pipelined).
    Each,
    /// One `multiple` ack per 64 messages (and one for the rest), as actix-outbox's
    /// consumer coalesces its acks under load.
    Coalesced,
}

/// Raw consume + ack of `n` messages with the bench prefetch; returns when all are acked.
pub(super) async fn consume_raw(
    conn: &Connection,
    queue: &str,
    prefetch: u16,
    n: usize,
    mode: RawAcks,
) -> Result<(), Error> {
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
        done += 1;
        let multiple = mode == RawAcks::Coalesced;
        if !multiple || done % 64 == 0 || done == n {
            let acker = delivery.acker;
            let options = lapin::options::BasicAckOptions { multiple };
            acks.push(async move { acker.ack(options).await });
        }
        // Ack futures do nothing until awaited: await them in windows of half the prefetch
        // (coalesced: each at once, it already stands for 64 messages).
        let window = match mode {
            RawAcks::Each => usize::from(prefetch / 2).max(1),
            RawAcks::Coalesced => 1,
        };
        if acks.len() >= window {
            for r in futures_util::future::join_all(acks.drain(..)).await {
                r?;
            }
        }
    }
    for r in futures_util::future::join_all(acks).await {
        r?;
    }
    close_channel(ch).await;
    Ok(())
}

pub(super) async fn wait_count(
    counter: &AtomicU64,
    n: u64,
    what: &'static str,
) -> Result<(), Error> {
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
pub(super) async fn consume(b: &Bench) -> Result<(), Error> {
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
        publish_raw(b, &pub_ch, exchange, n, 0).await?;
        let handled = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let worker = start_worker(b, &broker, exchange, queue, handled.clone(), None).await?;
        wait_count(&handled, n as u64, "the worker consuming the queue").await?;
        ours.push(n as f64 / start.elapsed().as_secs_f64());
        worker.stop().await;

        publish_raw(b, &pub_ch, exchange, n, 0).await?;
        let start = Instant::now();
        consume_raw(&conn, queue, b.params.prefetch, n, RawAcks::Each).await?;
        raw.push(n as f64 / start.elapsed().as_secs_f64());
    }
    broker.send(StopBroker).await?;
    close_raw(conn).await;
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

/// 20,000 events emitted in one transaction; time until the last is handled (relay and
/// worker running in their own processes, as in production), against raw lapin publishing with confirms and consuming with acks the
/// same number of messages at the same time.
pub(super) async fn end_to_end(b: &Bench) -> Result<(), Error> {
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
    let (mut raw_coalesced, mut raw_outbox_format, mut ack_frames) = (Vec::new(), Vec::new(), 0);
    let mut cpu_raw_outbox_format = json!(null);
    // µs of CPU per message, per process, of the last run: ours, and each raw ceiling.
    let (mut cpu_ours, mut cpu_raw, mut cpu_raw_coalesced) =
        (json!(null), json!(null), json!(null));
    let (mut emit_ms, mut after_commit_ms, mut pubsub_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut last_stages = BatchStages::new();
    let mut floor_parts_ms: Vec<[f64; 3]> = Vec::new();
    for _ in 0..b.params.runs {
        // The production layout: relay and worker in their own processes.
        let (worker, mut relay) = spawn_pipeline(b, &table, exchange, queue, n as u64, &[]).await?;
        // Drains the relay's log (a full pipe would block it).
        let relay_log = collect_batch_stages(&mut relay);
        tokio::time::sleep(Duration::from_secs(2)).await; // start-up, not synchronisation
        let events = b.events(n, "bench.e2e")?;
        let (cpu_before, relay_cpu_before) = (ServiceCpu::now(), cpu_ms(relay.id()));
        let start_us = now_us();
        let txn = b.db.begin().await?;
        outbox.emit_many(&txn, events).await?;
        txn.commit().await?;
        let commit_us = now_us();
        let report = worker_report(worker).await;
        let (cpu_after, relay_cpu_after) = (ServiceCpu::now(), cpu_ms(relay.id()));
        stop_process(&mut relay);
        last_stages = relay_log.join().unwrap_or_default();
        let report = report?;
        let handled = report["handled"].as_u64().unwrap_or(0);
        if handled < n as u64 {
            return Err(bad(
                "end_to_end",
                format!("the worker handled {handled} of {n}"),
            ));
        }
        let last_us = report["last_us"].as_u64().unwrap_or(0);
        ours.push(n as f64 / (last_us.saturating_sub(start_us) as f64 / 1e6));
        emit_ms.push(commit_us.saturating_sub(start_us) as f64 / 1e3);
        after_commit_ms.push(last_us.saturating_sub(commit_us) as f64 / 1e3);
        let relay_cpu = relay_cpu_after
            .zip(relay_cpu_before)
            .map_or(0.0, |(a, b)| a - b);
        let worker_cpu = report["cpu_ms"].as_f64().unwrap_or(0.0);
        ack_frames = report["ack_frames"].as_u64().unwrap_or(0);
        cpu_ours = cpu_after.per_message_since(
            &cpu_before,
            n,
            "bench (emit)",
            &[("relay", relay_cpu), ("worker", worker_cpu)],
        );

        // The raw ceiling: bare messages acked one by one (the ceiling) or coalesced,
        // and the relay's message format acked one by one; in rotating order across runs.
        let mut pubsub = Duration::ZERO;
        let mut modes = [
            (RawAcks::Each, Format::Bare),
            (RawAcks::Coalesced, Format::Bare),
            (RawAcks::Each, Format::Outbox),
        ];
        modes.rotate_left(raw.len() % 3);
        for (acks, format) in modes {
            // Each from an empty queue: a raw consumer stops after `n` deliveries and may
            // leave some of its own publishes behind for the next (seen: 217 messages).
            b.purge(&conn, queue).await?;
            let cpu_before = ServiceCpu::now();
            let start = Instant::now();
            let consuming = consume_raw(&conn, queue, b.params.prefetch, n, acks);
            let publishing = publish_raw_as(b, &pub_ch, exchange, n, 0, format);
            let (c, p) = tokio::join!(consuming, publishing);
            c?;
            p?;
            let took = start.elapsed();
            let cpu = ServiceCpu::now().per_message_since(&cpu_before, n, "bench (raw)", &[]);
            let rate = n as f64 / took.as_secs_f64();
            match (acks, format) {
                (RawAcks::Each, Format::Bare) => {
                    pubsub = took;
                    cpu_raw = cpu;
                    raw.push(rate);
                }
                (RawAcks::Coalesced, _) => {
                    cpu_raw_coalesced = cpu;
                    raw_coalesced.push(rate);
                }
                (RawAcks::Each, Format::Outbox) => {
                    cpu_raw_outbox_format = cpu;
                    raw_outbox_format.push(rate);
                }
            }
        }
        pubsub_ms.push(pubsub.as_secs_f64() * 1e3);
        // The work no outbox can skip, done by hand, one part after the other: insert the rows
        // (they must be committed before anything may leave), claim and delete them, and
        // publish and consume the messages. On 2 saturated cores the parts add up.
        let insert = bare_insert(&b.db, "bench_e2e_plain", n, &body).await?;
        let claim_delete = bare_claim_delete(&b.db, "bench_e2e_plain", b.params.batch_size).await?;
        composed.push(n as f64 / (insert + claim_delete + pubsub).as_secs_f64());
        floor_parts_ms.push([insert, claim_delete, pubsub].map(|d| d.as_secs_f64() * 1e3));
    }
    close_raw(conn).await;
    b.db.execute_unprepared("DROP TABLE IF EXISTS bench_e2e_outbox, bench_e2e_plain")
        .await?;
    let composed = summarize(composed);
    let raw_coalesced = summarize(raw_coalesced);
    let raw_outbox_format = summarize(raw_outbox_format);
    let mut relay_stages = stages_json(&[], &last_stages);
    if let Some(stages) = relay_stages.as_object_mut() {
        stages.remove("emit_commit"); // the emit here is one transaction, timed above
    }
    let params = json!({"events": n, "batch_size": b.params.batch_size, "prefetch": b.params.prefetch, "queue_type": b.params.queue_type, "payload_bytes": b.params.payload_bytes,
        "layout": "relay and worker in separate processes",
        // Where the time goes (medians): our emit → commit, our commit → last handled, and
        // the raw publish-and-consume; the relay's per-batch stages of the last run.
        "phases_ms": {"emit_commit": summarize(emit_ms).median, "commit_to_last_handled": summarize(after_commit_ms).median, "raw_publish_and_consume": summarize(pubsub_ms).median,
            "relay_stages": relay_stages},
        "composed_floor": {"what": "bare array insert + bare claim-and-delete + raw publish-and-consume, in sequence", "parts_ms_median": {
                "insert": summarize(floor_parts_ms.iter().map(|p| p[0]).collect()).median,
                "claim_delete": summarize(floor_parts_ms.iter().map(|p| p[1]).collect()).median,
                "publish_and_consume": summarize(floor_parts_ms.iter().map(|p| p[2]).collect()).median},
            "median": composed.median.round(), "ratio": ((summarize(ours.clone()).median / composed.median) * 1000.0).round() / 1000.0},
        // The same raw pipeline with coalesced acks (one `multiple` ack per 64 messages).
        "ceiling_coalesced_acks": {"median": raw_coalesced.median.round(), "ratio": ((summarize(ours.clone()).median / raw_coalesced.median) * 1000.0).round() / 1000.0},
        // The same raw pipeline publishing the relay's message format (its headers and
        // properties), acks one by one.
        "ceiling_outbox_format": {"median": raw_outbox_format.median.round(), "ratio": ((summarize(ours.clone()).median / raw_outbox_format.median) * 1000.0).round() / 1000.0},
        // µs of CPU per message, per process, in the last run (from /proc).
        "worker_ack_frames": ack_frames,
        "cpu_us_per_msg": {"ours": cpu_ours, "raw": cpu_raw, "raw_coalesced_acks": cpu_raw_coalesced, "raw_outbox_format": cpu_raw_outbox_format}});
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
