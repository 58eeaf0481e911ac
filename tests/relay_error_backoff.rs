//! A relay whose batches keep failing (here: the exchange exists with another type, so every
//! declaration is refused) honours its error backoff for every wake-up: a storm of NOTIFYs
//! does not open a channel and fail again per notification. Once the cause is fixed, every
//! row goes out.
#![cfg(feature = "service-tests")]

mod common;

use std::time::{Duration, Instant};

use actix_outbox::setup;
use common::broker::TestBroker;
use common::relay::{TestRelay, config};
use common::{TestDb, wait_for};
use lapin::ExchangeKind;
use lapin::options::ExchangeDeleteOptions;

const ROWS: usize = 100;

/// 100 emits, one commit (and one NOTIFY) every 10 ms, against a persistent declare error:
/// the relay fails a few times on its backoff schedule (50 ms doubling to 500 ms), not once
/// per notification; after the exchange is fixed all 100 rows are delivered.
///
/// The bound on failed batches follows the time the emits really took (a slow machine takes
/// longer than 1 s for them): every pause lasts at least half its nominal delay (the jitter's
/// floor), and each pause ends with at most `concurrency` (2) batches failing together.
#[actix_rt::test]
async fn notifications_wait_for_the_error_backoff() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    // An exchange of the wrong type: every declaration of the relay's is refused.
    broker.declare_bare_exchange(ExchangeKind::Fanout).await;
    let started = Instant::now();
    let relay = TestRelay::start(&t.db, &broker.url, config(&broker.exchange));
    wait_for(
        "the first failed batch",
        Duration::from_secs(10),
        || async { (relay.stats().await.errors >= 1).then_some(()) },
    )
    .await;

    let mut ids = Vec::with_capacity(ROWS);
    for n in 0..ROWS {
        ids.push(
            actix_outbox::emit(&t.db, "user.created", &n)
                .await
                .expect("emit"),
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // pacing the emitter
    }
    let errors = relay.stats().await.errors;
    let allowed = most_failed_batches(started.elapsed());
    eprintln!(
        "{errors} failed batches in {:?} (bound {allowed})",
        started.elapsed()
    );

    broker
        .channel
        .exchange_delete(
            broker.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .expect("delete the wrong exchange");
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let seen = broker.drain(&queue, ROWS, Duration::from_secs(20)).await;
    common::broker::assert_exactly_once(&seen, &ids);
    let stats = relay.stop().await;
    assert!(
        errors <= allowed,
        "{errors} failed batches (at most {allowed} fit the backoff) while 100 notifications \
         arrived in {:?}: the backoff was not honoured ({stats:?})",
        started.elapsed()
    );
    broker.cleanup().await;
    t.cleanup().await;
}

/// The most batches that can fail in `elapsed` under `config`'s error backoff (50 ms doubling
/// to 500 ms, each pause at least half of that) with two batches in flight, plus the first
/// pair before any pause.
fn most_failed_batches(elapsed: Duration) -> u64 {
    let (mut pauses, mut spent, mut nominal) = (0u64, Duration::ZERO, Duration::from_millis(50));
    loop {
        spent += nominal / 2;
        if spent > elapsed {
            break;
        }
        pauses += 1;
        nominal = (nominal * 2).min(Duration::from_millis(500));
    }
    2 * (pauses + 1)
}

#[test]
fn the_bound_follows_the_backoff_schedule() {
    // Pauses of at least 25, 50, 100, 200, 250, 250, … ms.
    assert_eq!(most_failed_batches(Duration::from_millis(20)), 2);
    assert_eq!(most_failed_batches(Duration::from_millis(80)), 6);
    assert_eq!(most_failed_batches(Duration::from_millis(1_000)), 14);
    assert!(most_failed_batches(Duration::from_secs(3)) < ROWS as u64 / 2);
}
