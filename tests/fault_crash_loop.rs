//! Fault matrix, case 7c: an event that kills the whole worker process (`abort`) on every
//! delivery. Nothing settles it, so only a count of unsettled deliveries can end it: the
//! broker's `x-delivery-count` on quorum queues, and on classic queues (which keep none) the
//! consumer's own `x-outbox-redeliveries`, carried by publishing each redelivered message back
//! to its queue. At `max_redeliveries` the event is dead-lettered without being handled; every
//! other event is handled. Before, on a classic queue, the process died for ever.
#![cfg(feature = "service-tests")]

mod common;

use std::time::{Duration, Instant};

use actix_outbox::OutboxEvent;
use common::process::{FaultRig, WorkerOptions, report};

const EVENTS: u64 = 40;
const LIMIT: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killing_event_is_dead_lettered_on_a_quorum_queue() {
    crash_loop("crash_loop_quorum", "quorum").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killing_event_is_dead_lettered_on_a_classic_queue() {
    crash_loop("crash_loop_classic", "classic").await;
}

async fn crash_loop(case: &str, queue_type: &'static str) {
    let mut rig = FaultRig::new(case).await;
    // Prefetch 1: no bystander is in flight when the process dies, so only the poison
    // event's count grows.
    let options = WorkerOptions::default()
        .with_prefetch(1)
        .with_queue_type(queue_type)
        .with_max_redeliveries(LIMIT);
    rig.start_worker(&options).await;
    rig.start_relay(100).await;
    let mut events: Vec<OutboxEvent> = (0..EVENTS).map(FaultRig::flow_event).collect();
    let poison = serde_json::json!({ "n": EVENTS, "panic": "abort" });
    events.insert(
        EVENTS as usize / 2,
        OutboxEvent::json("fault.flow", &poison).expect("valid event"),
    );
    let mut ids = rig.emit_backlog(events).await;
    let poison_id = ids.remove(EVENTS as usize / 2);

    // Restart the worker after each death until the poison event is dead-lettered.
    let dlq = rig.names.dlq();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut deaths = 0;
    while rig.depth(&dlq).await.unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "[{case}] after {deaths} deaths the event still loops (no dead letter in 90 s)"
        );
        assert!(
            deaths <= LIMIT + 2,
            "[{case}] the worker died {deaths} times: the redelivery limit {LIMIT} did not hold"
        );
        if !rig.workers[0].is_running() {
            deaths += 1;
            // Not waiting for "ready": the poison event may kill it before it logs that.
            rig.workers[0].restart();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        deaths, LIMIT,
        "[{case}] one death per delivery up to the limit, then the dead letter"
    );
    let finish = rig
        .finish(&ids, &[poison_id], Duration::from_secs(60))
        .await;
    let reason = finish.dead_letters[0].reason.clone();
    assert!(
        reason.starts_with(&format!("redelivered {LIMIT} times")),
        "[{case}] {reason}"
    );
    report(
        &format!("7c. an event aborting the worker process ({queue_type} queue)"),
        &finish.tally,
        &format!("{deaths} deaths, then dead-lettered: {reason}"),
    );
}
