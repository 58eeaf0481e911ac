//! Keep mode under sustained load: sent rows are purged once past their retention even while
//! the relay never idles. The purge used to run only when the relay found nothing more to
//! do, 1,000 rows at a time, so a busy relay kept every row it sent.
#![cfg(feature = "service-tests")]

mod common;

use std::time::{Duration, Instant};

use actix_outbox::{OutboxEvent, setup};
use actix_outbox_actors::Cleanup;
use common::broker::TestBroker;
use common::relay::{TestRelay, config};
use common::{TestDb, wait_for};

/// Emitting 4,000 rows/s for 7 s, the oldest kept row is never older than the 1 s retention
/// plus one 2 s housekeeping interval (and slack): the purge keeps up. Afterwards every row
/// is purged. (Before: 1,000 rows per idle poll, 500 rows/s here, so the oldest kept row aged
/// nearly as fast as the clock.)
#[actix_rt::test]
async fn purge_keeps_up_with_a_busy_relay() {
    const PER_TICK: usize = 100;
    const TICK: Duration = Duration::from_millis(25);
    const LOAD: Duration = Duration::from_secs(7);
    let retention = Duration::from_secs(1);
    let interval = Duration::from_secs(2);
    // Retention, plus the time between housekeeping rounds, plus slack.
    let bound = retention + interval + Duration::from_secs(1);

    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut broker = TestBroker::new().await;
    broker.declare_exchange().await;
    let queue = broker.bind_queue(&["#"]).await;
    let relay = TestRelay::start(
        &t.db,
        &broker.url,
        config(&broker.exchange)
            .with_batch_size(100)
            .with_poll_interval(interval)
            .with_cleanup(Cleanup::Keep { retention }),
    );

    let started = Instant::now();
    let mut emitted = 0u64;
    let mut oldest_seen = Duration::ZERO;
    let mut samples = 0;
    let mut tick = tokio::time::interval(TICK);
    while started.elapsed() < LOAD {
        tick.tick().await;
        let events: Vec<OutboxEvent> = (0..PER_TICK)
            .map(|n| OutboxEvent::json("load.item", &n).expect("event"))
            .collect();
        actix_outbox::emit_many(&t.db, events)
            .await
            .expect("emit_many");
        emitted += PER_TICK as u64;
        // Sample once the first rows could have passed retention and a purge round.
        if started.elapsed() > bound && emitted.is_multiple_of(PER_TICK as u64 * 8) {
            let age = oldest_kept_ms(&t).await;
            oldest_seen = oldest_seen.max(Duration::from_millis(age));
            samples += 1;
        }
    }
    let sent = relay.stats().await.published;
    assert!(samples >= 5, "only {samples} samples taken under load");
    eprintln!("under load: {emitted} emitted, {sent} sent, oldest kept row {oldest_seen:?}");
    assert!(
        sent >= 5_000,
        "the relay published only {sent} of {emitted} rows under load: the load did not test \
         the purge"
    );
    assert!(
        oldest_seen <= bound,
        "under load the oldest kept row was {oldest_seen:?} old, past retention {retention:?} \
         + slack: the purge fell behind ({:?})",
        relay.stats().await
    );

    wait_for(
        "every row sent and purged after the load",
        Duration::from_secs(60),
        || async {
            let s = relay.stats().await;
            (s.published >= emitted && s.purged >= emitted).then_some(())
        },
    )
    .await;
    assert_eq!(t.int("SELECT count(*) FROM outbox").await, 0, "table empty");
    let stats = relay.stop().await;
    assert_eq!(stats.purged, emitted, "each row purged once: {stats:?}");
    assert_eq!(broker.depth(&queue).await as u64, stats.published);
    broker.cleanup().await;
    t.cleanup().await;
}

/// Age in milliseconds of the oldest row kept as sent (0 when none is).
async fn oldest_kept_ms(t: &TestDb) -> u64 {
    let ms = t
        .int(
            "SELECT COALESCE((EXTRACT(EPOCH FROM now() - min(sent_at)) * 1000)::bigint, 0) \
             FROM outbox WHERE sent_at IS NOT NULL",
        )
        .await;
    u64::try_from(ms).unwrap_or(0)
}
