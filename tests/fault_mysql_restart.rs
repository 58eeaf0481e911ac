//! Fault case on MariaDB: the server is restarted while a relay drains a backlog. The batches
//! in flight fail (their rows are released by the server's rollback), the relay's pooled
//! connections die with the server, and it carries on with new ones once the server is back:
//! nothing is lost, and the duplicates are at most the batches in flight (2 × batch size).
//! A test binary of its own: the restart would break any other test running beside it.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::setup;
use common::broker::{TestBroker, duplicates};
use common::process::restart_mariadb;
use common::relay::{TestRelay, config};
use common::{TestDb, mysql_url, wait_for};

const BATCH: u32 = 500;
/// Batches one relay keeps in flight (its default concurrency).
const IN_FLIGHT: usize = 2;

/// The MariaDB server restarts while a relay drains 20,000 rows: the batches in flight fail,
/// the relay backs off and carries on once the server is back; every event arrives.
#[actix_rt::test]
async fn mariadb_restart_mid_drain_loses_nothing() {
    let t = TestDb::mysql().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let ids = t.emit_backlog(20_000, "fault.item").await;
    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange).with_batch_size(BATCH),
    );
    wait_for(
        "the drain to be under way",
        Duration::from_secs(60),
        || async { (relay.stats().await.published >= 2_000).then_some(()) },
    )
    .await;
    restart_mariadb().await;
    let seen = broker
        .collect_at_least_once(&queue, &ids, Duration::from_secs(180))
        .await;
    // The test's own pooled connections died with the server too: look with a fresh pool.
    let fresh = actix_outbox::DatabaseConfig::new(mysql_url(&t.name))
        .connect()
        .await
        .expect("connect after the restart");
    let check = TestDb {
        db: fresh,
        name: t.name.clone(),
    };
    check
        .wait_outbox_empty("the outbox table to be empty", Duration::from_secs(30))
        .await;
    let stats = relay.stop().await;
    assert!(stats.errors >= 1, "the restart failed a batch: {stats:?}");
    let dupes = duplicates(&seen);
    let bound = IN_FLIGHT * BATCH as usize;
    assert!(dupes <= bound, "{dupes} duplicates, more than {bound}");
    assert_eq!(seen.len(), ids.len(), "no stranger arrived");
    eprintln!(
        "MariaDB restart mid-drain: 20,000 delivered, {dupes} duplicates, {} failed batches",
        stats.errors
    );
    broker.cleanup().await;
    check.cleanup().await;
    t.close().await;
}
