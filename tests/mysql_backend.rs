//! The MySQL/MariaDB backend against a real MariaDB server (`MYSQL_URL`): `setup`, `emit` and
//! `emit_many` in the application's transaction, and relays that claim with `SKIP LOCKED`,
//! wake by polling, and delete, keep, record refusals and park by the database's UTC clock.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::{Outbox, OutboxEvent, Parked, emit, setup};
use actix_outbox_actors::Cleanup;
use common::broker::{TestBroker, assert_exactly_once};
use common::relay::{TestRelay, config};
use common::{TestDb, wait_for};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

async fn index_names(t: &TestDb) -> Vec<String> {
    let rows =
        t.db.query_all_raw(Statement::from_string(
            DbBackend::MySql,
            "SELECT DISTINCT index_name AS name FROM information_schema.statistics \
             WHERE table_schema = DATABASE() AND table_name = 'outbox'",
        ))
        .await
        .expect("index query");
    let mut names: Vec<String> = rows
        .iter()
        .map(|r| r.try_get::<String>("", "name").expect("name"))
        .collect();
    names.sort();
    names
}

/// `setup` creates the table with its four indexes, runs again as a no-op, and puts back an
/// index someone dropped.
#[actix_rt::test]
async fn setup_gets_or_creates_and_restores_a_dropped_index() {
    let t = TestDb::mysql().await;
    setup(&t.db).await.expect("setup");
    setup(&t.db).await.expect("setup again");
    let all = [
        "PRIMARY",
        "outbox_due_idx",
        "outbox_key_idx",
        "outbox_parked_idx",
        "outbox_sent_idx",
    ];
    assert_eq!(index_names(&t).await, all);
    t.db.execute_unprepared("ALTER TABLE outbox DROP INDEX outbox_key_idx")
        .await
        .expect("drop index");
    assert!(!index_names(&t).await.contains(&"outbox_key_idx".to_owned()));
    setup(&t.db).await.expect("setup after the drop");
    assert_eq!(index_names(&t).await, all, "the dropped index is back");
    t.cleanup().await;
}

/// A table of the same name that is not an outbox is reported, not altered.
#[actix_rt::test]
async fn a_foreign_table_is_a_schema_mismatch() {
    let t = TestDb::mysql().await;
    t.db.execute_unprepared("CREATE TABLE outbox (id BIGINT PRIMARY KEY, note TEXT)")
        .await
        .expect("foreign table");
    let err = setup(&t.db).await.expect_err("not an outbox table");
    assert!(
        matches!(err, actix_outbox::Error::SchemaMismatch { .. }),
        "{err}"
    );
    t.cleanup().await;
}

/// `emit` commits and rolls back with the caller's transaction; the row's times come from the
/// database's UTC clock, and its message id reads back as written.
#[actix_rt::test]
async fn emit_follows_the_transaction_and_the_utc_clock() {
    let t = TestDb::mysql().await;
    setup(&t.db).await.expect("setup");
    let txn = t.db.begin().await.expect("begin");
    emit(&txn, "user.created", &serde_json::json!({"id": 1}))
        .await
        .expect("emit");
    txn.rollback().await.expect("rollback");
    assert_eq!(t.int("SELECT count(*) FROM outbox").await, 0, "rolled back");

    let txn = t.db.begin().await.expect("begin");
    let id = emit(&txn, "user.created", &serde_json::json!({"id": 2}))
        .await
        .expect("emit");
    txn.commit().await.expect("commit");
    let found = t
        .int(&format!(
            "SELECT count(*) FROM outbox WHERE message_id = UNHEX('{}')",
            id.simple()
        ))
        .await;
    assert_eq!(found, 1, "the message id is the UUID's 16 bytes");
    let skew = t
        .int(
            "SELECT ABS(TIMESTAMPDIFF(SECOND, send_after, UTC_TIMESTAMP(6))) \
             + ABS(TIMESTAMPDIFF(SECOND, created_at, UTC_TIMESTAMP(6))) FROM outbox",
        )
        .await;
    assert!(
        skew <= 5,
        "times are UTC by the database clock: {skew} s off"
    );
    t.cleanup().await;
}

/// `emit_many` splits payloads that together exceed the server's packet limit into several
/// statements; one event bigger than the limit fails with the server's error, and the
/// transaction it was in writes nothing.
#[actix_rt::test]
async fn emit_many_stays_under_the_packet_limit() {
    let t = TestDb::mysql().await;
    setup(&t.db).await.expect("setup");
    let packet =
        usize::try_from(t.int("SELECT CAST(@@max_allowed_packet AS SIGNED)").await).expect("size");
    let each = 3 << 20;
    let n = packet / each + 3;
    let events: Vec<OutboxEvent> = (0..n)
        .map(|i| OutboxEvent::bytes("blob.stored", vec![i as u8; each]).expect("event"))
        .collect();
    let txn = t.db.begin().await.expect("begin");
    let ids = actix_outbox::emit_many(&txn, events)
        .await
        .expect("payloads beyond one packet are split");
    txn.commit().await.expect("commit");
    assert_eq!(ids.len(), n);
    assert_eq!(
        t.int("SELECT count(*) FROM outbox").await,
        i64::try_from(n).expect("n")
    );

    let txn = t.db.begin().await.expect("begin");
    let small = OutboxEvent::json("blob.note", &1).expect("event");
    let huge = OutboxEvent::bytes("blob.stored", vec![1_u8; packet + (1 << 20)]).expect("event");
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        actix_outbox::emit_many(&txn, [small, huge]),
    )
    .await
    .expect("the server answers an oversized statement within 30 s")
    .expect_err("bigger than max_allowed_packet");
    assert!(matches!(err, actix_outbox::Error::Db(_)), "{err}");
    drop(txn);
    assert_eq!(
        t.int("SELECT count(*) FROM outbox").await,
        i64::try_from(n).expect("n"),
        "nothing of the failed transaction was written"
    );
    t.cleanup().await;
}

/// A relay on MariaDB, woken by its poll: 2,000 rows arrive exactly once and are deleted; a
/// row with an eta stays until the database clock reaches it.
#[actix_rt::test]
async fn a_relay_drains_exactly_once_and_waits_for_etas() {
    let t = TestDb::mysql().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["user.*"]).await;
    let later = OutboxEvent::json("user.reminded", &0)
        .expect("event")
        .with_delay(Duration::from_secs(5));
    let txn = t.db.begin().await.expect("begin");
    let later_id = actix_outbox::emit_event(&txn, later).await.expect("emit");
    txn.commit().await.expect("commit");
    let ids = t.emit_backlog(2_000, "user.created").await;

    // The test config sets a 500 ms poll; the MySQL default (250 ms) is tested below.
    let relay = TestRelay::start(&t.db, &broker.url, config(&broker.exchange));
    let seen = broker.drain(&queue, 2_000, Duration::from_secs(60)).await;
    assert_exactly_once(&seen, &ids);
    // The last batch's rows are deleted after its confirms: the count can lag the queue.
    let left = wait_for(
        "the drained rows deleted",
        Duration::from_secs(3),
        || async {
            let n = t.int("SELECT count(*) FROM outbox").await;
            (n <= 1).then_some(n)
        },
    )
    .await;
    assert_eq!(left, 1, "the eta row is still waiting");
    let last = broker.drain(&queue, 1, Duration::from_secs(15)).await;
    assert_exactly_once(&last, &[later_id]);
    t.wait_outbox_empty("the outbox table to be empty", Duration::from_secs(10))
        .await;
    let stats = relay.stop().await;
    assert_eq!(stats.published, 2_001, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    broker.cleanup().await;
    t.cleanup().await;
}

/// Two relays on one MariaDB database share 10,000 rows: each published some, none twice.
/// Their deletes once deadlocked (each reached for the row after its own range, held by the
/// other batch), and the victim's rows went out twice: the stats show no failed batch.
#[actix_rt::test]
async fn two_relays_share_a_backlog_with_skip_locked() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_ansi(false)
        .try_init();
    let t = TestDb::mysql().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let ids = t.emit_backlog(10_000, "bulk.item").await;
    let relays: Vec<TestRelay> = (0..2)
        .map(|_| {
            TestRelay::start(
                &t.db,
                &broker.url,
                config(&broker.exchange).with_batch_size(200),
            )
        })
        .collect();
    let seen = broker.drain(&queue, 10_000, Duration::from_secs(90)).await;
    assert_exactly_once(&seen, &ids);
    t.wait_outbox_empty("the outbox table to be empty", Duration::from_secs(10))
        .await;
    let mut shares = Vec::new();
    for relay in relays {
        let stats = relay.stop().await;
        assert_eq!(stats.errors, 0, "no failed batch: {stats:?}");
        shares.push(stats.published);
    }
    assert_eq!(shares.iter().sum::<u64>(), 10_000, "{shares:?}");
    assert!(
        shares.iter().all(|&n| n > 0),
        "both relays worked: {shares:?}"
    );
    assert!(
        broker
            .collect_for(&queue, Duration::from_millis(300))
            .await
            .is_empty(),
        "nothing more arrived"
    );
    broker.cleanup().await;
    t.cleanup().await;
}

/// Without a poll interval of its own a MySQL relay polls every 250 ms (no NOTIFY there):
/// an event committed while the relay is idle goes out within a second.
#[actix_rt::test]
async fn an_idle_relay_picks_up_a_new_row_by_its_default_poll() {
    let t = TestDb::mysql().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        actix_outbox_actors::RelayConfig::default().with_exchange(&broker.exchange),
    );
    // Let it find the table empty first (a bounded wait on its counters).
    wait_for(
        "the relay's first empty round",
        Duration::from_secs(10),
        || async { (relay.stats().await.rounds > 0).then_some(()) },
    )
    .await;
    let ids = t.emit_backlog(1, "user.created").await;
    let seen = broker.drain(&queue, 1, Duration::from_secs(3)).await;
    assert_exactly_once(&seen, &ids);
    relay.stop().await;
    broker.cleanup().await;
    t.cleanup().await;
}

/// Keep mode marks sent rows by the database clock and purges them after their retention; a
/// row the broker cannot take is charged, parked, listed, and sent once retried with a limit
/// that lets it through.
#[actix_rt::test]
async fn keep_mode_purges_and_refused_rows_are_parked() {
    let t = TestDb::mysql().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let small = t.emit_backlog(20, "doc.saved").await;
    let big = OutboxEvent::bytes("doc.saved", vec![9_u8; 8_192]).expect("event");
    let txn = t.db.begin().await.expect("begin");
    let big_id = actix_outbox::emit_event(&txn, big).await.expect("emit big");
    txn.commit().await.expect("commit");

    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange)
            .with_max_message_bytes(4_096)
            .with_cleanup(Cleanup::Keep {
                retention: Duration::from_secs(1),
            }),
    );
    let seen = broker.drain(&queue, 20, Duration::from_secs(30)).await;
    assert_exactly_once(&seen, &small);
    let outbox = Outbox::default();
    let parked = wait_for("the big row parked", Duration::from_secs(15), || async {
        let rows = outbox.parked(&t.db, 10, None).await.expect("parked rows");
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].message_id, big_id);
    wait_for(
        "sent rows purged after 1 s",
        Duration::from_secs(20),
        || async {
            (t.int("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL")
                .await
                == 0)
                .then_some(())
        },
    )
    .await;
    let status = actix_outbox_actors::admin::table_status(&t.db, &Default::default())
        .await
        .expect("status");
    assert_eq!(
        (status.due, status.parked, status.kept),
        (0, 1, 0),
        "{status:?}"
    );
    relay.stop().await;

    assert_eq!(
        outbox
            .retry_parked(&t.db, &Parked::All)
            .await
            .expect("retry"),
        1
    );
    let relay = TestRelay::start(&t.db, &broker.url, config(&broker.exchange));
    let last = broker.drain(&queue, 1, Duration::from_secs(15)).await;
    assert_exactly_once(&last, &[big_id]);
    relay.stop().await;
    broker.cleanup().await;
    t.cleanup().await;
}
