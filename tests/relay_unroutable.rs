//! A routing key nobody is bound to is never silently lost.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::setup;
use actix_outbox_actors::Unroutable;
use common::broker::TestBroker;
use common::relay::{TestRelay, config};
use common::{TestDb, wait_for};

/// Default mode: the unroutable message lands in `<exchange>.unroutable` (alternate
/// exchange), the routable one in its queue, the table ends empty and the relay reports the
/// waiting message.
#[actix_rt::test]
async fn unroutable_messages_are_kept_in_the_alternate_queue() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["user.created"]).await;
    let lost = actix_outbox::emit(&t.db, "nobody.listens", &1)
        .await
        .expect("emit");
    let routed = actix_outbox::emit(&t.db, "user.created", &2)
        .await
        .expect("emit");

    let relay = TestRelay::start(&t.db, &broker.url, config(&broker.exchange));
    broker
        .drain_exactly(&queue, &[routed], Duration::from_secs(10))
        .await;
    let unroutable = format!("{}.unroutable", broker.exchange);
    broker
        .drain_exactly(&unroutable, &[lost], Duration::from_secs(10))
        .await;
    t.wait_outbox_empty("the outbox table to be empty", Duration::from_secs(10))
        .await;
    let stats = relay.stop().await;
    assert_eq!(stats.published, 2, "{stats:?}");
    assert_eq!(stats.refused, 0, "{stats:?}");
    broker.cleanup().await;
    t.cleanup().await;
}

/// The relay counts what waits in `<exchange>.unroutable` and warns when it grows.
#[actix_rt::test]
async fn relay_reports_the_unroutable_queue_depth() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let broker = TestBroker::new().await;
    for i in 0..3 {
        actix_outbox::emit(&t.db, "nobody.listens", &i)
            .await
            .expect("emit");
    }
    let relay = TestRelay::start(&t.db, &broker.url, config(&broker.exchange));
    wait_for(
        "the relay to see 3 unroutable messages",
        Duration::from_secs(15),
        || async { (relay.stats().await.unroutable_queued == 3).then_some(()) },
    )
    .await;
    relay.stop().await;
    broker.cleanup().await;
    t.cleanup().await;
}

/// An unroutable store declared by an earlier version (a classic queue; the store is now a
/// quorum queue, and RabbitMQ refuses to redeclare a queue as another type) is used as it is:
/// the relay starts without a failed batch and keeps the unroutable messages there.
#[actix_rt::test]
async fn a_classic_store_of_an_earlier_version_is_kept() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let broker = TestBroker::new().await;
    let store = format!("{}.unroutable", broker.exchange);
    let durable = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    broker
        .channel
        .queue_declare(
            store.as_str().into(),
            durable,
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("declare the store the old way");
    for i in 0..3 {
        actix_outbox::emit(&t.db, "nobody.listens", &i)
            .await
            .expect("emit");
    }
    let relay = TestRelay::start(&t.db, &broker.url, config(&broker.exchange));
    t.wait_outbox_empty("the rows sent", Duration::from_secs(15))
        .await;
    assert_eq!(broker.depth(&store).await, 3, "kept in the classic store");
    let stats = relay.stop().await;
    assert_eq!((stats.published, stats.errors), (3, 0), "{stats:?}");
    broker.cleanup().await;
    t.cleanup().await;
}

/// Fire-and-forget mode: the broker returns the message, the relay counts it as dropped and
/// deletes the row; routable messages are unaffected.
#[actix_rt::test]
async fn drop_mode_counts_dropped_messages() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange).with_unroutable(Unroutable::Drop),
    );
    // The relay declares the exchange (without an alternate exchange); bind once it exists.
    wait_for(
        "the relay to declare its exchange",
        Duration::from_secs(10),
        || async { (relay.stats().await.rounds >= 1).then_some(()) },
    )
    .await;
    let queue = broker.bind_queue(&["user.created"]).await;
    actix_outbox::emit(&t.db, "nobody.listens", &1)
        .await
        .expect("emit");
    let routed = actix_outbox::emit(&t.db, "user.created", &2)
        .await
        .expect("emit");
    broker
        .drain_exactly(&queue, &[routed], Duration::from_secs(10))
        .await;
    wait_for(
        "the dropped message to be counted",
        Duration::from_secs(10),
        || async { (relay.stats().await.unroutable_dropped == 1).then_some(()) },
    )
    .await;
    t.wait_outbox_empty("the outbox table to be empty", Duration::from_secs(10))
        .await;
    let stats = relay.stop().await;
    assert_eq!(
        stats.published, 1,
        "only the routable one counts as published: {stats:?}"
    );
    broker.cleanup().await;
    t.cleanup().await;
}
