//! Fault matrix: a relay **process** freezes (SIGSTOP, as a hung host or a paused VM would)
//! while it holds a claimed batch. Its sockets stay open, so without a bound its claim
//! transaction would keep the batch's row locks until TCP keepalive gives up, hours later.
//! The claim lease (`RelayConfig::with_claim_lease`, PostgreSQL's
//! `idle_in_transaction_session_timeout` for the claim transaction) ends that transaction;
//! a second relay then publishes the rows, and nothing is lost.
#![cfg(feature = "service-tests")]

mod common;

use std::time::{Duration, Instant};

use common::process::{FaultRig, WorkerOptions, report, wait_for};

const BACKLOG: u64 = 6_000;
const BATCH: u32 = 500;

/// With relay 0 frozen mid-batch and a 4 s lease, relay 1 drains the whole table, the frozen
/// relay's batch included, well before TCP would have noticed anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_relay_releases_its_batch_after_the_lease() {
    let mut rig = FaultRig::new("relayfrozen").await;
    rig.start_worker(&WorkerOptions::default().with_prefetch(200))
        .await;
    let ids = rig
        .emit_backlog((0..BACKLOG).map(FaultRig::flow_event).collect())
        .await;
    let lease = [
        ("OUTBOX_CONFIRM_TIMEOUT_MS", "2000"),
        ("OUTBOX_CLAIM_LEASE_MS", "4000"),
    ];
    rig.start_relay_with(BATCH, &lease).await;
    wait_for(
        "relay 0 to hold a claimed batch",
        Duration::from_secs(60),
        || async {
            (rig.outbox_rows().await < (BACKLOG as i64 - 500) && rig.relay_mid_batch().await)
                .then_some(())
        },
    )
    .await;
    rig.relays[0].freeze();
    let frozen = Instant::now();
    let left = rig.outbox_rows().await;
    rig.start_relay(BATCH).await;
    wait_for(
        "relay 1 to drain the table while relay 0 is frozen (its batch included)",
        Duration::from_secs(60),
        || async { (rig.outbox_rows().await == 0).then_some(()) },
    )
    .await;
    let drained = frozen.elapsed();
    rig.relays[0].thaw();
    eprintln!("froze relay 0 with {left} rows left; relay 1 drained them in {drained:?}");

    let finish = rig.finish(&ids, &[], Duration::from_secs(120)).await;
    report(
        "relay SIGSTOP mid-batch (4 s claim lease), second relay takes over",
        &finish.tally,
        &format!("frozen → table drained by the other relay in {drained:.2?}"),
    );
}
