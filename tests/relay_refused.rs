//! Rows the broker refuses are retried with backoff, then parked; others keep flowing. A
//! missing exchange (check-only mode) never loses or burns rows.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::outbox_message::{Column, Entity};
use actix_outbox::{OutboxEvent, setup};
use actix_outbox_actors::TopologyMode;
use common::broker::TestBroker;
use common::relay::{TestRelay, config};
use common::{TestDb, wait_for};
use lapin::types::{AMQPValue, FieldTable};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

/// A queue that rejects every publish (max length 0, `reject-publish`) makes the broker nack
/// rows routed to it. A nack is back-pressure, so the row is retried with backoff and never
/// parked, however many attempts; the healthy queue beside it (a fan-out: both are bound to
/// the row's key) gets a copy per attempt, duplicates at-least-once allows. Once the full
/// queue has room, the next attempt is confirmed and the row goes.
#[actix_rt::test]
async fn nacked_rows_back_off_and_are_never_parked() {
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
    let full_queue = broker.bind_queue_with(&["order.placed"], full).await;
    let healthy = broker.bind_queue(&["order.placed", "user.created"]).await;
    let nacked = actix_outbox::emit(&t.db, "order.placed", &0)
        .await
        .expect("emit");
    let mut ok = Vec::new();
    for i in 1..=5 {
        ok.push(
            actix_outbox::emit(&t.db, "user.created", &i)
                .await
                .expect("emit"),
        );
    }
    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange)
            .with_max_attempts(2)
            .with_retry_backoff(Duration::from_millis(20), Duration::from_millis(50)),
    );
    let row = wait_for(
        "the nacked row to be tried 4 times (twice max_attempts)",
        Duration::from_secs(20),
        || async {
            Entity::find()
                .filter(Column::MessageId.eq(nacked))
                .one(&t.db)
                .await
                .expect("read")
                .filter(|r| r.attempts >= 4)
        },
    )
    .await;
    assert!(row.parked_at.is_none(), "a nack never parks a row");
    let error = row.last_error.unwrap_or_default();
    assert!(error.contains("nacked"), "last_error: {error}");

    // Room for it: a queue with room is bound first, then the full one goes, so no attempt
    // can slip out between the two to the healthy queue alone (the roomy queue must get it).
    let roomy = broker.bind_queue(&["order.placed"]).await;
    broker.delete_queue(&full_queue).await;
    t.wait_outbox_empty(
        "the nacked row to go once there is room",
        Duration::from_secs(10),
    )
    .await;
    let stats = relay.stop().await;
    assert_eq!(stats.parked, 0, "{stats:?}");
    let copies = broker.drain(&roomy, 1, Duration::from_secs(5)).await;
    assert_eq!(
        copies.get(&nacked.to_string()),
        Some(&1),
        "the lagging queue got it once"
    );
    let seen = broker
        .collect_for(&healthy, Duration::from_millis(500))
        .await;
    let copies_of = |id: uuid::Uuid| {
        seen.iter()
            .filter(|d| {
                d.properties.message_id().as_ref().map(|s| s.to_string()) == Some(id.to_string())
            })
            .count()
    };
    for id in &ok {
        assert_eq!(copies_of(*id), 1, "{id}: once");
    }
    let fanned = copies_of(nacked);
    assert!(stats.refused >= 4, "{stats:?}");
    assert_eq!(
        fanned as u64,
        stats.refused + 1,
        "the healthy queue got a copy per attempt (every nack, and the confirmed one)"
    );
    broker.cleanup().await;
    t.cleanup().await;
}

/// Check-only mode with the exchange missing: the relay reports errors and backs off, the
/// row stays untouched (no attempt burnt), and once the exchange exists the row goes out.
#[actix_rt::test]
async fn missing_exchange_keeps_rows_until_it_exists() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    let id = actix_outbox::emit(&t.db, "user.created", &1)
        .await
        .expect("emit");
    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange).with_topology(TopologyMode::CheckOnly),
    );
    wait_for(
        "the relay to report the missing exchange",
        Duration::from_secs(10),
        || async { (relay.stats().await.errors >= 2).then_some(()) },
    )
    .await;
    assert_eq!(
        t.int("SELECT attempts FROM outbox").await,
        0,
        "broker-side misconfiguration does not burn attempts"
    );
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["user.created"]).await;
    broker
        .drain_exactly(&queue, &[id], Duration::from_secs(15))
        .await;
    relay.stop().await;
    broker.cleanup().await;
    t.cleanup().await;
}

/// Rows that AMQP cannot carry (a content type, or a header name inside a header value,
/// longer than 255 bytes), as another writer could leave them in the table: each is parked
/// at once with the reason, the relay's connection stays healthy and the other rows go out.
#[actix_rt::test]
async fn rows_amqp_cannot_carry_are_parked_at_once() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    for i in 1..=3 {
        actix_outbox::emit(&t.db, "user.created", &i)
            .await
            .expect("emit");
    }
    let long = "x".repeat(300);
    t.db.execute_unprepared(&format!(
        "INSERT INTO outbox (message_id, routing_key, payload, content_type) \
         VALUES (gen_random_uuid(), 'user.created', '\\x7b7d', 'text/{long}')"
    ))
    .await
    .expect("insert a row with a long content type");
    t.db.execute_unprepared(&format!(
        "INSERT INTO outbox (message_id, routing_key, payload, content_type, headers) \
         VALUES (gen_random_uuid(), 'user.created', '\\x7b7d', 'application/json', \
                 '{{\"meta\": {{\"{long}\": 1}}}}')"
    ))
    .await
    .expect("insert a row with a long nested header name");
    for i in 4..=6 {
        actix_outbox::emit(&t.db, "user.created", &i)
            .await
            .expect("emit");
    }
    let relay = TestRelay::start(&t.db, &broker.url, config(&broker.exchange));
    let seen = broker.drain(&queue, 6, Duration::from_secs(10)).await;
    assert_eq!(seen.len(), 6, "the six good rows arrive");
    let parked = wait_for(
        "both bad rows to be parked",
        Duration::from_secs(10),
        || async {
            let rows = Entity::find()
                .filter(Column::ParkedAt.is_not_null())
                .all(&t.db)
                .await
                .expect("read");
            (rows.len() == 2).then_some(rows)
        },
    )
    .await;
    for row in &parked {
        assert_eq!(row.attempts, 1, "parked on the first try");
        let error = row.last_error.clone().unwrap_or_default();
        assert!(error.contains("255 bytes"), "last_error: {error}");
    }
    let stats = relay.stop().await;
    assert_eq!(stats.errors, 0, "the connection never broke: {stats:?}");
    assert_eq!((stats.published, stats.parked), (6, 2), "{stats:?}");
    assert_eq!(broker.depth(&queue).await, 0, "nothing else arrived");
    broker.cleanup().await;
    t.cleanup().await;
}

/// A payload larger than the broker takes (`max_message_size`; here the relay is told 4 KiB)
/// is parked at once with the reason instead of being published: RabbitMQ would close the
/// channel and fail the whole batch on every try. The other rows go out.
#[actix_rt::test]
async fn payload_over_the_broker_limit_is_parked_at_once() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let small = |n: u8| OutboxEvent::bytes("blob.small", vec![n; 1_024]).expect("event");
    let big = OutboxEvent::bytes("blob.big", vec![7; 8_192]).expect("event");
    let big_id = big.message_id();
    actix_outbox::emit_many(&t.db, [small(1), big, small(2), small(3)])
        .await
        .expect("emit");
    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange).with_max_message_bytes(4_096),
    );
    let seen = broker.drain(&queue, 3, Duration::from_secs(10)).await;
    assert!(
        !seen.contains_key(&big_id.to_string()),
        "the big one stayed"
    );
    let row = wait_for(
        "the big row to be parked",
        Duration::from_secs(10),
        || async {
            Entity::find()
                .filter(Column::MessageId.eq(big_id))
                .one(&t.db)
                .await
                .expect("read")
                .filter(|r| r.parked_at.is_some())
        },
    )
    .await;
    assert_eq!(row.attempts, 1);
    let error = row.last_error.unwrap_or_default();
    assert!(
        error.contains("8192 bytes") && error.contains("4096"),
        "last_error: {error}"
    );
    let stats = relay.stop().await;
    assert_eq!(
        (stats.published, stats.parked, stats.errors),
        (3, 1, 0),
        "{stats:?}"
    );
    broker.cleanup().await;
    t.cleanup().await;
}
