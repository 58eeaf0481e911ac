//! Fault matrix, case 7b: an event whose handler panics on **every** attempt ends alone in
//! the dead-letter queue; the events that were in the dying actor's mailbox with it are not
//! charged for its crash.
//!
//! When a handler actor dies with several events sent to it, the consumer cannot tell which
//! one killed it: they all go back to the queue uncharged, and the next deliveries go to the
//! fresh actor one at a time ("probation"), so the next crash names its event, which alone is
//! charged an attempt. (Found by the fault matrix: before, every bystander was charged and
//! retried in lockstep with the poison event until all of them were dead-lettered.)
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::OutboxEvent;
use common::process::{FaultRig, WorkerOptions, report};
use uuid::Uuid;

const EVENTS: u64 = 2_000;

fn poisoned(n: u64) -> bool {
    n % 100 == 13
}

/// Only the always-panicking events end in the dead-letter queue; every other is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_panicking_events_dead_letter_alone() {
    let mut rig = FaultRig::new("lockstep").await;
    rig.start_worker(&WorkerOptions::default().with_prefetch(50))
        .await;
    rig.start_relay(500).await;
    let events = (0..EVENTS).map(|n| {
        let panic = poisoned(n).then_some("always");
        OutboxEvent::json(
            "fault.poison",
            &serde_json::json!({ "n": n, "panic": panic }),
        )
        .expect("valid event")
    });
    let ids = rig.emit_backlog(events.collect()).await;
    let split = |bad: bool| -> Vec<Uuid> {
        (0..EVENTS)
            .zip(&ids)
            .filter(|(n, _)| poisoned(*n) == bad)
            .map(|(_, id)| *id)
            .collect()
    };
    let (good, bad) = (split(false), split(true));

    let finish = rig.finish(&good, &bad, Duration::from_secs(30)).await;
    report(
        "7b. 1 % handler panics on every attempt",
        &finish.tally,
        &format!("{} in DLQ as expected", bad.len()),
    );
}
