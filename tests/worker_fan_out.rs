//! One event, two handlers bound to the same key in different queues: each handles it once.
//! End to end: emitted in a PostgreSQL transaction and published by the relay.
#![cfg(feature = "service-tests")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix_outbox::Event;
use actix_outbox_actors::{Listen, Worker};
use common::TestDb;
use common::relay::{TestRelay, config};
use common::worker::{Log, WorkerEnv, delays, scripted, wait_stats};
use sea_orm::TransactionTrait;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct UserCreated {
    id: u64,
    username: String,
}

/// The mailer and the audit log each get the relay's `user.created` exactly once, typed,
/// with the routing key, message id and attempt 1.
#[actix_rt::test]
async fn each_queue_gets_its_own_copy() {
    let t = TestDb::postgres().await;
    actix_outbox::setup(&t.db).await.expect("setup");
    let mut env = WorkerEnv::new().await;
    let (mailer_q, audit_q) = (env.queue("mailer"), env.queue("audit"));
    let mailer = Arc::new(Log::default());
    let audit = Arc::new(Log::default());
    let check = |e: &Event<UserCreated>| {
        assert_eq!(e.payload().username, "johndoe");
        Ok(())
    };
    let running = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            Listen::new(["user.created"])
                .expect("keys")
                .with_queue(mailer_q.as_str()),
            scripted(&mailer, check),
        )
        .expect("mailer")
        .listen(
            Listen::new(["user.*"])
                .expect("keys")
                .with_queue(audit_q.as_str()),
            scripted(&audit, check),
        )
        .expect("audit")
        .start()
        .await
        .expect("worker starts");

    let txn = t.db.begin().await.expect("begin");
    let user = UserCreated {
        id: 123,
        username: "johndoe".into(),
    };
    let id = actix_outbox::emit(&txn, "user.created", &user)
        .await
        .expect("emit");
    txn.commit().await.expect("commit");
    let relay = TestRelay::start(&t.db, &env.broker.url, config(&env.broker.exchange));

    for (log, queue) in [(&mailer, &mailer_q), (&audit, &audit_q)] {
        log.wait_count("the event in each queue", 1, Duration::from_secs(15))
            .await;
        wait_stats(&running, queue, "the handled event to be acked", |s| {
            s.handled == 1
        })
        .await;
    }
    // Observe a bounded window: no second copy may arrive in either queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for log in [&mailer, &audit] {
        let seen = log.all();
        assert_eq!(seen.len(), 1, "handled once: {seen:?}");
        assert_eq!(
            (seen[0].id, seen[0].key.as_str(), seen[0].attempt),
            (id, "user.created", 1)
        );
    }
    relay.stop().await;
    env.finish(running, &delays()).await;
    t.cleanup().await;
}
