//! Fault matrix, case 6: four relays and three workers share one outbox table and one
//! queue while events flow; five times, one relay and one worker (a different one each
//! round) are SIGKILLed and started again.
//!
//! Relays claim disjoint batches (`SKIP LOCKED`) and workers compete for one queue, so the
//! survivors carry the flow while a process is down and the restarted one joins again.
//! Each round can cost duplicates for the killed processes' work in flight (≤ 2 relay
//! batches + one worker's prefetch), never a loss.
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use chrono::Utc;
use common::process::{FaultRig, WorkerOptions, report};

const RELAYS: usize = 4;
const WORKERS: usize = 3;
const ROUNDS: usize = 5;
const RATE: u32 = 600;
const BATCH: u32 = 200;
const PREFETCH: u16 = 50;

/// Nothing is lost while relays and workers are killed and restarted round after round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_and_workers_killed_in_turn_lose_nothing() {
    let mut rig = FaultRig::new("manyprocs").await;
    let options = WorkerOptions::default()
        .with_prefetch(PREFETCH)
        .with_handler_delay_ms("10-30");
    for _ in 0..WORKERS {
        rig.start_worker(&options).await;
    }
    for _ in 0..RELAYS {
        rig.start_relay(BATCH).await;
    }
    let flow_start = Utc::now();
    let emitter = rig.start_emitter(RATE, 16);
    rig.wait_recovered(flow_start, Duration::from_secs(60))
        .await;

    let mut recoveries = Vec::new();
    for round in 0..ROUNDS {
        // Let the flow run between rounds (pacing, not synchronisation).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (relay, worker) = (round % RELAYS, round % WORKERS);
        rig.relays[relay].kill();
        rig.workers[worker].kill();
        let killed = Utc::now();
        rig.restart_relay(relay).await;
        rig.restart_worker(worker).await;
        let took = rig.wait_recovered(killed, Duration::from_secs(60)).await;
        eprintln!(
            "round {round}: killed relay{relay} and worker{worker}; next new event handled after {took:?}"
        );
        recoveries.push(took);
    }
    let emitted = emitter.stop().await;
    rig.assert_all_running();
    rig.wait_handled(&emitted.committed, Duration::from_secs(180))
        .await;
    // The restarted workers joined the queue again: each one's current generation took a
    // share of the flow (RabbitMQ hands deliveries round-robin to the consumers).
    for worker in &rig.workers {
        let instance = worker.instance();
        let handled = rig.ids_of(&instance, "done").await.len();
        assert!(handled > 0, "{instance} handled nothing after its restart");
    }

    let tally = rig
        .finish(&emitted.committed, &[], Duration::from_secs(180))
        .await
        .tally;
    let bound = ROUNDS * (2 * BATCH as usize + usize::from(PREFETCH));
    assert!(
        tally.duplicates <= bound,
        "{} duplicates: more than {bound} (rounds × (2 batches + prefetch)) — {tally:?}",
        tally.duplicates
    );
    let worst = recoveries.iter().max().copied().unwrap_or_default();
    report(
        &format!(
            "6. 4 relays + 3 workers, one of each SIGKILLed ×{ROUNDS} at {:.0} msg/s",
            emitted.rate
        ),
        &tally,
        &format!("kill → next new event handled ≤ {worst:.2?} (survivors carry the flow)"),
    );
}
