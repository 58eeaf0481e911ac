//! The NOTIFY trigger as a switch (`Outbox::set_notify`) and the relay's adaptive poll, the
//! wake-up for a table whose trigger is off.
#![cfg(feature = "service-tests")]

mod common;

use std::time::{Duration, Instant};

use actix_outbox::__private::notify_channel_query;
use actix_outbox::{Error, Outbox, TableName, setup};
use actix_outbox_actors::RelayConfig;
use common::TestDb;
use common::broker::TestBroker;
use common::relay::{TestRelay, config};
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

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
        t.int("SELECT count(*) FROM pg_trigger WHERE tgname = 'outbox_notify' AND tgrelid = 'outbox'::regclass")
            .await,
        1,
        "one trigger, disabled, not a second one"
    );
    outbox.set_notify(&t.db, true).await.expect("on");
    assert!(outbox.notify_enabled(&t.db).await.expect("state"));
    t.cleanup().await;
}

/// With the trigger off, a committed emit notifies no listener (observed for a bounded
/// window); on again, the next one does. Then, with the trigger off, a relay polling
/// adaptively (5 ms doubling to 100 ms, and a 60 s poll interval) finds each new row within a
/// second, also after idling long enough to back off to its maximum.
#[actix_rt::test]
async fn with_the_trigger_off_adaptive_polling_finds_new_rows() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let outbox = Outbox::new(TableName::default());
    let row =
        t.db.query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            notify_channel_query(&TableName::default()),
        ))
        .await
        .expect("channel query")
        .expect("a row");
    let channel: String = row.try_get("", "channel").expect("the table's channel");
    let pool = t.db.get_postgres_connection_pool().clone();
    let mut listener = PgListener::connect_with(&pool).await.expect("listener");
    listener.listen(&channel).await.expect("listen");

    outbox.set_notify(&t.db, false).await.expect("trigger off");
    outbox.emit(&t.db, "user.created", &0).await.expect("emit");
    // The window: a notification arrives within milliseconds of the commit (relay_notify).
    let heard = tokio::time::timeout(Duration::from_millis(1_500), listener.recv()).await;
    assert!(heard.is_err(), "notified with the trigger off: {heard:?}");
    outbox.set_notify(&t.db, true).await.expect("trigger on");
    outbox.emit(&t.db, "user.created", &1).await.expect("emit");
    tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("no notification within 5 s with the trigger on")
        .expect("notification");
    drop(listener);

    outbox.set_notify(&t.db, false).await.expect("trigger off");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let slow_poll = config(&broker.exchange).with_poll_interval(Duration::from_secs(60));
    // The two rows emitted above go out at the first look, then each new one within a second.
    adaptive_poll_follows(&t, &broker, &queue, slow_poll, 2).await;
    assert_eq!(t.int("SELECT count(*) FROM outbox").await, 0);
    broker.cleanup().await;
    t.cleanup().await;
}

/// On MySQL/MariaDB (no NOTIFY there) adaptive polling finds new rows the same way, whatever
/// the poll interval (60 s here).
#[actix_rt::test]
async fn mysql_relays_poll_adaptively() {
    let t = TestDb::mysql().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let slow_poll = config(&broker.exchange).with_poll_interval(Duration::from_secs(60));
    adaptive_poll_follows(&t, &broker, &queue, slow_poll, 0).await;
    assert_eq!(t.int("SELECT count(*) FROM outbox").await, 0);
    broker.cleanup().await;
    t.cleanup().await;
}

/// Starts a relay with `config` plus adaptive polling (5 ms doubling to 100 ms): the
/// `waiting` rows already in the table reach `queue` at its first look; then, three times,
/// after the relay has been idle long enough to back off to its maximum, a new row reaches
/// it within a second.
async fn adaptive_poll_follows(
    t: &TestDb,
    broker: &TestBroker,
    queue: &str,
    config: RelayConfig,
    waiting: u64,
) {
    let polling = TestRelay::start(
        &t.db,
        &broker.url,
        config
            .with_listen(false)
            .with_adaptive_poll(Duration::from_millis(5), Duration::from_millis(100)),
    );
    if waiting > 0 {
        broker
            .drain(queue, waiting as usize, Duration::from_secs(5))
            .await;
    }
    for round in 1..=3 {
        // Idle for a while: the looks back off to their maximum (100 ms).
        tokio::time::sleep(Duration::from_millis(400)).await;
        let txn = t.db.begin().await.expect("begin");
        actix_outbox::emit(&txn, "user.created", &round)
            .await
            .expect("emit");
        let committed = Instant::now();
        txn.commit().await.expect("commit");
        broker.drain(queue, 1, Duration::from_secs(5)).await;
        let took = committed.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "round {round}: commit → queue took {took:?}; an idle adaptive poll looks every 100 ms"
        );
    }
    let stats = polling.stop().await;
    assert_eq!(stats.published, waiting + 3, "{stats:?}");
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
