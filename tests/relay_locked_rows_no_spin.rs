//! A due row that the claim must skip (locked by another relay, or by a transaction that has
//! not finished) does not make the relay spin: its due timer backs off instead of looking
//! again every 5 ms for as long as the lock is held.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::setup;
use common::broker::TestBroker;
use common::relay::{TestRelay, config};
use common::{TestDb, wait_for};
use sea_orm::{ConnectionTrait, TransactionTrait};

/// While another transaction holds the only due row for 2 s, the relay runs a handful of
/// claim rounds (backing off up to its 500 ms poll), not hundreds; once the lock goes, the row
/// is published.
#[actix_rt::test]
async fn locked_due_rows_do_not_spin_the_relay() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let id = actix_outbox::emit(&t.db, "user.created", &1)
        .await
        .expect("emit");
    let holder = t.db.begin().await.expect("begin");
    holder
        .execute_unprepared("SELECT id FROM outbox FOR UPDATE")
        .await
        .expect("lock the row");

    let relay = TestRelay::start(&t.db, &broker.url, config(&broker.exchange));
    let before = wait_for(
        "the relay's first rounds",
        Duration::from_secs(10),
        || async {
            let s = relay.stats().await;
            (s.rounds >= 2).then_some(s.rounds)
        },
    )
    .await;
    // The observation window: the row stays locked for 2 s whatever the relay does.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = relay.stats().await.rounds - before;
    holder.commit().await.expect("release the lock");

    let seen = broker.drain(&queue, 1, Duration::from_secs(10)).await;
    assert_eq!(
        seen.get(&id.to_string()),
        Some(&1),
        "published once the lock went"
    );
    let stats = relay.stop().await;
    assert!(
        during < 40,
        "{during} claim rounds in 2 s while the due row was locked: the relay spins ({stats:?})"
    );
    broker.cleanup().await;
    t.cleanup().await;
}
