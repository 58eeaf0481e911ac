//! Fault matrix, case 1: the relay **process** is SIGKILLed while it holds a claimed batch
//! of a 20,000-event backlog — three times — and started again each time.
//!
//! A killed relay's claim transaction dies with its connection, so its rows unlock and the
//! next relay claims them again: nothing is lost. Rows it had published but not yet deleted
//! are published twice; that is the at-least-once price, bounded by the batches a relay has
//! in flight (concurrency 2 × batch size) per kill.
#![cfg(feature = "service-tests")]

mod common;

use std::time::{Duration, Instant};

use common::process::{FaultRig, WorkerOptions, report, wait_for};

const BACKLOG: u64 = 20_000;
const BATCH: u32 = 500;
/// The relay overlaps two claims by default: a kill can strand at most two batches that
/// were published but not deleted.
const BATCHES_IN_FLIGHT: usize = 2;
/// Kill once fewer rows than this are left (and a batch is claimed).
const KILL_BELOW: [i64; 3] = [16_000, 11_000, 6_000];

/// Every event of the backlog is handled although the relay died mid-batch three times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_mid_batch_loses_nothing() {
    let mut rig = FaultRig::new("relaykill").await;
    rig.start_worker(&WorkerOptions::default().with_prefetch(200))
        .await;
    let ids = rig
        .emit_backlog((0..BACKLOG).map(FaultRig::flow_event).collect())
        .await;
    rig.start_relay(BATCH).await;

    let mut recoveries = Vec::new();
    for below in KILL_BELOW {
        wait_for(
            &format!("the relay to hold a claimed batch with < {below} rows left"),
            Duration::from_secs(90),
            || async {
                (rig.outbox_rows().await < below && rig.relay_mid_batch().await).then_some(())
            },
        )
        .await;
        rig.relays[0].kill();
        let left = rig.outbox_rows().await;
        let restarted = Instant::now();
        rig.restart_relay(0).await;
        wait_for(
            "the restarted relay to publish and delete a batch",
            Duration::from_secs(60),
            || async { (rig.outbox_rows().await < left).then_some(()) },
        )
        .await;
        recoveries.push(restarted.elapsed());
        eprintln!(
            "killed the relay mid-batch with {left} rows left; draining again after {:?}",
            restarted.elapsed()
        );
    }
    assert_eq!(rig.relays[0].generation(), 4, "three kills, three restarts");

    let finish = rig.finish(&ids, &[], Duration::from_secs(180)).await;
    let tally = finish.tally;
    let bound = KILL_BELOW.len() * BATCHES_IN_FLIGHT * BATCH as usize;
    assert!(
        tally.duplicates <= bound,
        "{} duplicates: more than {bound} (kills × batches in flight × batch size) — {tally:?}",
        tally.duplicates
    );
    let worst = recoveries.iter().max().copied().unwrap_or_default();
    report(
        "1. relay SIGKILL mid-batch ×3, 20k backlog",
        &tally,
        &format!("restart → draining again ≤ {worst:.2?}"),
    );
}
