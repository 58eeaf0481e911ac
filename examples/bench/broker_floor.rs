//! The broker's own latency floor for the `latency` scenario: bare lapin publishes with
//! confirms to a bare consumer, at the scenario's rate, with no database in the path.

use super::*;

/// The broker's own latency floor at the same rate: raw lapin publishing one persistent
/// message per tick (with confirms) to a queue of the same type, a raw consumer measuring
/// publish → receive. No database, no outbox: what no outbox can beat on this machine.
pub(super) async fn broker_latency_floor(b: &Bench, exchange: &str) -> Result<Value, Error> {
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
    close_channel(ch).await;
    delete_queue_and_close(conn, &queue).await;
    l.sort_unstable();
    Ok(
        json!({"p50_ms": percentile(&l, 0.5), "p95_ms": percentile(&l, 0.95), "p99_ms": percentile(&l, 0.99), "max_ms": percentile(&l, 1.0), "received": l.len()}),
    )
}
