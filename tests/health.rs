//! `health::Health` against real services: ready while everything works, not ready when the
//! backlog's oldest row waits too long, when the broker connection is closed and when the
//! database cannot be reached; not live once an actor stopped.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::setup;
use actix_outbox_actors::health::{Health, HealthReport};
use actix_outbox_actors::{BrokerConfig, ConnectionSupervisor, StopBroker};
use common::broker::TestBroker;
use common::relay::{TestRelay, config};
use common::{TestDb, wait_for};
use sea_orm::{ConnectionTrait, Database, TransactionTrait};

fn part<'a>(report: &'a HealthReport, name: &str) -> &'a actix_outbox_actors::health::PartHealth {
    report
        .parts
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no part {name} in {report:?}"))
}

#[actix_rt::test]
async fn readiness_follows_the_backlog_the_broker_and_the_database() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    broker.bind_queue(&["#"]).await;
    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange).with_poll_interval(Duration::from_millis(200)),
    );
    let spare = ConnectionSupervisor::start_supervised(
        BrokerConfig::new(broker.url.as_str()).expect("url"),
    )
    .expect("supervisor");
    let lonely = Database::connect(common::require_env("DATABASE_URL"))
        .await
        .expect("a second pool");
    let health = Health::new()
        .with_database("database", t.db.clone())
        .with_database("lonely", lonely.clone())
        .with_broker("broker", relay.broker.clone())
        .with_broker("spare", spare.clone())
        .with_relay("relay", relay.relay.clone())
        .with_max_backlog_age(Duration::from_millis(800));

    wait_for("everything ready", Duration::from_secs(10), || async {
        health.check().await.ready.then_some(())
    })
    .await;

    // A due row held by another transaction: once it waited past the bound, the relay is
    // not ready (it still answers: live).
    // Due in 300 ms, so the relay cannot claim it before the lock below is taken.
    let held = actix_outbox::OutboxEvent::json("held.row", &1)
        .expect("event")
        .with_delay(Duration::from_millis(300));
    actix_outbox::emit_event(&t.db, held).await.expect("emit");
    let holder = t.db.begin().await.expect("begin");
    holder
        .execute_unprepared("SELECT id FROM outbox FOR UPDATE")
        .await
        .expect("lock");
    let report = wait_for("the relay not ready", Duration::from_secs(10), || async {
        let r = health.check().await;
        (!part(&r, "relay").ready).then_some(r)
    })
    .await;
    assert!(report.live && !report.ready, "{report:?}");
    assert!(
        part(&report, "relay").detail.contains("backlog 1"),
        "{report:?}"
    );
    holder.commit().await.expect("release");
    wait_for("the relay ready again", Duration::from_secs(10), || async {
        part(&health.check().await, "relay").ready.then_some(())
    })
    .await;

    // A closed broker connection and a closed pool: not ready, still live.
    spare.send(StopBroker).await.expect("spare supervisor");
    lonely.close().await.expect("close the second pool");
    let report = health.check().await;
    assert!(
        !part(&report, "spare").ready && part(&report, "spare").live,
        "{report:?}"
    );
    assert!(!part(&report, "lonely").ready, "{report:?}");
    assert!(part(&report, "broker").ready && part(&report, "database").ready);
    assert!(report.live && !report.ready);

    // A stopped relay no longer answers: not live.
    let relay_addr = relay.relay.clone();
    relay.stop().await;
    let report = Health::new()
        .with_relay("relay", relay_addr)
        .with_timeout(Duration::from_millis(500))
        .check()
        .await;
    assert!(!report.live && !report.ready, "{report:?}");
    let json = serde_json::to_value(&report).expect("serializable");
    assert_eq!(json["parts"][0]["name"], "relay");
    broker.cleanup().await;
    t.cleanup().await;
}
