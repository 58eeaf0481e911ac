//! Fault matrix, case 2: the worker **process** is SIGKILLed while about 50 handlers are in
//! flight (prefetch 50, 50–100 ms of work each) and started again.
//!
//! The broker still holds every unacked delivery of the dead connection and redelivers it:
//! nothing is lost, and each handler that had begun in the killed process (it wrote a
//! `start` record but no `done`) is handled by the restarted one. A delivery whose `done`
//! record was written just before the kill but whose ack never left is handled twice: at
//! most one per unacked delivery, so at most `prefetch` duplicates.
#![cfg(feature = "service-tests")]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use common::process::{FaultRig, WorkerOptions, report, wait_for};

const BACKLOG: u64 = 4_000;
const PREFETCH: u16 = 50;
/// Kill once at least this many handlers of the first process are between their `start`
/// and `done` records.
const IN_FLIGHT_AT_KILL: i64 = 40;

/// The handlers in flight in the killed worker are redelivered to its successor; none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_with_handlers_in_flight_loses_nothing() {
    let mut rig = FaultRig::new("workerkill").await;
    let options = WorkerOptions::default()
        .with_prefetch(PREFETCH)
        .with_handler_delay_ms("50-100")
        .with_record_starts();
    rig.start_worker(&options).await;
    rig.start_relay(500).await;
    let ids = rig
        .emit_backlog((0..BACKLOG).map(FaultRig::flow_event).collect())
        .await;

    let first = rig.workers[0].instance();
    let in_flight = wait_for(
        &format!("500 handled and ≥ {IN_FLIGHT_AT_KILL} handlers in flight"),
        Duration::from_secs(60),
        || async {
            let n = rig.in_flight(&first).await;
            (rig.done_rows().await >= 500 && n >= IN_FLIGHT_AT_KILL).then_some(n)
        },
    )
    .await;
    rig.workers[0].kill();
    let killed_at = Utc::now();
    rig.restart_worker(0).await;
    let second = rig.workers[0].instance();
    rig.wait_handled(&ids, Duration::from_secs(120)).await;

    let begun = rig.ids_of(&first, "start").await;
    let finished = rig.ids_of(&first, "done").await;
    let interrupted: HashSet<_> = begun.difference(&finished).copied().collect();
    assert!(
        interrupted.len() >= IN_FLIGHT_AT_KILL as usize / 2,
        "only {} handlers were interrupted by the kill (≥ {IN_FLIGHT_AT_KILL} were in flight just before)",
        interrupted.len()
    );
    let redone = rig.ids_of(&second, "done").await;
    let missing: Vec<_> = interrupted.difference(&redone).collect();
    assert!(
        missing.is_empty(),
        "{} of {} interrupted messages were not redelivered to {second}, e.g. {:?}",
        missing.len(),
        interrupted.len(),
        missing.first()
    );
    let resumed = rig
        .resumed_after(killed_at)
        .await
        .expect("the restarted worker handled something");

    let tally = rig.finish(&ids, &[], Duration::from_secs(120)).await.tally;
    assert!(
        tally.duplicates <= usize::from(PREFETCH),
        "{} duplicates: more than the {PREFETCH} deliveries a worker can hold unacked — {tally:?}",
        tally.duplicates
    );
    report(
        &format!(
            "2. worker SIGKILL, {in_flight} in flight ({} interrupted, all redelivered)",
            interrupted.len()
        ),
        &tally,
        &format!("kill → handling again {resumed:.2?} (incl. process start)"),
    );
}
