//! The NOTIFY trigger as a switch (`Outbox::set_notify`) and the relay's adaptive poll, the
//! wake-up for a table whose trigger is off.
#![cfg(feature = "service-tests")]

mod common;

use std::time::{Duration, Instant};

use actix_outbox::{Error, Outbox, TableName, setup};
use common::TestDb;
use common::broker::TestBroker;
use common::relay::{TestRelay, config};
use sea_orm::TransactionTrait;

/// The switch holds in the catalog: off, emitting transactions notify nobody, `setup` keeps it
/// off, and on again they do.
#[actix_rt::test]
async fn the_trigger_switch_holds_and_setup_keeps_it() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let outbox = Outbox::new(TableName::default());
    assert!(
        outbox.notify_enabled(&t.db).await.expect("state"),
        "on by default"
    );
    outbox.set_notify(&t.db, false).await.expect("off");
    assert!(!outbox.notify_enabled(&t.db).await.expect("state"));
    setup(&t.db).await.expect("setup again");
    assert!(
        !outbox.notify_enabled(&t.db).await.expect("state"),
        "setup switched the trigger back on"
    );
    assert_eq!(
        t.int("SELECT count(*) FROM pg_trigger WHERE tgname = 'outbox_notify'")
            .await,
        1,
        "one trigger, disabled, not a second one"
    );
    outbox.set_notify(&t.db, true).await.expect("on");
    assert!(outbox.notify_enabled(&t.db).await.expect("state"));
    t.cleanup().await;
}

/// Without the trigger and without adaptive polling, a relay with a 60 s poll leaves a new row
/// where it is (observed for a bounded window): the switch really stops the wake-ups. With
/// adaptive polling (5 ms doubling to 100 ms) another relay, idle long enough to have backed
/// off to its maximum, publishes a new row within a fraction of a second, and keeps doing so.
#[actix_rt::test]
async fn with_the_trigger_off_adaptive_polling_finds_new_rows() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    Outbox::new(TableName::default())
        .set_notify(&t.db, false)
        .await
        .expect("trigger off");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let slow_poll = config(&broker.exchange).with_poll_interval(Duration::from_secs(60));

    let listening = TestRelay::start(&t.db, &broker.url, slow_poll.clone());
    wait_first_round(&listening).await;
    actix_outbox::emit(&t.db, "user.created", &0)
        .await
        .expect("emit");
    // The window: NOTIFY brings a row out in a few ms (relay_notify), so 1.5 s without one
    // means no wake-up came.
    let seen = broker
        .collect_for(&queue, Duration::from_millis(1_500))
        .await;
    assert!(
        seen.is_empty(),
        "a row left the table without a NOTIFY or a poll"
    );
    listening.stop().await;

    let polling = TestRelay::start(
        &t.db,
        &broker.url,
        slow_poll
            .with_listen(false)
            .with_adaptive_poll(Duration::from_millis(5), Duration::from_millis(100)),
    );
    // The row left behind goes out at the first look.
    broker.drain(&queue, 1, Duration::from_secs(5)).await;
    for round in 1..=3 {
        // Idle for a while: the looks back off to their maximum (100 ms).
        tokio::time::sleep(Duration::from_millis(400)).await;
        let txn = t.db.begin().await.expect("begin");
        actix_outbox::emit(&txn, "user.created", &round)
            .await
            .expect("emit");
        let committed = Instant::now();
        txn.commit().await.expect("commit");
        broker.drain(&queue, 1, Duration::from_secs(5)).await;
        let took = committed.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "round {round}: commit → queue took {took:?}; an idle adaptive poll looks every 100 ms"
        );
    }
    let stats = polling.stop().await;
    assert_eq!(stats.published, 4, "{stats:?}");
    assert_eq!(t.int("SELECT count(*) FROM outbox").await, 0);
    broker.cleanup().await;
    t.cleanup().await;
}

/// SQLite has no NOTIFY: the switch says so instead of pretending, and a table without the
/// trigger is reported as not set up.
#[actix_rt::test]
async fn the_switch_refuses_what_it_cannot_do() {
    let lite = TestDb::sqlite().await;
    setup(&lite.db).await.expect("setup");
    let outbox = Outbox::new(TableName::default());
    match outbox.set_notify(&lite.db, false).await {
        Err(Error::InvalidConfig { field, reason }) => {
            assert_eq!(field, "notify");
            assert!(reason.contains("PostgreSQL only"), "{reason}");
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    let pg = TestDb::postgres().await;
    match outbox.set_notify(&pg.db, false).await {
        Err(Error::SchemaMismatch { detail, .. }) => {
            assert!(detail.contains("run `setup` first"), "{detail}");
        }
        other => panic!("expected SchemaMismatch before setup, got {other:?}"),
    }
    lite.cleanup().await;
    pg.cleanup().await;
}

async fn wait_first_round(relay: &TestRelay) {
    common::wait_for(
        "the relay's first claim round",
        Duration::from_secs(10),
        || async { (relay.stats().await.rounds >= 1).then_some(()) },
    )
    .await;
}
