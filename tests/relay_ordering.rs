//! Per-key order on the relay side: a key's rows are published in id order, never while an
//! older row of the key is unsent (delayed, refused, in another batch or another relay), and
//! rows of other keys, or without a key, are not held back by it.
#![cfg(feature = "service-tests")]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use actix_outbox::outbox_message::{Column, Entity};
use actix_outbox::{OutboxEvent, emit_event, emit_many, setup};
use common::broker::{TestBroker, Until, consume_and_ack};
use common::relay::{TestRelay, config};
use common::{TestDb, wait_for};
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
struct Step {
    key: String,
    seq: u32,
}

fn step(delivery: &Delivery) -> Step {
    serde_json::from_slice(&delivery.data).expect("a step payload")
}

fn keyed(routing_key: &str, key: &str, seq: u32) -> OutboxEvent {
    OutboxEvent::json(
        routing_key,
        &Step {
            key: key.to_owned(),
            seq,
        },
    )
    .expect("event")
    .with_ordering_key(key)
}

/// Per key, the sequence numbers in arrival order.
fn by_key(deliveries: &[Delivery]) -> HashMap<String, Vec<u32>> {
    let mut out: HashMap<String, Vec<u32>> = HashMap::new();
    for d in deliveries {
        let s = step(d);
        out.entry(s.key).or_default().push(s.seq);
    }
    out
}

/// Key `a`'s first row is nacked (its only queue is full) and retried with backoff; key
/// `b`'s first row has an eta 1.5 s ahead. Neither key's later rows may overtake them, while
/// key `c` and a row without a key go out at once. Once the full queue has room, `a` follows
/// in order; `b` follows its eta.
#[actix_rt::test]
async fn a_refused_or_delayed_row_holds_its_key_back_and_no_other() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let mut full = FieldTable::default();
    full.insert("x-max-length".into(), AMQPValue::LongInt(0));
    full.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let full_queue = broker.bind_queue_with(&["order.slow"], full).await;
    let steps = broker.bind_queue(&["order.changed"]).await;

    emit_event(&t.db, keyed("order.slow", "a", 1))
        .await
        .expect("emit");
    let delayed = keyed("order.changed", "b", 1).with_delay(Duration::from_millis(1_500));
    emit_event(&t.db, delayed).await.expect("emit");
    let mut rest = Vec::new();
    for seq in 2..=4 {
        rest.push(keyed("order.changed", "a", seq));
        rest.push(keyed("order.changed", "b", seq));
        rest.push(keyed("order.changed", "c", seq));
    }
    rest.push(
        OutboxEvent::json(
            "order.changed",
            &Step {
                key: "none".into(),
                seq: 1,
            },
        )
        .expect("event"),
    );
    emit_many(&t.db, rest).await.expect("emit many");

    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange)
            .with_retry_backoff(Duration::from_millis(50), Duration::from_millis(200)),
    );
    let early = consume_and_ack(
        &broker.conn,
        &steps,
        Until::Count(4, Duration::from_secs(10)),
    )
    .await;
    let early = by_key(&early);
    assert_eq!(early.get("c"), Some(&vec![2, 3, 4]), "{early:?}");
    assert_eq!(early.get("none"), Some(&vec![1]), "{early:?}");
    wait_for(
        "a's head to be refused twice",
        Duration::from_secs(10),
        || async {
            Entity::find()
                .filter(Column::RoutingKey.eq("order.slow"))
                .one(&t.db)
                .await
                .expect("read")
                .filter(|r| r.attempts >= 2)
        },
    )
    .await;
    let meanwhile = consume_and_ack(
        &broker.conn,
        &steps,
        Until::Window(Duration::from_millis(300)),
    )
    .await;
    let meanwhile = by_key(&meanwhile);
    assert!(
        !meanwhile.contains_key("a"),
        "a's later rows overtook its refused head: {meanwhile:?}"
    );
    assert_eq!(
        t.int("SELECT count(*) FROM outbox WHERE ordering_key = 'a'")
            .await,
        4
    );

    // b's head comes at its eta, then the rest of b, in order.
    let mut later = meanwhile;
    if later.get("b").map_or(0, Vec::len) < 4 {
        let more = consume_and_ack(
            &broker.conn,
            &steps,
            Until::Count(
                4 - later.get("b").map_or(0, Vec::len),
                Duration::from_secs(10),
            ),
        )
        .await;
        for (k, v) in by_key(&more) {
            later.entry(k).or_default().extend(v);
        }
    }
    assert_eq!(
        later.get("b"),
        Some(&vec![1, 2, 3, 4]),
        "b in order after its eta"
    );

    // Room for a's head: a queue with room first, then the full one goes.
    let roomy = broker.bind_queue(&["order.slow"]).await;
    broker.delete_queue(&full_queue).await;
    let a = consume_and_ack(
        &broker.conn,
        &steps,
        Until::Count(3, Duration::from_secs(10)),
    )
    .await;
    assert_eq!(
        by_key(&a).get("a"),
        Some(&vec![2, 3, 4]),
        "a follows its head, in order"
    );
    assert_eq!(
        broker.drain(&roomy, 1, Duration::from_secs(5)).await.len(),
        1
    );
    t.wait_outbox_empty("everything sent", Duration::from_secs(10))
        .await;
    let stats = relay.stop().await;
    assert!(stats.refused >= 2, "{stats:?}");
    assert_eq!(stats.parked, 0, "{stats:?}");
    broker.cleanup().await;
    t.cleanup().await;
}

/// 40 keys × 50 events, interleaved, emitted while two relays (two batches in flight each,
/// small batches so the keys straddle many of them) drain the table: every key arrives in
/// emit order, every event once.
#[actix_rt::test]
async fn two_relays_keep_every_keys_order() {
    const KEYS: u32 = 40;
    const PER_KEY: u32 = 50;
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["order.#"]).await;
    let relay_config = || {
        config(&broker.exchange)
            .with_batch_size(37)
            .with_concurrency(2)
    };
    let one = TestRelay::start(&t.db, &broker.url, relay_config());
    let two = TestRelay::start(&t.db, &broker.url, relay_config());
    for seq in 1..=PER_KEY {
        let events = (0..KEYS).map(|k| keyed("order.changed", &format!("k{k}"), seq));
        emit_many(&t.db, events).await.expect("emit many");
    }
    let total = (KEYS * PER_KEY) as usize;
    let got = consume_and_ack(
        &broker.conn,
        &queue,
        Until::Count(total, Duration::from_secs(60)),
    )
    .await;
    let keys = by_key(&got);
    assert_eq!(keys.len(), KEYS as usize);
    let want: Vec<u32> = (1..=PER_KEY).collect();
    for (key, seqs) in &keys {
        assert_eq!(seqs, &want, "key {key} out of order or incomplete");
    }
    t.wait_outbox_empty("everything sent", Duration::from_secs(10))
        .await;
    let (a, b) = (one.stop().await, two.stop().await);
    eprintln!(
        "relay_ordering: relay 1 published {} (held back {}), relay 2 published {} (held back {})",
        a.published, a.held_back, b.published, b.held_back
    );
    assert_eq!(a.published + b.published, u64::from(KEYS * PER_KEY));
    broker.cleanup().await;
    t.cleanup().await;
}
