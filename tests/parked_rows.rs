//! Parked rows for operators: list them (by binding key), send them again once the cause is
//! fixed, or discard them.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::{BindingKey, Error, Outbox, Parked, TableName, setup};
use actix_outbox_actors::TopologyMode;
use common::broker::TestBroker;
use common::relay::{TestRelay, config};
use common::{TestDb, wait_for};
use lapin::ExchangeKind;
use sea_orm::ConnectionTrait;

/// Marks the rows with these routing keys parked, as the relay would.
async fn park(t: &TestDb, keys: &[&str]) {
    let list: Vec<String> = keys.iter().map(|k| format!("'{k}'")).collect();
    let now = if t.name.contains('/') {
        "'2026-01-01T00:00:00+00:00'"
    } else {
        "now()"
    };
    t.ints(&format!(
        "UPDATE outbox SET parked_at = {now}, attempts = 10, last_error = 'refused' \
         WHERE routing_key IN ({}) RETURNING id",
        list.join(",")
    ))
    .await;
}

/// On both backends: list with and without a key, discard some, retry the rest; bad input is
/// a clear error.
#[tokio::test]
async fn list_retry_and_discard() {
    for t in common::both_backends().await {
        setup(&t.db).await.expect("setup");
        let outbox = Outbox::default();
        for key in ["user.created", "user.deleted", "order.placed", "order.paid"] {
            outbox.emit(&t.db, key, &1).await.expect("emit");
        }
        park(&t, &["user.created", "user.deleted", "order.placed"]).await;

        let all = outbox.parked(&t.db, 100, None).await.expect("list");
        assert_eq!(all.len(), 3, "{} ({})", t.name, all.len());
        assert!(
            all.iter()
                .all(|r| r.attempts == 10 && r.last_error.as_deref() == Some("refused"))
        );
        let users = BindingKey::new("user.*").expect("key");
        let user_rows = outbox
            .parked(&t.db, 100, Some(&users))
            .await
            .expect("list users");
        let keys: Vec<&str> = user_rows.iter().map(|r| r.routing_key.as_str()).collect();
        assert_eq!(keys, ["user.created", "user.deleted"]);
        assert_eq!(outbox.parked(&t.db, 1, None).await.expect("limit").len(), 1);

        assert!(matches!(
            outbox.retry_parked(&t.db, &Parked::Ids(Vec::new())).await,
            Err(Error::InvalidConfig { field: "ids", .. })
        ));
        let discarded = outbox
            .discard_parked(&t.db, &Parked::Ids(vec![user_rows[1].id]))
            .await
            .expect("discard");
        assert_eq!(discarded, 1);
        // An id that is not parked (order.paid) is skipped.
        let not_parked = t
            .int("SELECT id FROM outbox WHERE routing_key = 'order.paid'")
            .await;
        let retried = outbox
            .retry_parked(&t.db, &Parked::Ids(vec![user_rows[0].id, not_parked]))
            .await
            .expect("retry");
        assert_eq!(retried, 1);
        let left = outbox.parked(&t.db, 100, None).await.expect("list");
        assert_eq!(left.len(), 1, "order.placed stays parked");
        assert_eq!(
            outbox.retry_parked(&t.db, &Parked::All).await.expect("all"),
            1
        );
        assert_eq!(
            t.int("SELECT count(*) FROM outbox WHERE parked_at IS NULL AND attempts = 0")
                .await,
            3,
            "every row left is due again with its attempts reset"
        );
        t.cleanup().await;
    }
}

/// A table that was never set up (or a misspelt name) is named as such by every parked-row
/// call, not reported as the database's "relation does not exist"; nothing is created.
#[tokio::test]
async fn a_missing_table_is_named() {
    for t in common::all_backends().await {
        let outbox = Outbox::new(TableName::new("never_set_up").expect("name"));
        let missing = |result: Result<u64, Error>, what: &str| match result {
            Err(Error::SchemaMismatch { table, detail }) => {
                assert_eq!(table, "never_set_up", "{} {what}", t.name);
                assert!(
                    detail.contains("run `setup` first"),
                    "{} {what}: {detail}",
                    t.name
                );
            }
            other => panic!("{} {what}: expected SchemaMismatch, got {other:?}", t.name),
        };
        let listed = outbox.parked(&t.db, 10, None).await;
        missing(listed.map(|rows| rows.len() as u64), "list");
        missing(outbox.retry_parked(&t.db, &Parked::All).await, "retry");
        missing(outbox.discard_parked(&t.db, &Parked::All).await, "discard");
        // A table of that name that is not an outbox table fails with the database's own
        // error (its columns are missing), not with "does not exist".
        t.db.execute_unprepared("CREATE TABLE never_set_up (x INTEGER)")
            .await
            .expect("create a foreign table");
        let foreign = outbox.parked(&t.db, 10, None).await;
        assert!(
            matches!(foreign, Err(Error::Db(_))),
            "{} {foreign:?}",
            t.name
        );
        t.db.execute_unprepared("DROP TABLE never_set_up")
            .await
            .expect("drop");
        t.cleanup().await;
    }
}

/// End to end: a row returned unroutable (no alternate exchange) is parked by the relay; once
/// a queue is bound for its key, `retry_parked` sends it, and NOTIFY wakes the relay at once
/// (its poll is 60 s).
#[actix_rt::test]
async fn a_parked_row_goes_out_once_retried() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_bare_exchange(ExchangeKind::Topic).await;
    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange)
            .with_topology(TopologyMode::CheckOnly)
            .with_max_attempts(1)
            .with_poll_interval(Duration::from_secs(60)),
    );
    let id = actix_outbox::emit(&t.db, "late.binding", &1)
        .await
        .expect("emit");
    let outbox = Outbox::default();
    let parked = wait_for("the row parked", Duration::from_secs(20), || async {
        let rows = outbox.parked(&t.db, 10, None).await.expect("list");
        (rows.len() == 1).then_some(rows)
    })
    .await;
    assert_eq!(parked[0].message_id, id);
    let queue = broker.bind_queue(&["late.*"]).await;
    assert_eq!(
        outbox
            .retry_parked(&t.db, &Parked::All)
            .await
            .expect("retry"),
        1
    );
    broker
        .drain_exactly(&queue, &[id], Duration::from_secs(10))
        .await;
    t.wait_outbox_empty("the retried row sent and deleted", Duration::from_secs(10))
        .await;
    let stats = relay.stop().await;
    assert_eq!((stats.parked, stats.published), (1, 1), "{stats:?}");
    broker.cleanup().await;
    t.cleanup().await;
}
