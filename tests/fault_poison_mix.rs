//! Fault matrix, case 7: poison in the flow. Of 5,000 events, 1 % carry a payload that is
//! not JSON (content type `application/json`) and 1 % make the handler actor panic on their
//! first attempt.
//!
//! Every good event is handled; each panic costs the handler actor (the consumer starts a
//! fresh one from the factory) and the event is handled on a later attempt; the undecodable
//! events end up in `dlq_<queue>` — exactly those, with their reason — and the relay and
//! worker processes keep running throughout. (Events that panic on *every* attempt:
//! `fault_poison_lockstep.rs`.)
#![cfg(feature = "service-tests")]

mod common;

use std::time::Duration;

use actix_outbox::OutboxEvent;
use common::process::{FaultRig, WorkerOptions, report};
use uuid::Uuid;

const EVENTS: u64 = 5_000;

/// What event `n` of the mix is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Good,
    Undecodable,
    PanicOnce,
}

fn kind(n: u64) -> Kind {
    match n % 100 {
        7 => Kind::Undecodable,
        13 => Kind::PanicOnce,
        _ => Kind::Good,
    }
}

fn event(n: u64) -> OutboxEvent {
    let json = |panic: Option<&str>| {
        let payload = serde_json::json!({ "n": n, "panic": panic });
        OutboxEvent::json("fault.poison", &payload).expect("valid event")
    };
    match kind(n) {
        Kind::Good => json(None),
        Kind::PanicOnce => json(Some("once")),
        Kind::Undecodable => OutboxEvent::bytes("fault.poison", format!("{{\"n\": {n}, oops"))
            .expect("valid event")
            .with_content_type("application/json"),
    }
}

/// Good events are all handled, poison ones all dead-lettered, and no process dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_mix_dead_letters_exactly_the_bad_events() {
    let mut rig = FaultRig::new("poison").await;
    rig.start_worker(&WorkerOptions::default().with_prefetch(50))
        .await;
    rig.start_relay(500).await;
    let kinds: Vec<Kind> = (0..EVENTS).map(kind).collect();
    let ids = rig.emit_backlog((0..EVENTS).map(event).collect()).await;
    let of = |k: Kind| -> Vec<Uuid> {
        ids.iter()
            .zip(&kinds)
            .filter(|(_, kind)| **kind == k)
            .map(|(id, _)| *id)
            .collect()
    };
    let (undecodable, once, good) = (of(Kind::Undecodable), of(Kind::PanicOnce), of(Kind::Good));
    assert_eq!((undecodable.len(), once.len()), (50, 50));
    let handled: Vec<Uuid> = ids
        .iter()
        .zip(&kinds)
        .filter(|(_, k)| matches!(k, Kind::Good | Kind::PanicOnce))
        .map(|(id, _)| *id)
        .collect();

    // Checked before `finish`, which drops the ledger: every panicking event was retried
    // and handled later by a fresh actor.
    rig.wait_handled(&handled, Duration::from_secs(120)).await;
    let attempts = rig.attempts_of(&once).await;
    assert!(
        attempts.len() == once.len() && attempts.iter().all(|a| *a >= 2),
        "each panicking event should be handled once, on attempt 2 or later: {attempts:?}"
    );
    // Every panicking event panics at least once. It may panic again while it is not yet known
    // to be the culprit (displaced with others, it goes back to the queue uncharged, still on
    // attempt 1) — until it panics alone and is charged.
    let panics = rig.workers[0].count_in_logs("injected panic");
    assert!(
        panics >= once.len(),
        "{panics} injected panics in the worker log for {} panicking events",
        once.len()
    );
    // The good events that were in a dying actor's mailbox are given back uncharged: none of
    // them is retried because of another event's panic.
    let collateral = rig
        .attempts_of(&good)
        .await
        .iter()
        .filter(|a| **a > 1)
        .count();
    assert_eq!(
        collateral, 0,
        "good events charged an attempt for another event's panic"
    );
    rig.assert_all_running();

    let finish = rig
        .finish(&handled, &undecodable, Duration::from_secs(120))
        .await;
    for letter in &finish.dead_letters {
        assert!(
            letter.reason.starts_with("undecodable payload"),
            "dead letter {} should say why: {:?}",
            letter.id,
            letter.reason
        );
    }
    assert_eq!(
        finish.tally.duplicates, 0,
        "nothing was killed: no duplicates"
    );
    report(
        "7. poison: 1 % undecodable, 1 % handler panics (first attempt)",
        &finish.tally,
        &format!(
            "{} in DLQ as expected; {panics} panics, 0 good events charged; processes up",
            undecodable.len()
        ),
    );
}
