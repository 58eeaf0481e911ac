//! Returned messages are matched to their own rows. lapin hands a `basic.return` to whichever
//! confirm completes next, and a multiple-ack completes many at once: a relay that trusted
//! "this confirm carried a return" would delete an unroutable row as sent (lost) and retry an
//! innocent one. Here the exchange has no alternate exchange (check-only mode, as a
//! least-privilege deployment without `<exchange>.unroutable`), so every unroutable publish
//! is returned.
#![cfg(feature = "service-tests")]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use actix_outbox::outbox_message::Entity;
use actix_outbox::{OutboxEvent, setup};
use actix_outbox_actors::TopologyMode;
use common::broker::TestBroker;
use common::relay::{TestRelay, config};
use common::{TestDb, wait_for};
use lapin::ExchangeKind;
use sea_orm::{EntityTrait, TransactionTrait};

const PAIRS: usize = 300;

/// 600 rows in one batch, routable (`ok.N`) and unroutable (`lost.N`) interleaved, published
/// pipelined so the broker coalesces its acks: exactly the routable rows are delivered, once
/// each, and deleted; exactly the unroutable rows stay, each charged one attempt.
#[actix_rt::test]
async fn returns_are_matched_by_message_not_by_confirm() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    // A topic exchange without an alternate exchange: unroutable publishes are returned.
    broker.declare_bare_exchange(ExchangeKind::Topic).await;
    let queue = broker.bind_queue(&["ok.#"]).await;

    let events: Vec<OutboxEvent> = (0..PAIRS)
        .flat_map(|n| {
            [
                OutboxEvent::json(&format!("ok.{n}"), &n).expect("event"),
                OutboxEvent::json(&format!("lost.{n}"), &n).expect("event"),
            ]
        })
        .collect();
    let txn = t.db.begin().await.expect("begin");
    let ids = actix_outbox::emit_many(&txn, events).await.expect("emit");
    txn.commit().await.expect("commit");
    let routable: HashSet<String> = ids.iter().step_by(2).map(|id| id.to_string()).collect();

    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange)
            .with_topology(TopologyMode::CheckOnly)
            .with_batch_size(1_000)
            .with_concurrency(1)
            .with_max_attempts(100)
            .with_retry_backoff(Duration::from_secs(300), Duration::from_secs(600)),
    );
    let stats = wait_for(
        "the relay to settle all 600 rows once",
        Duration::from_secs(30),
        || async {
            let s = relay.stats().await;
            (s.published + s.refused >= 2 * PAIRS as u64).then_some(s)
        },
    )
    .await;
    let delivered = broker.drain(&queue, PAIRS, Duration::from_secs(10)).await;
    let more = broker.collect_for(&queue, Duration::from_millis(500)).await;
    let stats_after = relay.stop().await;

    let delivered_ids: HashSet<String> = delivered.keys().cloned().collect();
    assert_eq!(
        delivered_ids, routable,
        "exactly the routable rows were delivered"
    );
    assert!(
        delivered.values().all(|&n| n == 1),
        "each once: {delivered:?}"
    );
    assert!(more.is_empty(), "{} more deliveries arrived", more.len());
    assert_eq!(
        (stats.published, stats.refused),
        (PAIRS as u64, PAIRS as u64),
        "{stats:?}"
    );
    assert_eq!(
        stats_after.published, PAIRS as u64,
        "nothing re-sent: {stats_after:?}"
    );

    let left = Entity::find().all(&t.db).await.expect("read outbox");
    assert_eq!(left.len(), PAIRS, "every unroutable row is kept");
    for row in &left {
        assert!(
            row.routing_key.starts_with("lost."),
            "{} was kept",
            row.routing_key
        );
        assert_eq!(row.attempts, 1, "{} charged once", row.routing_key);
        assert!(!routable.contains(&row.message_id.to_string()));
    }
    broker.cleanup().await;
    t.cleanup().await;
}
