//! `ordered`: per-key ordering beside the unordered path, in the same run. The relay drains
//! a backlog without keys, with 100 interleaved keys, and with one key (1 and 2 relays);
//! a worker consumes 20,000 keyed messages through an ordered listener (4 partitions) and
//! through a plain queue.

use super::*;

/// Keys of the many-keys case.
const MANY_KEYS: usize = 100;
/// Partitions of the ordered listener.
const PARTITIONS: u16 = 4;

pub(super) async fn ordered(b: &Bench) -> Result<(), Error> {
    relay_side(b).await?;
    consumer_side(b).await
}

/// Relay drains: no keys (the reference), 100 keys, 1 key; runs interleaved round by round.
async fn relay_side(b: &Bench) -> Result<(), Error> {
    let n = b.params.messages;
    let table = actix_outbox::TableName::new("bench_ordered_outbox")?;
    let outbox = actix_outbox::Outbox::new(table.clone());
    b.db.execute_unprepared("DROP TABLE IF EXISTS bench_ordered_outbox")
        .await?;
    outbox.setup(&b.db).await?;
    let (exchange, queue) = ("bench_ordered", "bench_ordered_q");
    let conn = b.raw_connection().await?;
    let config = RelayConfig::default()
        .with_table(table)
        .with_exchange(exchange)
        .with_batch_size(b.params.batch_size);
    run_relays(b, &outbox, &config, 1, 0, 0).await?;
    b.queue(&conn, exchange, queue).await?;
    let cases: Vec<(usize, usize)> = [1, 2]
        .into_iter()
        .flat_map(|relays| [(relays, 0), (relays, MANY_KEYS), (relays, 1)])
        .collect();
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..b.params.runs {
        for (runs, &(relays, keys)) in runs.iter_mut().zip(&cases) {
            runs.push(run_relays(b, &outbox, &config, relays, n, keys).await?);
            b.purge(&conn, queue).await?;
        }
    }
    let summaries: Vec<Summary> = runs.into_iter().map(summarize).collect();
    for (i, &(relays, keys)) in cases.iter().enumerate() {
        if keys == 0 {
            continue;
        }
        let unordered = summaries[cases.iter().position(|c| *c == (relays, 0)).unwrap_or(0)];
        let params = json!({"backlog": n, "relays": relays, "keys": keys,
            "batch_size": b.params.batch_size, "payload_bytes": b.params.payload_bytes,
            "queue_type": b.params.queue_type});
        report(
            "ordered_relay_drain",
            params,
            summaries[i],
            "msg/s",
            Some(("unordered_relay_drain", unordered)),
            0.5,
        );
    }
    b.teardown(conn, queue, "bench_ordered_outbox").await
}

/// Prefetch of the second ordered listener (the first keeps the default, 1).
const AHEAD: u16 = 100;

/// 20,000 keyed messages waiting, handled by a no-op handler through a plain queue with the
/// bench prefetch, through an ordered listener with its default prefetch of 1, and through
/// one with prefetch 100.
async fn consumer_side(b: &Bench) -> Result<(), Error> {
    let n = b.params.messages;
    let exchange = "bench_ordered_c";
    let queues = ["bench_plain_q", "bench_ordered_q", "bench_ordered_ahead_q"];
    let conn = b.raw_connection().await?;
    let broker = ConnectionSupervisor::start_supervised(BrokerConfig::new(b.amqp_url.clone())?)?;
    let pub_ch = conn.create_channel().await?;
    pub_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let listen = |slot: usize| -> Result<Listen, Error> {
        let listen = Listen::new(["#"])?.with_queue(queues[slot]);
        Ok(match slot {
            0 => listen,
            1 => listen.ordered(PARTITIONS),
            _ => listen.ordered(PARTITIONS).with_prefetch(AHEAD),
        })
    };
    let mut results: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for run in 0..=b.params.runs {
        for (slot, runs) in results.iter_mut().enumerate() {
            // Run 0 only declares the listeners' topology. All are bound with `#`, so each
            // later round's messages wait in each, and each listener drains its own copy.
            let handled = Arc::new(AtomicU64::new(0));
            if run == 0 {
                start_worker_on(b, &broker, exchange, listen(slot)?, handled, None)
                    .await?
                    .stop()
                    .await;
                continue;
            }
            let start = Instant::now();
            let worker =
                start_worker_on(b, &broker, exchange, listen(slot)?, handled.clone(), None).await?;
            wait_count(&handled, n as u64, "a worker consuming keyed messages").await?;
            runs.push(n as f64 / start.elapsed().as_secs_f64());
            worker.stop().await;
        }
        if run < b.params.runs {
            // Every listener is bound with `#`: each gets every message once.
            publish_raw(b, &pub_ch, exchange, n, MANY_KEYS).await?;
        }
    }
    broker.send(StopBroker).await?;
    let ch = conn.create_channel().await?;
    for (slot, queue) in queues.iter().enumerate() {
        let mut names = vec![format!("dlq_{queue}")];
        match slot {
            0 => names.push((*queue).to_owned()),
            _ => names.extend((0..PARTITIONS).map(|i| format!("{queue}.p{i}"))),
        }
        for q in names {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let hash = format!("{exchange}.ordered.{queue}");
        let _ = ch
            .exchange_delete(hash.as_str().into(), Default::default())
            .await;
    }
    close_raw(conn).await;
    let [unordered, one, ahead] = results;
    let unordered = summarize(unordered);
    for (prefetch, runs) in [(1, one), (AHEAD, ahead)] {
        let params = json!({"messages": n, "keys": MANY_KEYS, "partitions": PARTITIONS,
            "prefetch": prefetch, "prefetch_unordered": b.params.prefetch,
            "queue_type": "quorum", "handler": "no-op"});
        report(
            "ordered_consume",
            params,
            summarize(runs),
            "msg/s",
            Some(("unordered_consume", unordered)),
            0.3,
        );
    }
    Ok(())
}
