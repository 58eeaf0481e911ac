//! Per-key order end to end, under a crash: 100 keys × 200 events go through two relay
//! processes and two worker processes running an ordered listener (4 partitions), one
//! worker is SIGKILLed mid-run and started again, and one event fails twice before it
//! succeeds. Every key's events must be handled in emit order (a redelivery after the kill
//! may repeat the event being handled, never go back further), none lost.
#![cfg(feature = "service-tests")]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_outbox::OutboxEvent;
use chrono::Utc;
use common::process::{FaultRig, WorkerOptions, report};
use sea_orm::{ConnectionTrait, Statement};

const KEYS: u64 = 100;
const PER_KEY: u64 = 200;
/// The event that fails twice before it succeeds.
const FAILING: (u64, u64) = (7, 50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_keys_events_are_handled_in_order_through_a_worker_kill() {
    let mut rig = FaultRig::new("ordered").await;
    let options = WorkerOptions::default()
        .with_partitions(4)
        .with_handler_delay_ms("0");
    rig.start_worker(&options).await;
    rig.start_worker(&options).await;
    let mut events = Vec::with_capacity((KEYS * PER_KEY) as usize);
    for seq in 1..=PER_KEY {
        for key in 0..KEYS {
            let mut payload = serde_json::json!({
                "key": key, "seq": seq, "emitted_at": Utc::now().to_rfc3339()
            });
            if (key, seq) == FAILING {
                payload["fail"] = 2.into();
            }
            events.push(
                OutboxEvent::json("fault.flow", &payload)
                    .expect("event")
                    .with_ordering_key(format!("key-{key}")),
            );
        }
    }
    let ids = rig.emit_backlog(events).await;
    rig.start_relay(200).await;
    rig.start_relay(200).await;

    let total = ids.len();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut killed = false;
    loop {
        let tally = rig.tally(&ids).await;
        if tally.handled == tally.emitted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "every event handled within 240 s: {tally:?}"
        );
        if !killed && tally.handled >= total / 3 {
            killed = true;
            rig.restart_worker(0).await; // SIGKILL mid-run, then start again
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(killed, "the kill happened before the end");

    // Handling order per key: the records in insertion order (`recorded`).
    let rows = rig
        .db
        .query_all_raw(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                "SELECT ordering_key, seq, attempt FROM {} WHERE phase = 'done' ORDER BY recorded",
                rig.names.seen_table
            ),
        ))
        .await
        .expect("read the records");
    let mut by_key: HashMap<String, Vec<i64>> = HashMap::new();
    let mut failing_attempts = Vec::new();
    for row in &rows {
        let key: String = row.try_get("", "ordering_key").expect("key");
        let seq: i64 = row.try_get("", "seq").expect("seq");
        let attempt: i32 = row.try_get("", "attempt").expect("attempt");
        if key == format!("key-{}", FAILING.0) && seq == FAILING.1 as i64 {
            failing_attempts.push(attempt);
        }
        by_key.entry(key).or_default().push(seq);
    }
    assert_eq!(by_key.len(), KEYS as usize);
    let mut repeats = 0;
    for (key, seqs) in &by_key {
        for pair in seqs.windows(2) {
            assert!(
                pair[1] >= pair[0],
                "{key} went back from {} to {}: {seqs:?}",
                pair[0],
                pair[1]
            );
            repeats += usize::from(pair[1] == pair[0]);
        }
        let mut distinct = seqs.clone();
        distinct.dedup();
        assert_eq!(
            distinct,
            (1..=PER_KEY as i64).collect::<Vec<_>>(),
            "{key}: every event once, in order"
        );
    }
    assert!(
        !failing_attempts.is_empty() && failing_attempts.iter().all(|a| *a == 3),
        "the failing event succeeded on its third attempt: {failing_attempts:?}"
    );
    let finish = rig.finish(&ids, &[], Duration::from_secs(120)).await;
    assert_eq!(finish.tally.lost, 0, "{:?}", finish.tally);
    report(
        "19. ordered listener: 100 keys × 200 events, 2 relays, 2 workers, one SIGKILLed",
        &finish.tally,
        &format!("every key in emit order; {repeats} events repeated after the kill"),
    );
}
