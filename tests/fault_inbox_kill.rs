//! Exactly-once effects under crashes (the inbox): the worker process dies between its
//! handler's commit and the ack — an injected abort right after the commit of one event in
//! 50 — and is SIGKILLed at other moments under load besides. Every death redelivers what
//! the process held, and a relay batch can be sent twice; the handler's effect (its `done`
//! record, written in one transaction with the inbox entry) must exist exactly once per
//! event, including for an event emitted twice with one message id.
#![cfg(feature = "service-tests")]

mod common;

use std::time::{Duration, Instant};

use actix_outbox::OutboxEvent;
use chrono::Utc;
use common::process::{FaultRig, WorkerOptions, report};
use sea_orm::ConnectionTrait;

const EVENTS: u64 = 2_000;
const EVERY: u64 = 50;
const KILLS: u32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_effect_applies_once_when_the_worker_dies_between_commit_and_ack() {
    let mut rig = FaultRig::new("inbox_kill").await;
    let inbox = format!("{}_inbox", rig.names.seen_table);
    let options = WorkerOptions::default()
        .with_prefetch(20)
        .with_handler_delay_ms("1-3")
        .with_inbox(inbox.as_str());
    rig.start_worker(&options).await;
    let mut events: Vec<OutboxEvent> = (0..EVENTS)
        .map(|n| match n % EVERY {
            7 => {
                let payload = serde_json::json!({
                    "n": n, "crash": "after_commit", "emitted_at": Utc::now().to_rfc3339()
                });
                OutboxEvent::json("fault.flow", &payload).expect("event")
            }
            _ => FaultRig::flow_event(n),
        })
        .collect();
    let twice = uuid::Uuid::now_v7();
    events.push(FaultRig::flow_event(EVENTS).with_message_id(twice));
    events.push(FaultRig::flow_event(EVENTS + 1).with_message_id(twice));
    let ids = rig.emit_backlog(events).await;
    rig.start_relay(200).await;

    // Restart the worker after each death; SIGKILL it at other moments too.
    let crashes = EVENTS / EVERY;
    let deadline = Instant::now() + Duration::from_secs(240);
    let (mut deaths, mut kills) = (0u64, 0u32);
    let mut next_kill = Instant::now() + Duration::from_millis(700);
    loop {
        let tally = rig.tally(&ids).await;
        if tally.handled == tally.emitted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "every event handled within 240 s: {tally:?} after {deaths} deaths and {kills} kills"
        );
        if !rig.workers[0].is_running() {
            deaths += 1;
            // Not waiting for "ready": the next crash event may kill it before it logs that.
            rig.workers[0].restart();
        } else if kills < KILLS && Instant::now() >= next_kill {
            kills += 1;
            rig.workers[0].restart(); // SIGKILL, then start again
            next_kill = Instant::now() + Duration::from_millis(1_500);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // At most one death per crash event (its redelivery finds the inbox entry and is not
    // applied again, so it cannot crash twice); fewer when a kill, or another crash in flight
    // beside it, ended the process after its commit first.
    assert!(
        deaths <= crashes && deaths >= crashes / 2,
        "{deaths} deaths for {crashes} crash events"
    );
    let db = rig.db.clone();
    let finish = rig.finish(&ids, &[], Duration::from_secs(60)).await;
    assert_eq!(finish.tally.lost, 0, "{:?}", finish.tally);
    assert_eq!(
        finish.tally.duplicates, 0,
        "an effect applied twice: {:?}",
        finish.tally
    );
    let _ = db
        .execute_unprepared(&format!("DROP TABLE IF EXISTS {inbox}"))
        .await;
    report(
        "18. inbox: worker aborted after commit, before ack ×40, plus 5 SIGKILLs",
        &finish.tally,
        &format!("{deaths} aborts after commit and {kills} kills; every effect exactly once"),
    );
}
