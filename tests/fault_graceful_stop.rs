//! Fault matrix, case 8: one of two workers gets SIGTERM while its handlers are busy
//! (prefetch 50, 50–100 ms of work each).
//!
//! A graceful stop cancels the consumer, lets every handler in flight finish and acks it,
//! and gives deliveries that arrive after the cancel back to the queue unhandled. So every
//! handler that began in the stopped process also finished there, no message is handled
//! twice, and the process exits 0 well within its grace period; the other worker handles the
//! rest.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use chrono::Utc;
use common::process::{FaultRig, WorkerOptions, report, wait_for};

const BACKLOG: u64 = 6_000;
const GRACE: Duration = Duration::from_secs(10);
const IN_FLIGHT_AT_STOP: i64 = 30;

/// SIGTERM under load: drained, acked, no duplicate, exit within the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sigterm_under_load_handles_nothing_twice() {
    let mut rig = FaultRig::new("gracefulstop").await;
    let options = WorkerOptions::default()
        .with_prefetch(50)
        .with_handler_delay_ms("50-100")
        .with_grace(GRACE)
        .with_record_starts();
    rig.start_worker(&options).await;
    rig.start_worker(&options).await;
    rig.start_relay(500).await;
    let ids = rig
        .emit_backlog((0..BACKLOG).map(FaultRig::flow_event).collect())
        .await;

    let stopping = rig.workers[0].instance();
    let in_flight = wait_for(
        &format!("{stopping} busy with ≥ {IN_FLIGHT_AT_STOP} handlers after 500 handled"),
        Duration::from_secs(60),
        || async {
            let n = rig.in_flight(&stopping).await;
            (rig.done_rows().await >= 500 && n >= IN_FLIGHT_AT_STOP).then_some(n)
        },
    )
    .await;
    let term_at = Utc::now();
    let (status, took) = rig.workers[0].stop(GRACE + Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "{stopping} exited with {status} after SIGTERM"
    );
    assert!(
        took < GRACE,
        "{stopping} took {took:?} to stop: more than its {GRACE:?} grace period"
    );

    rig.wait_handled(&ids, Duration::from_secs(120)).await;
    let begun = rig.ids_of(&stopping, "start").await;
    let finished = rig.ids_of(&stopping, "done").await;
    let abandoned: Vec<_> = begun.difference(&finished).collect();
    assert!(
        abandoned.is_empty(),
        "{} handlers began in {stopping} but never finished there, e.g. {:?}",
        abandoned.len(),
        abandoned.first()
    );
    let drained = rig.finished_by_after(&stopping, term_at).await;
    assert!(
        drained > 0,
        "{stopping} finished no handler after SIGTERM: nothing was in flight?"
    );

    // The stopped worker stays stopped; `finish` checks the one still running.
    rig.workers.remove(0);
    let tally = rig.finish(&ids, &[], Duration::from_secs(120)).await.tally;
    assert_eq!(
        tally.duplicates, 0,
        "a graceful stop must not make anything be handled twice — {tally:?}"
    );
    report(
        &format!(
            "8. worker SIGTERM with {in_flight} in flight ({drained} finished during the drain)"
        ),
        &tally,
        &format!("SIGTERM → exit 0 in {took:.2?} (grace {GRACE:?})"),
    );
}
