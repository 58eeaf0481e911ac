//! Fault case on MariaDB: the relay **process** is SIGKILLed while it holds a claimed batch,
//! three times. Its transaction dies with its connection, so InnoDB releases the rows and the
//! next claim takes them again: nothing is lost, and a kill costs at most the batches it had
//! in flight (2 × batch size) as duplicates. A relay frozen mid-batch instead (SIGSTOP) loses
//! its connection after the claim lease, with the same effect. `fault_mysql_restart.rs`
//! restarts the server.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::setup;
use common::broker::{TestBroker, duplicates};
use common::process::{ChildProcess, example_binary};
use common::relay::{TestRelay, config};
use common::{TestDb, mysql_url, wait_for};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

const BATCH: u32 = 200;
/// Batches one relay keeps in flight (its default concurrency).
const IN_FLIGHT: usize = 2;

/// Rows the outbox table still holds.
async fn rows(t: &TestDb) -> i64 {
    t.int("SELECT count(*) FROM outbox").await
}

/// Rows of the outbox that some other session holds locked: what a `SKIP LOCKED` claim
/// skips, counted in a transaction that is rolled back.
async fn rows_held_by_others(t: &TestDb) -> usize {
    let txn = t.db.begin().await.expect("begin");
    let mut counts = Vec::new();
    for sql in [
        "SELECT id FROM outbox",
        "SELECT id FROM outbox FOR UPDATE SKIP LOCKED",
    ] {
        let rows = txn
            .query_all_raw(Statement::from_string(DbBackend::MySql, sql))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        counts.push(rows.len());
    }
    txn.rollback().await.expect("rollback");
    counts[0] - counts[1]
}

/// Freezes `relay` (SIGSTOP) at a moment it holds claimed rows: freezes, looks, and resumes
/// to try again a little later if it held none. Returns how many rows it holds.
async fn freeze_holding_rows(relay: &ChildProcess, t: &TestDb) -> usize {
    wait_for(
        "the relay frozen while it holds a claimed batch",
        Duration::from_secs(60),
        || async {
            relay.freeze();
            let held = rows_held_by_others(t).await;
            if held == 0 {
                relay.thaw();
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
            (held > 0).then_some(held)
        },
    )
    .await
}

/// Starts the `relay` program on `t`'s database and `broker`'s exchange (batches of
/// [`BATCH`], `extra` environment besides) and waits until its relay actor runs.
async fn start_relay_process(
    t: &TestDb,
    broker: &TestBroker,
    extra: &[(&str, &str)],
) -> ChildProcess {
    let env = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let mut vars = vec![
        env("DATABASE_URL", &mysql_url(&t.name)),
        env("AMQP_URL", &broker.url),
        env("OUTBOX_EXCHANGE", &broker.exchange),
        env("OUTBOX_BATCH_SIZE", &BATCH.to_string()),
        env("RUST_LOG", "info,sqlx=warn"),
    ];
    vars.extend(extra.iter().map(|(k, v)| env(k, v)));
    let log_dir = std::env::temp_dir()
        .join("actix-outbox-faults")
        .join(&t.name);
    std::fs::create_dir_all(&log_dir).expect("log directory");
    let mut relay = ChildProcess::start("relay", &example_binary("relay"), vars, &log_dir);
    relay
        .wait_for_log("relay started", Duration::from_secs(60))
        .await;
    relay
}

/// A 20,000-row backlog (batches of 200); the relay process is SIGKILLed three times while it
/// holds a claimed
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

    let mut relay = start_relay_process(&t, &broker, &[]).await;
    for below in [17_000, 12_000, 7_000] {
        wait_for(
            &format!("the drain to pass {below} rows left"),
            Duration::from_secs(90),
            || async { (rows(&t).await < below).then_some(()) },
        )
        .await;
        let held = freeze_holding_rows(&relay, &t).await;
        relay.kill();
        let left = rows(&t).await;
        eprintln!("killed the relay holding {held} claimed rows, {left} rows left");
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

/// A relay process frozen (SIGSTOP) while it holds a batch, with a 3 s claim lease: the
/// server closes its idle connection after the lease (`wait_timeout`), which releases the
/// rows, and a second relay drains all 20,000 rows; the frozen one never wakes.
#[actix_rt::test]
async fn a_frozen_relay_releases_its_batch_after_the_lease() {
    let t = TestDb::mysql().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let ids = t.emit_backlog(20_000, "fault.item").await;
    let mut frozen = start_relay_process(
        &t,
        &broker,
        &[
            ("OUTBOX_CONFIRM_TIMEOUT_MS", "2000"),
            ("OUTBOX_CLAIM_LEASE_MS", "3000"),
        ],
    )
    .await;
    wait_for(
        "the drain to be under way",
        Duration::from_secs(60),
        || async { (rows(&t).await < 19_000).then_some(()) },
    )
    .await;
    let held = freeze_holding_rows(&frozen, &t).await;
    let other = TestRelay::start(&t.db, &broker.url, config(&broker.exchange));
    let seen = broker
        .collect_at_least_once(&queue, &ids, Duration::from_secs(60))
        .await;
    t.wait_outbox_empty("the outbox table to be empty", Duration::from_secs(30))
        .await;
    other.stop().await;
    let dupes = duplicates(&seen);
    let bound = IN_FLIGHT * BATCH as usize;
    assert!(dupes <= bound, "{dupes} duplicates, more than {bound}");
    assert_eq!(seen.len(), ids.len(), "no stranger arrived");
    eprintln!("relay SIGSTOP on MariaDB holding {held} rows: 20,000 delivered, {dupes} duplicates");
    frozen.kill();
    broker.cleanup().await;
    t.cleanup().await;
}
