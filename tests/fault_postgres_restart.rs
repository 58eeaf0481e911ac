//! Fault matrix, case 5: the PostgreSQL server is restarted (`pg_ctlcluster … restart`)
//! while events flow at about 1,000 a second, one per transaction.
//!
//! The emitter retries its own failed transactions (with the same message id), so every
//! event whose commit succeeded must be handled. The relay's claims and deletes fail while
//! the database is down and it recovers by itself; the worker's handlers keep retrying their
//! records before acking. Duplicates: batches the relay had published but could not delete
//! (≤ 2 × batch) and commits that failed on the client after succeeding on the server (≤ one
//! per emitter task).
#![cfg(feature = "service-tests")]

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::process::{FaultRig, WorkerOptions, report, restart_postgres};

const RATE: u32 = 1_000;
const TASKS: u32 = 16;
const BATCH: u32 = 500;

/// Every committed event is handled across a database restart; the relay recovers alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_during_flow_loses_no_committed_event() {
    let mut rig = FaultRig::new("pgrestart").await;
    rig.start_worker(&WorkerOptions::default().with_prefetch(100))
        .await;
    rig.start_relay(BATCH).await;
    let flow_start = Utc::now();
    let emitter = rig.start_emitter(RATE, TASKS);
    rig.wait_recovered(flow_start, Duration::from_secs(60))
        .await;
    // Let the flow run before the fault (pacing, not synchronisation).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let restarting = Instant::now();
    restart_postgres(&rig.services.database_url).await;
    let back = Utc::now();
    let down_for = restarting.elapsed();
    let caught_up = rig.wait_recovered(back, Duration::from_secs(90)).await;
    // More flow after the recovery (pacing).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let emitted = emitter.stop().await;
    assert!(
        emitted.failed_attempts > 0,
        "the restart should have failed some emits"
    );
    let resumed = rig
        .resumed_after(back)
        .await
        .expect("handling resumed after the restart");
    rig.assert_all_running();
    assert_eq!(rig.relays[0].generation(), 1, "the relay was not restarted");

    let tally = rig
        .finish(&emitted.committed, &[], Duration::from_secs(180))
        .await
        .tally;
    let bound = 2 * BATCH as usize + TASKS as usize;
    assert!(
        tally.duplicates <= bound,
        "{} duplicates: more than {bound} (2 relay batches + one ambiguous commit per emitter task) — {tally:?}",
        tally.duplicates
    );
    report(
        &format!(
            "5. PostgreSQL restart at {:.0} msg/s ({} emits retried, restart took {down_for:.1?})",
            emitted.rate, emitted.failed_attempts
        ),
        &tally,
        &format!("restart done → handling resumed {resumed:.2?}, → caught up {caught_up:.2?}"),
    );
}
