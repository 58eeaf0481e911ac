//! The relay survives the database becoming unreachable mid-drain: it logs, backs off and
//! resumes by itself; nothing is lost.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::{OutboxEvent, setup};
use common::broker::{TestBroker, assert_none_lost};
use common::faults::{TcpProxy, host_port, outage};
use common::relay::{TestRelay, config};
use common::{TestDb, require_env, wait_for};
use sea_orm::TransactionTrait;

/// The relay talks to PostgreSQL through a proxy that the test cuts for 3 s mid-drain
/// (open connections reset, new ones refused), then restores.
#[actix_rt::test]
async fn database_unreachable_for_a_while() {
    let proxy = TcpProxy::start(host_port(&require_env("DATABASE_URL"))).await;
    let t = TestDb::postgres_at(|url| proxy.rewrite(url)).await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let events: Vec<OutboxEvent> = (0..10_000)
        .map(|i| OutboxEvent::json("db.item", &i).expect("event"))
        .collect();
    let txn = t.db.begin().await.expect("begin");
    let ids = actix_outbox::emit_many(&txn, events).await.expect("emit");
    txn.commit().await.expect("commit");

    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange).with_batch_size(100),
    );
    wait_for(
        "the relay to be mid-drain",
        Duration::from_secs(30),
        || async { (relay.stats().await.published >= 1_000).then_some(()) },
    )
    .await;
    proxy.cut();
    outage(Duration::from_secs(3)).await;
    let during = relay.stats().await;
    proxy.restore();
    t.wait_outbox_empty(
        "the relay to drain after the outage",
        Duration::from_secs(60),
    )
    .await;
    let stats = relay.stop().await;
    assert!(
        during.errors >= 1,
        "the relay noticed the outage: {during:?}"
    );
    let depth = broker.depth(&queue).await as usize;
    let seen = broker.drain(&queue, depth, Duration::from_secs(30)).await;
    let duplicates = assert_none_lost(&seen, &ids);
    assert!(duplicates <= 200, "{duplicates} duplicates ({stats:?})");
    eprintln!("database outage survived: 10000 rows, 0 lost, {duplicates} duplicates, {stats:?}");
    broker.cleanup().await;
    t.cleanup().await;
}
