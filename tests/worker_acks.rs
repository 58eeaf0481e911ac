//! Coalesced acks: under load one `multiple` ack settles a run of handled deliveries, a
//! slow delivery does not hold the acks (and prefetch slots) of those after it, and every
//! handled message stays settled across a stop.
#![cfg(feature = "service-tests")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix::prelude::*;
use actix_outbox::{Event, HandlerError, HandlerResult};
use actix_outbox_actors::{ConsumerStats, Listen, Worker};
use common::wait_for;
use common::worker::{Log, WorkerEnv, delays, scripted, wait_stats};
use serde_json::Value;

/// Starts a worker on `queue` (keys `batch.#`, prefetch 200, acks lingering up to `linger`)
/// whose handler rejects every event whose `n` is a multiple of `reject_every` (0: none),
/// recording into `log`.
async fn start_batch_worker(
    env: &WorkerEnv,
    queue: &str,
    log: &Arc<Log>,
    reject_every: u64,
    linger: Duration,
) -> actix_outbox_actors::RunningWorker {
    Worker::new(env.supervisor.clone(), env.config().with_ack_linger(linger))
        .expect("config")
        .listen(
            Listen::new(["batch.#"])
                .expect("keys")
                .with_queue(queue)
                .with_prefetch(200),
            scripted(
                log,
                move |event: &Event<Value>| match event.payload()["n"].as_u64() {
                    Some(n) if reject_every > 0 && n % reject_every == 0 => {
                        Err(HandlerError::reject("rejected by the test"))
                    }
                    _ => Ok(()),
                },
            ),
        )
        .expect("listen")
        .start()
        .await
        .expect("worker starts")
}

/// Handles a backlog of `n` messages (one in `reject_every` rejected: a dead-letter copy,
/// then the original's ack), stops, and checks that nothing was left in the queue, nothing
/// comes back and nothing was handled twice. Returns the consumer's counters.
async fn handle_backlog(n: usize, reject_every: u64, linger: Duration) -> ConsumerStats {
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("acks");
    let log = Arc::new(Log::default());
    // The first start declares the queue; the backlog then waits for the second.
    start_batch_worker(&env, &queue, &log, reject_every, linger)
        .await
        .stop()
        .await;
    env.publish_many("batch.item", n).await;
    let running = start_batch_worker(&env, &queue, &log, reject_every, linger).await;
    let stats = wait_stats(&running, &queue, "every message settled", |s| {
        s.handled + s.dead_lettered == n as u64
    })
    .await;
    let rejected = match reject_every {
        0 => 0,
        every => n.div_ceil(every as usize),
    };
    assert_eq!(stats.dead_lettered, rejected as u64, "{stats:?}");
    running.stop().await;
    assert_eq!(env.broker.depth(&queue).await, 0, "every message acked");
    let again = env
        .broker
        .collect_for(&queue, Duration::from_millis(500))
        .await;
    assert!(again.is_empty(), "{} messages came back", again.len());
    assert_eq!(log.count(), n, "no message was handled twice");
    let dlq = format!("dlq_{queue}");
    assert_eq!(env.broker.depth(&dlq).await, rejected as u32);
    env.cleanup(&delays()).await;
    stats
}

/// 2,000 waiting messages, all handled: far fewer ack frames than messages, and after the
/// stop nothing is left in the queue or comes back. The linger is long (1 s) so that the
/// frame count follows from the batch rule (one ack per 50 handled) and not from how many
/// messages a slow machine handles within the default 2 ms.
#[actix_rt::test]
async fn a_backlog_is_acked_in_few_frames_and_stays_acked() {
    const N: usize = 2_000;
    let stats = handle_backlog(N, 0, Duration::from_secs(1)).await;
    assert!(
        stats.ack_frames >= 1 && stats.ack_frames <= (N / 4) as u64,
        "acks were not coalesced: {} frames for {N} messages",
        stats.ack_frames
    );
}

/// The same with one message in 50 rejected. Each dead-letter copy is confirmed before its
/// original may be acked, so the acks above it wait (or go one by one): whatever the frames,
/// every message is settled exactly once.
#[actix_rt::test]
async fn acks_around_dead_letter_copies_settle_every_message_once() {
    let stats = handle_backlog(2_000, 50, Duration::from_millis(2)).await;
    assert!(stats.ack_frames >= 1, "{stats:?}");
}

/// No linger: the acks go at the end of each actor turn. Nothing is lost or handled twice.
#[actix_rt::test]
async fn zero_linger_settles_every_message_once() {
    let stats = handle_backlog(2_000, 0, Duration::ZERO).await;
    assert!(stats.ack_frames >= 1, "{stats:?}");
}

/// Holds the first event it sees for `hold`, handles the others at once.
struct HoldFirst {
    seen: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
    hold: Duration,
}

impl Actor for HoldFirst {
    type Context = Context<Self>;
}

impl Handler<Event<Value>> for HoldFirst {
    type Result = ResponseFuture<HandlerResult>;

    fn handle(&mut self, _: Event<Value>, _: &mut Context<Self>) -> Self::Result {
        let first = self.seen.fetch_add(1, Ordering::SeqCst) == 0;
        let (done, hold) = (self.done.clone(), self.hold);
        Box::pin(async move {
            if first {
                tokio::time::sleep(hold).await;
            }
            done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

/// Prefetch 10 and the first delivery held for 20 s: the 49 after it are handled and acked
/// meanwhile (single acks above the held one), so the broker keeps delivering; a multiple
/// ack passing over the held delivery would have acked it unhandled, which the stop shows
/// did not happen: it goes back to the queue.
#[actix_rt::test]
async fn a_slow_delivery_does_not_hold_the_acks_after_it() {
    const N: usize = 50;
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("acks_slow");
    let (seen, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (s, d) = (seen.clone(), done.clone());
    let running = Worker::new(
        env.supervisor.clone(),
        env.config().with_grace_period(Duration::from_millis(200)),
    )
    .expect("config")
    .listen(
        Listen::new(["slow.#"])
            .expect("keys")
            .with_queue(queue.as_str())
            .with_prefetch(10),
        move || HoldFirst {
            seen: s.clone(),
            done: d.clone(),
            hold: Duration::from_secs(20),
        },
    )
    .expect("listen")
    .start()
    .await
    .expect("worker starts");
    env.publish_many("slow.item", N).await;
    wait_for(
        "the 49 messages after the held one handled (prefetch 10: only if they were acked)",
        Duration::from_secs(10),
        || async { (done.load(Ordering::SeqCst) == N - 1).then_some(()) },
    )
    .await;
    assert_eq!(seen.load(Ordering::SeqCst), N, "each message seen once");
    // The held delivery is still in the handler: stopping (grace 200 ms) gives it back.
    running.stop().await;
    wait_for(
        "the held message back in the queue, unacked",
        Duration::from_secs(10),
        || async { (env.broker.depth(&queue).await == 1).then_some(()) },
    )
    .await;
    env.cleanup(&delays()).await;
}
