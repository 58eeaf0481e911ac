//! NOTIFY wakes the relay at once when an emitting transaction commits, and only the relays
//! of the schema that committed (every test's table is called `outbox`, each in a schema of
//! its own, as two applications sharing a database would have it).
#![cfg(feature = "service-tests")]

mod common;

use std::time::{Duration, Instant};

use actix_outbox::setup;
use common::broker::TestBroker;
use common::faults::{TcpProxy, host_port};
use common::relay::{TestRelay, config};
use common::{TestDb, require_env};
use sea_orm::{ConnectionTrait, TransactionTrait};

/// With a 60 s poll, an event emitted after a business row in the same transaction reaches
/// the queue in well under a second: the commit's NOTIFY wakes the relay.
#[actix_rt::test]
async fn notify_wakes_the_relay_on_commit() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    t.db.execute_unprepared("CREATE TABLE users (id BIGINT PRIMARY KEY)")
        .await
        .expect("business table");
    let (broker, queue, relay) = listening_relay(&t).await;
    for round in 0..3 {
        let txn = t.db.begin().await.expect("begin");
        txn.execute_unprepared(&format!("INSERT INTO users VALUES ({round})"))
            .await
            .expect("business row first");
        actix_outbox::emit(&txn, "user.created", &round)
            .await
            .expect("emit");
        let committed = Instant::now();
        txn.commit().await.expect("commit");
        broker.drain(&queue, 1, Duration::from_secs(5)).await;
        let latency = committed.elapsed();
        assert!(
            latency < Duration::from_millis(900),
            "round {round}: commit → queue took {latency:?} (NOTIFY did not wake the relay)"
        );
    }
    relay.stop().await;
    broker.cleanup().await;
    t.cleanup().await;
}

/// Commits in another schema's `outbox` do not wake this schema's relay. Before the NOTIFY
/// channel was schema-qualified, each of them cost the relay a claim round.
#[actix_rt::test]
async fn notifications_stay_in_their_schema() {
    let here = TestDb::postgres().await;
    let there = TestDb::postgres().await;
    setup(&here.db).await.expect("setup here");
    setup(&there.db).await.expect("setup there");
    let (broker, queue, relay) = listening_relay(&here).await;
    let before = relay.stats().await.rounds;
    for n in 0..10 {
        actix_outbox::emit(&there.db, "user.created", &n)
            .await
            .expect("emit there");
        // Apart, so that each notification would reach an idle relay and cost a round.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Notifications reach a listener in commit order: once this one is handled, every
    // notification from the other schema that could reach the relay has.
    actix_outbox::emit(&here.db, "user.created", &99)
        .await
        .expect("emit here");
    broker.drain(&queue, 1, Duration::from_secs(5)).await;
    let rounds = relay.stats().await.rounds - before;
    let stats = relay.stop().await;
    // This row costs a round and a follow-up look; the warm-up can leave up to three more
    // behind `before` on a loaded machine (its last follow-up, and a wake that arrived while a
    // batch ran: a CI run once counted 4). Each of the ten commits over there, 20 ms apart,
    // would add one more if their notifications reached this relay.
    assert!(
        rounds <= 5,
        "{rounds} claim rounds for one row: commits in the other schema woke the relay ({stats:?})"
    );
    assert_eq!(
        there.int("SELECT count(*) FROM outbox").await,
        10,
        "the other schema's rows are not this relay's"
    );
    broker.cleanup().await;
    here.cleanup().await;
    there.cleanup().await;
}

/// When the LISTEN connection is lost and sqlx re-establishes it by itself (the connection
/// reset, the server reachable again at once), the relay is woken to look for rows whose
/// notifications fell into the gap. Before, sqlx's `recv` reconnected silently, and such rows
/// waited for the 60 s poll.
#[actix_rt::test]
async fn a_lost_listen_connection_wakes_the_relay_when_back() {
    let proxy = TcpProxy::start(host_port(&require_env("DATABASE_URL"))).await;
    let t = TestDb::postgres_at(|url| proxy.rewrite(url)).await;
    setup(&t.db).await.expect("setup");
    let (broker, _queue, relay) = listening_relay(&t).await;
    let before = relay.stats().await;
    // Reset every connection, the LISTEN one included, and accept new ones at once.
    proxy.cut();
    proxy.restore();
    let woken = common::wait_for(
        "the relay to be woken after the LISTEN connection came back",
        Duration::from_secs(10),
        || async {
            let now = relay.stats().await;
            (now.rounds + now.errors > before.rounds + before.errors).then_some(now)
        },
    )
    .await;
    eprintln!("woken after the reset: {woken:?}");
    relay.stop().await;
    broker.cleanup().await;
    t.cleanup().await;
}

/// A broker with a queue bound to `#`, and a relay on `t` with a 60 s poll whose NOTIFY
/// wake-ups are shown to work: three rows emitted one after the other each reached the queue
/// (with that poll, only a NOTIFY brings them out in the 5 s allowed).
async fn listening_relay(t: &TestDb) -> (TestBroker, String, TestRelay) {
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange).with_poll_interval(Duration::from_secs(60)),
    );
    common::wait_for(
        "the relay's first claim round",
        Duration::from_secs(10),
        || async { (relay.stats().await.rounds >= 1).then_some(()) },
    )
    .await;
    for n in 0..3 {
        actix_outbox::emit(&t.db, "user.created", &n)
            .await
            .expect("emit");
        broker.drain(&queue, 1, Duration::from_secs(5)).await;
    }
    (broker, queue, relay)
}
