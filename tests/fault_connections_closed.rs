//! Fault matrix, case 4: every broker connection is force-closed
//! (`rabbitmqctl close_all_connections`) three times while events flow, each time once the
//! flow has recovered from the previous one.
//!
//! Relay and worker reconnect by themselves. Each close can cost duplicates for the work in
//! flight (≤ 2 relay batches + prefetch), never a loss.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use chrono::Utc;
use common::process::{FaultRig, WorkerOptions, rabbitmqctl, report};

const RATE: u32 = 1_000;
const BATCH: u32 = 500;
const PREFETCH: u16 = 100;
const CLOSES: usize = 3;

/// Nothing is lost when all broker connections are closed three times during the flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_force_closed_three_times_lose_nothing() {
    let mut rig = FaultRig::new("connclosed").await;
    rig.start_worker(
        &WorkerOptions::default()
            .with_prefetch(PREFETCH)
            .with_handler_delay_ms("1-5"),
    )
    .await;
    rig.start_relay(BATCH).await;
    let flow_start = Utc::now();
    let emitter = rig.start_emitter(RATE, 16);
    rig.wait_recovered(flow_start, Duration::from_secs(60))
        .await;

    let mut recoveries = Vec::new();
    for round in 1..=CLOSES {
        // Let the flow run between faults (pacing, not synchronisation).
        tokio::time::sleep(Duration::from_secs(1)).await;
        rabbitmqctl(&["close_all_connections", "fault matrix: forced close"]).await;
        let closed = Utc::now();
        let took = rig.wait_recovered(closed, Duration::from_secs(60)).await;
        eprintln!("close {round}: flow recovered after {took:?}");
        recoveries.push(took);
    }
    let emitted = emitter.stop().await;
    rig.assert_all_running();
    assert_eq!(
        (rig.relays[0].generation(), rig.workers[0].generation()),
        (1, 1),
        "no process was restarted"
    );

    let tally = rig
        .finish(&emitted.committed, &[], Duration::from_secs(180))
        .await
        .tally;
    let bound = CLOSES * (2 * BATCH as usize + usize::from(PREFETCH));
    assert!(
        tally.duplicates <= bound,
        "{} duplicates: more than {bound} (closes × (2 batches + prefetch)) — {tally:?}",
        tally.duplicates
    );
    let shown: Vec<String> = recoveries.iter().map(|d| format!("{d:.2?}")).collect();
    report(
        &format!("4. close_all_connections ×3 at {:.0} msg/s", emitted.rate),
        &tally,
        &format!("close → caught up {}", shown.join(" / ")),
    );
}
