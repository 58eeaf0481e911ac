//! The inbox on both backends: get-or-create, first time / seen before inside the handler's
//! transaction, rollback, per-queue keys, concurrent duplicates, retention; and end to end, a
//! counter handler through a real relay and worker that applies a twice-emitted event once.
#![cfg(feature = "service-tests")]
#![allow(missing_docs)]

mod common;

use std::time::Duration;

use actix::prelude::*;
use actix_outbox::{
    Error, Event, HandlerResult, Inbox, InboxCleanup, Outbox, OutboxEvent, TableName,
};
use actix_outbox_actors::{
    BrokerConfig, ConnectionSupervisor, Listen, StopBroker, Worker, WorkerConfig,
};
use common::relay::{TestRelay, config};
use common::{TestDb, all_backends, require_env, unique, wait_for};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, TransactionTrait};
use serde_json::Value;
use uuid::Uuid;

#[actix_rt::test]
async fn first_time_once_per_queue_and_message_and_only_when_committed() {
    for t in all_backends().await {
        let inbox = Inbox::default();
        inbox.setup(&t.db).await.expect("setup");
        inbox.setup(&t.db).await.expect("setup again");
        let id = Uuid::now_v7();
        let event = Event::new("user.created", 1)
            .with_message_id(id)
            .with_queue("mailer");

        let txn = t.db.begin().await.expect("begin");
        assert!(
            inbox.first_time(&txn, &event).await.expect("insert"),
            "first delivery"
        );
        txn.rollback().await.expect("rollback");
        let txn = t.db.begin().await.expect("begin");
        assert!(
            inbox.first_time(&txn, &event).await.expect("insert"),
            "the rollback took the id with it"
        );
        txn.commit().await.expect("commit");
        let txn = t.db.begin().await.expect("begin");
        assert!(
            !inbox.first_time(&txn, &event).await.expect("insert"),
            "seen before"
        );
        txn.commit().await.expect("commit");
        let other = event.clone().with_queue("audit");
        assert!(
            inbox.first_time(&t.db, &other).await.expect("insert"),
            "another queue applies it too"
        );
        assert!(
            inbox
                .first_time_for(&t.db, "audit", Uuid::now_v7())
                .await
                .expect("insert")
        );
        assert_eq!(t.int("SELECT count(*) FROM outbox_inbox").await, 3);

        // Retention: nothing is a day old; everything is older than zero.
        assert_eq!(
            inbox
                .purge(&t.db, Duration::from_secs(86_400))
                .await
                .expect("purge"),
            0
        );
        assert_eq!(inbox.purge(&t.db, Duration::ZERO).await.expect("purge"), 3);
        t.cleanup().await;
    }
}

#[actix_rt::test]
async fn a_foreign_table_of_that_name_is_a_schema_mismatch() {
    for t in all_backends().await {
        t.db.execute_unprepared("CREATE TABLE not_an_inbox (id INTEGER)")
            .await
            .expect("create");
        let inbox = Inbox::new(TableName::new("not_an_inbox").expect("name"));
        let err = inbox.setup(&t.db).await.expect_err("not an inbox");
        assert!(matches!(err, Error::SchemaMismatch { .. }), "{err}");
        assert!(err.to_string().contains("consumer"), "{err}");
        t.cleanup().await;
    }
}

/// Two copies of one event handled at once (two workers): the second insert waits for the
/// first transaction and then finds the id, so only one applies the effect.
#[actix_rt::test]
async fn concurrent_duplicates_apply_once() {
    let t = TestDb::postgres().await;
    let inbox = Inbox::default();
    inbox.setup(&t.db).await.expect("setup");
    let id = Uuid::now_v7();
    let first = t.db.begin().await.expect("begin");
    assert!(inbox.first_time_for(&first, "q", id).await.expect("insert"));
    let (db, racer) = (t.db.clone(), inbox.clone());
    let second = actix_rt::spawn(async move {
        let txn = db.begin().await.expect("begin");
        let applied = racer.first_time_for(&txn, "q", id).await.expect("insert");
        txn.commit().await.expect("commit");
        applied
    });
    // The second waits on the first's row lock: it cannot answer before the commit.
    let early = tokio::time::timeout(Duration::from_millis(300), async {
        while !second.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        early.is_err(),
        "the second insert answered while the first was open"
    );
    first.commit().await.expect("commit");
    let applied = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("answers once the first commits")
        .expect("task");
    assert!(!applied, "the duplicate is seen as such");
    t.cleanup().await;
}

/// Counts each event once, in the same transaction as its inbox entry.
struct Counter {
    db: DatabaseConnection,
    inbox: Inbox,
}

impl Actor for Counter {
    type Context = Context<Self>;
}

impl Handler<Event<Value>> for Counter {
    type Result = ResponseFuture<HandlerResult>;

    fn handle(&mut self, event: Event<Value>, _: &mut Context<Self>) -> Self::Result {
        let (db, inbox) = (self.db.clone(), self.inbox.clone());
        Box::pin(async move {
            let txn = db.begin().await?;
            if inbox.first_time(&txn, &event).await? {
                txn.execute_unprepared("UPDATE counter SET n = n + 1")
                    .await?;
            }
            txn.commit().await?;
            Ok(())
        })
    }
}

/// Through a real relay and worker: 200 events, one of them emitted twice with the same
/// message id (two rows, two deliveries): the counter says 200, the inbox holds 200 entries
/// under the worker's queue, and the cleanup actor purges them.
#[actix_rt::test]
async fn a_twice_emitted_event_is_counted_once() {
    let t = TestDb::postgres().await;
    let (exchange, queue) = (unique("inbox_ex"), unique("inbox_q"));
    Outbox::default().setup(&t.db).await.expect("setup");
    let inbox = Inbox::default();
    inbox.setup(&t.db).await.expect("inbox");
    t.db.execute_unprepared(
        "CREATE TABLE counter (n BIGINT NOT NULL); INSERT INTO counter VALUES (0)",
    )
    .await
    .expect("counter");
    let broker = ConnectionSupervisor::start_supervised(
        BrokerConfig::new(require_env("AMQP_URL")).expect("url"),
    )
    .expect("supervisor");
    let (db, handler_inbox) = (t.db.clone(), inbox.clone());
    let running = Worker::new(
        broker.clone(),
        WorkerConfig::default()
            .with_exchange(exchange.as_str())
            .with_retry_delays(["1s"]),
    )
    .expect("config")
    .listen(
        Listen::new(["#"]).expect("key").with_queue(queue.as_str()),
        move || Counter {
            db: db.clone(),
            inbox: handler_inbox.clone(),
        },
    )
    .expect("listen")
    .start()
    .await
    .expect("worker");
    let twice = Uuid::now_v7();
    let mut events: Vec<OutboxEvent> = (0..199)
        .map(|i| OutboxEvent::json("inbox.count", &i).expect("event"))
        .collect();
    for _ in 0..2 {
        events.push(
            OutboxEvent::json("inbox.count", &"twice")
                .expect("event")
                .with_message_id(twice),
        );
    }
    Outbox::default()
        .emit_many(&t.db, events)
        .await
        .expect("emit");
    let relay = TestRelay::start(&t.db, &require_env("AMQP_URL"), config(&exchange));
    t.wait_outbox_empty("both copies sent", Duration::from_secs(20))
        .await;
    wait_for("200 inbox entries", Duration::from_secs(20), || async {
        (t.int("SELECT count(*) FROM outbox_inbox").await == 200).then_some(())
    })
    .await;
    wait_for(
        "both deliveries of the twice-emitted event settled",
        Duration::from_secs(20),
        || async {
            let stats = running.queue_stats(&queue).await?;
            (stats.handled == 201).then_some(())
        },
    )
    .await;
    assert_eq!(
        t.int("SELECT n FROM counter").await,
        200,
        "counted once each"
    );
    let keyed = format!("SELECT count(*) FROM outbox_inbox WHERE consumer = '{queue}'");
    assert_eq!(t.int(&keyed).await, 200, "keyed by the worker's queue");

    let cleanup = InboxCleanup::new(t.db.clone(), inbox, Duration::ZERO).start();
    wait_for(
        "the cleanup purges them",
        Duration::from_secs(10),
        || async { (t.int("SELECT count(*) FROM outbox_inbox").await == 0).then_some(()) },
    )
    .await;
    cleanup.do_send(StopCleanup);
    let _ = relay.stop().await;
    running.stop().await;
    let _ = broker.send(StopBroker).await;
    t.cleanup().await;
}

#[derive(Message)]
#[rtype(result = "()")]
struct StopCleanup;

impl<C: ConnectionTrait + Clone + Unpin + 'static> Handler<StopCleanup> for InboxCleanup<C> {
    type Result = ();
    fn handle(&mut self, _: StopCleanup, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// MySQL keeps the index inside its `CREATE TABLE` (MySQL 8 has no `CREATE INDEX IF NOT
/// EXISTS`), so its DDL is one statement.
#[actix_rt::test]
async fn the_mysql_inbox_is_one_statement() {
    let ddl = Inbox::default().ddl(DbBackend::MySql).expect("mysql");
    assert_eq!(ddl.len(), 1, "{ddl:?}");
    assert!(
        ddl[0].contains("INDEX outbox_inbox_received_idx (received_at)"),
        "{ddl:?}"
    );
}
