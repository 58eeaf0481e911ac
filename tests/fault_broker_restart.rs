//! Fault matrix, case 3: RabbitMQ is stopped and started (`stop_app`, 5 s outage,
//! `start_app`) while events flow at about 1,000 a second, one per transaction.
//!
//! Neither process is restarted: the relay keeps the events in the outbox while the broker
//! is away and publishes them once it reconnects; the worker consumes again by itself.
//! Duplicates come only from work in flight when the broker went down: batches the relay had
//! published but not deleted (≤ 2 × batch) and deliveries the worker had recorded but not
//! acked (≤ prefetch).
#![cfg(feature = "service-tests")]

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::process::{FaultRig, WorkerOptions, report, restart_broker};

const RATE: u32 = 1_000;
const BATCH: u32 = 500;
const PREFETCH: u16 = 100;

/// Every committed event is handled across a broker restart; both processes recover alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_during_flow_loses_nothing() {
    let mut rig = FaultRig::new("brokerrestart").await;
    rig.start_worker(&WorkerOptions::default().with_prefetch(PREFETCH))
        .await;
    rig.start_relay(BATCH).await;
    let flow_start = Utc::now();
    let emitter = rig.start_emitter(RATE, 16);
    rig.wait_recovered(flow_start, Duration::from_secs(60))
        .await;
    // Let the flow run before the fault (pacing, not synchronisation).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let stopped = Instant::now();
    let back = restart_broker(Duration::from_secs(5)).await;
    let down_for = stopped.elapsed();
    let caught_up = rig.wait_recovered(back, Duration::from_secs(90)).await;
    // More flow after the recovery (pacing).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let emitted = emitter.stop().await;
    let resumed = rig
        .resumed_after(back)
        .await
        .expect("handling resumed after start_app");
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
    let bound = 2 * BATCH as usize + usize::from(PREFETCH);
    assert!(
        tally.duplicates <= bound,
        "{} duplicates: more than {bound} (2 relay batches + prefetch in flight) — {tally:?}",
        tally.duplicates
    );
    report(
        &format!(
            "3. broker stop_app/start_app at {:.0} msg/s (down {down_for:.1?})",
            emitted.rate
        ),
        &tally,
        &format!("start_app → handling resumed {resumed:.2?}, → caught up {caught_up:.2?}"),
    );
}
