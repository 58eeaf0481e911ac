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
    let ch = conn.create_channel().await?;
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "".into()).await;
    b.db.execute_unprepared("DROP TABLE IF EXISTS bench_ordered_outbox")
        .await?;
    Ok(())
}

/// 20,000 keyed messages waiting, handled by a no-op handler through an ordered listener
/// and through a plain queue with the bench prefetch.
async fn consumer_side(b: &Bench) -> Result<(), Error> {
    let n = b.params.messages;
    let (exchange, plain, ordered) = ("bench_ordered_c", "bench_plain_q", "bench_ordered_q");
    let conn = b.raw_connection().await?;
    let broker = ConnectionSupervisor::start_supervised(BrokerConfig::new(b.amqp_url.clone())?)?;
    let pub_ch = conn.create_channel().await?;
    pub_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let listen = |ordered_listener: bool| -> Result<Listen, Error> {
        let listen = Listen::new(["#"])?;
        Ok(match ordered_listener {
            true => listen.with_queue(ordered).ordered(PARTITIONS),
            false => listen.with_queue(plain),
        })
    };
    let mut results: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for run in 0..=b.params.runs {
        for (slot, ordered_listener) in [false, true].into_iter().enumerate() {
            // Run 0 only declares both listeners' topology. Both are bound with `#`, so each
            // later round's messages wait in both, and each listener drains its own copy.
            let handled = Arc::new(AtomicU64::new(0));
            if run == 0 {
                start_worker_on(b, &broker, exchange, listen(ordered_listener)?, handled, None)
                    .await?
                    .stop()
                    .await;
                continue;
            }
            let start = Instant::now();
            let worker =
                start_worker_on(b, &broker, exchange, listen(ordered_listener)?, handled.clone(), None)
                    .await?;
            wait_count(&handled, n as u64, "a worker consuming keyed messages").await?;
            results[slot].push(n as f64 / start.elapsed().as_secs_f64());
            worker.stop().await;
        }
        if run < b.params.runs {
            // Both listeners are bound with `#`: each gets every message once.
            publish_raw(b, &pub_ch, exchange, n, MANY_KEYS).await?;
        }
    }
    broker.send(StopBroker).await?;
    let ch = conn.create_channel().await?;
    let mut queues = vec![plain.to_owned(), format!("dlq_{plain}"), format!("dlq_{ordered}")];
    queues.extend((0..PARTITIONS).map(|i| format!("{ordered}.p{i}")));
    for q in queues {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let hash = format!("{exchange}.ordered.{ordered}");
    let _ = ch
        .exchange_delete(hash.as_str().into(), Default::default())
        .await;
    let _ = conn.close(200, "".into()).await;
    let [unordered, ordered_runs] = results;
    let params = json!({"messages": n, "keys": MANY_KEYS, "partitions": PARTITIONS,
        "prefetch_unordered": b.params.prefetch, "queue_type": "quorum", "handler": "no-op"});
    report(
        "ordered_consume",
        params,
        summarize(ordered_runs),
        "msg/s",
        Some(("unordered_consume", summarize(unordered))),
        0.3,
    );
    Ok(())
}
