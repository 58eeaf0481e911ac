//! Fault case on MariaDB: the relay **process** is SIGKILLed while it holds a claimed batch,
//! three times. Its transaction dies with its connection, so InnoDB releases the rows and the
//! next claim takes them again: nothing is lost, and a kill costs at most the batches it had
//! in flight (2 × batch size) as duplicates. `fault_mysql_restart.rs` restarts the server.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::setup;
use common::broker::{TestBroker, duplicates};
use common::process::{ChildProcess, example_binary};
use common::{TestDb, require_env, wait_for};

const BATCH: u32 = 200;
/// Batches one relay keeps in flight (its default concurrency).
const IN_FLIGHT: usize = 2;

/// Rows the outbox table still holds.
async fn rows(t: &TestDb) -> i64 {
    t.int("SELECT count(*) FROM outbox").await
}

/// Whether some other session holds row locks: a relay mid-batch (nothing else writes here).
async fn relay_mid_batch(t: &TestDb) -> bool {
    t.int(
        "SELECT count(*) FROM information_schema.innodb_trx \
         WHERE trx_rows_locked > 0 AND trx_mysql_thread_id <> CONNECTION_ID()",
    )
    .await
        > 0
}

/// A 20,000-row backlog (batches of 200); the relay process is SIGKILLed three times while it holds a claimed
/// batch and started again each time: every event arrives, the table empties, and no kill
/// costs more duplicates than the batches it had in flight.
#[actix_rt::test]
async fn relay_process_killed_mid_batch_loses_nothing() {
    let t = TestDb::mysql().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let ids = t.emit_backlog(20_000, "fault.item").await;

    let base = require_env("MYSQL_URL");
    let base = base.rsplit_once('/').map_or(base.as_str(), |(b, _)| b);
    let env = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let vars = vec![
        env("DATABASE_URL", &format!("{base}/{}", t.name)),
        env("AMQP_URL", &broker.url),
        env("OUTBOX_EXCHANGE", &broker.exchange),
        env("OUTBOX_BATCH_SIZE", &BATCH.to_string()),
        env("RUST_LOG", "info,sqlx=warn"),
    ];
    let log_dir = std::env::temp_dir()
        .join("actix-outbox-faults")
        .join(&t.name);
    std::fs::create_dir_all(&log_dir).expect("log directory");
    let mut relay = ChildProcess::start("relay", &example_binary("relay"), vars, &log_dir);
    relay
        .wait_for_log("relay started", Duration::from_secs(60))
        .await;
    for below in [17_000, 12_000, 7_000] {
        wait_for(
            &format!("the relay to hold a claimed batch with < {below} rows left"),
            Duration::from_secs(90),
            || async { (rows(&t).await < below && relay_mid_batch(&t).await).then_some(()) },
        )
        .await;
        relay.kill();
        let left = rows(&t).await;
        eprintln!("killed the relay mid-batch with {left} rows left");
        relay.restart();
        relay
            .wait_for_log("relay started", Duration::from_secs(60))
            .await;
        wait_for(
            "the restarted relay to publish and delete a batch",
            Duration::from_secs(60),
            || async { (rows(&t).await < left).then_some(()) },
        )
        .await;
    }
    assert_eq!(relay.generation(), 4, "three kills, three restarts");
    let seen = broker
        .collect_at_least_once(&queue, &ids, Duration::from_secs(120))
        .await;
    t.wait_outbox_empty("the outbox table to be empty", Duration::from_secs(30))
        .await;
    let bound = 3 * IN_FLIGHT * BATCH as usize;
    let dupes = duplicates(&seen);
    assert!(dupes <= bound, "{dupes} duplicates, more than {bound}");
    assert_eq!(seen.len(), ids.len(), "no stranger arrived");
    eprintln!("relay SIGKILL ×3 on MariaDB: 20,000 delivered, {dupes} duplicates");
    relay.stop(Duration::from_secs(30)).await;
    broker.cleanup().await;
    t.cleanup().await;
}
