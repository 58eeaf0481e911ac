//! `relay_drain`: a backlog drained by 1, 2 and 4 relays against raw lapin and raw SQL.

use super::*;
/// A backlog drained by 1, 2 and 4 relays into a durable queue, against raw lapin publishing
/// with confirms (same exchange, queue type, batch window) and a raw SQL claim-and-delete of
/// the same rows in the same batch size.
pub(super) async fn relay_drain(b: &Bench) -> Result<(), Error> {
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
    run_relays(b, &outbox, &config, 1, 0, 0).await?;
    b.queue(&conn, exchange, queue).await?;

    // The runs interleave (ceiling, then each relay count, round after round), so a drift in
    // the services over the scenario weighs on both sides alike.
    let mut publish_runs = Vec::new();
    let mut ours: Vec<Vec<f64>> = vec![Vec::new(); b.params.relays.len()];
    for _ in 0..b.params.runs {
        publish_runs.push(raw_publish_once(b, &conn, exchange, queue).await?);
        for (runs, &relays) in ours.iter_mut().zip(&b.params.relays) {
            runs.push(run_relays(b, &outbox, &config, relays, n, 0).await?);
            b.purge(&conn, queue).await?;
        }
    }
    let publish = summarize(publish_runs);
    let sql = summarize(raw_claim_delete_runs(b, &outbox).await?);
    let (ceiling_name, ceiling) = if publish.median <= sql.median {
        ("lapin_publish_confirms", publish)
    } else {
        ("sql_claim_delete", sql)
    };
    for (runs, &relays) in ours.into_iter().zip(&b.params.relays) {
        let params = json!({"backlog": n, "relays": relays, "batch_size": b.params.batch_size,
            "backend": format!("{:?}", b.db.get_database_backend()),
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
    b.teardown(conn, queue, "bench_relay_outbox").await
}

/// Starts `relays` relays on the empty table and waits until each has finished its first
/// round (its channel is open). Then commits a backlog of `n` events, wakes the relays and
/// times until they have published all of it, from their own counters; stops them and
/// returns rows/s. So the clock covers the drain alone, as the raw ceiling's does: no
/// connection set-up, and no polling query competing with the relays for the database.
/// With `n == 0` it only lets a relay declare the exchange. With `keys > 0` the events
/// carry ordering keys `key-<i % keys>`, interleaved.
pub(super) async fn run_relays(
    b: &Bench,
    outbox: &actix_outbox::Outbox,
    config: &RelayConfig,
    relays: usize,
    n: usize,
    keys: usize,
) -> Result<f64, Error> {
    let broker = ConnectionSupervisor::start_supervised(BrokerConfig::new(b.amqp_url.clone())?)?;
    let running: Vec<_> = (0..relays)
        .map(|_| RelayActor::new(b.db.clone(), broker.clone(), config.clone()).map(Actor::start))
        .collect::<Result<_, _>>()?;
    let stats = || async {
        let mut all = Vec::with_capacity(running.len());
        for relay in &running {
            all.push(relay.send(GetRelayStats).await?);
        }
        Ok::<_, Error>(all)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats().await?.iter().any(|s| s.rounds == 0) {
        if Instant::now() > deadline {
            return Err(bad(
                "relay_drain",
                "the relays did not start within 60 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut elapsed = Duration::ZERO;
    if n > 0 {
        let txn = b.db.begin().await?;
        let mut events = b.events(n, "bench.relay")?;
        if keys > 0 {
            events = events
                .into_iter()
                .enumerate()
                .map(|(i, e)| e.with_ordering_key(format!("key-{}", i % keys)))
                .collect();
        }
        outbox.emit_many(&txn, events).await?;
        txn.commit().await?;
        let start = Instant::now();
        for relay in &running {
            relay.send(WakeUp).await?;
        }
        loop {
            let published: u64 = stats().await?.iter().map(|s| s.published).sum();
            if published >= n as u64 {
                break;
            }
            if start.elapsed() > Duration::from_secs(300) {
                return Err(Error::Timeout {
                    what: "relays draining the backlog",
                    after: Duration::from_secs(300),
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        elapsed = start.elapsed();
    }
    let mut published = 0;
    for relay in running {
        published += relay.send(StopRelay).await?.published;
    }
    broker.send(StopBroker).await?;
    if published < n as u64 {
        return Err(bad("bench", format!("relays published {published} of {n}")));
    }
    Ok(if n == 0 {
        0.0
    } else {
        n as f64 / elapsed.as_secs_f64()
    })
}

/// One run of the raw ceiling: the same number of messages published with bare lapin and
/// confirms on a fresh confirm channel; returns messages/s.
pub(super) async fn raw_publish_once(
    b: &Bench,
    conn: &Connection,
    exchange: &str,
    queue: &str,
) -> Result<f64, Error> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let start = Instant::now();
    publish_raw(b, &ch, exchange, b.params.messages, 0).await?;
    let rate = b.params.messages as f64 / start.elapsed().as_secs_f64();
    b.purge(conn, queue).await?;
    close_channel(ch).await;
    Ok(rate)
}

pub(super) async fn raw_claim_delete_runs(
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
        let took = bare_claim_delete(&b.db, t, b.params.batch_size).await?;
        runs.push(b.params.messages as f64 / took.as_secs_f64());
    }
    Ok(runs)
}

/// Claims and deletes every due row of `table` by hand, `batch_size` rows a transaction
/// (`SELECT … FOR UPDATE SKIP LOCKED`, then `DELETE … WHERE id IN (…)`), with nothing
/// published: the database's share of relaying (PostgreSQL or MySQL). Returns how long it took.
pub(super) async fn bare_claim_delete(
    db: &DatabaseConnection,
    t: &str,
    batch_size: u32,
) -> Result<Duration, Error> {
    let backend = db.get_database_backend();
    let now = match backend {
        DbBackend::MySql => "UTC_TIMESTAMP(6)",
        _ => "now()",
    };
    let start = Instant::now();
    loop {
        let txn = db.begin().await?;
        let rows = txn
            .query_all_raw(Statement::from_string(
                backend,
                format!("SELECT id, message_id, routing_key, payload, content_type, headers FROM {t} WHERE sent_at IS NULL AND parked_at IS NULL AND send_after <= {now} ORDER BY send_after, id LIMIT {batch_size} FOR UPDATE SKIP LOCKED"),
            ))
            .await?;
        if rows.is_empty() {
            txn.commit().await?;
            return Ok(start.elapsed());
        }
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<i64>("", "id").map(|i| i.to_string()))
            .collect::<Result<_, _>>()?;
        // On MySQL bounded by the count, as the relay's own delete (see its `finish`).
        let limit = match backend {
            DbBackend::MySql => format!(" LIMIT {}", ids.len()),
            _ => String::new(),
        };
        txn.execute_unprepared(&format!(
            "DELETE FROM {t} WHERE id IN ({}){limit}",
            ids.join(",")
        ))
        .await?;
        txn.commit().await?;
    }
}
