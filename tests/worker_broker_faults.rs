//! The worker survives the broker going away while messages flow: connections force-closed,
//! the broker stopped and started. Consumers get consuming again by themselves and nothing
//! is lost (at-least-once: duplicates allowed, gaps not).
//!
//! These tests disturb every connection to the broker, so they take turns on one lock, live
//! in their own test binary, and treat their own test connections as disposable.
#![cfg(feature = "service-tests")]

mod common;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_outbox::{Event, HandlerResult};
use actix_outbox_actors::{GetBrokerState, Listen, Worker};
use common::faults::{outage, rabbitmqctl};
use common::wait_for;
use common::worker::{WorkerEnv, delays};
use serde_json::Value;
use uuid::Uuid;

/// Serialises the tests of this file.
static FAULTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every delivery a handler saw (ids may repeat: delivery is at-least-once).
#[derive(Default)]
struct Seen(std::sync::Mutex<Vec<Uuid>>);

impl Seen {
    fn count(&self) -> usize {
        self.0.lock().expect("lock").len()
    }

    fn distinct(&self) -> HashSet<Uuid> {
        self.0.lock().expect("lock").iter().copied().collect()
    }
}

/// A handler that takes 15 ms per event (asynchronously), so messages are still flowing when
/// the fault hits.
struct Steady(Arc<Seen>);

impl Actor for Steady {
    type Context = Context<Self>;
}

impl Handler<Event<Value>> for Steady {
    type Result = ResponseFuture<HandlerResult>;

    fn handle(&mut self, event: Event<Value>, _: &mut Context<Self>) -> Self::Result {
        let seen = self.0.clone();
        Box::pin(async move {
            // With the default prefetch of 10, at most ~670 events/s: the 1,500 after the
            // first 500 take over 2 s, several times what `rabbitmqctl` needs to strike.
            tokio::time::sleep(Duration::from_millis(15)).await;
            seen.0.lock().expect("lock").push(event.message_id());
            Ok(())
        })
    }
}

/// Publishes `total` messages, waits until 500 were handled, injects `fault`, then checks
/// that every id was handled and the consumer resumed by itself.
async fn consume_through<F, Fut>(total: usize, fault: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("faults");
    let seen = Arc::new(Seen::default());
    let shared = seen.clone();
    let running = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            Listen::new(["load.#"])
                .expect("keys")
                .with_queue(queue.as_str()),
            move || Steady(shared.clone()),
        )
        .expect("listen")
        .start()
        .await
        .expect("worker starts");

    let ids = env.publish_many("load.item", total).await;
    wait_for("the first 500 handled", Duration::from_secs(60), || async {
        (seen.count() >= 500).then_some(())
    })
    .await;
    // Measured just before the fault: ids still unhandled then were in the queue or in
    // flight when it hit.
    let handled_before = seen.distinct().len();
    fault().await;

    let expected: HashSet<_> = ids.into_iter().collect();
    wait_for(
        "every distinct id handled",
        Duration::from_secs(120),
        || async { (seen.distinct() == expected).then_some(()) },
    )
    .await;
    let stats = wait_for(
        "the consumer to consume again",
        Duration::from_secs(30),
        || async {
            running
                .queue_stats(&queue)
                .await
                .filter(|s| s.consuming && s.reconnects >= 1)
        },
    )
    .await;
    let broker = env
        .supervisor
        .send(GetBrokerState)
        .await
        .expect("supervisor");
    assert!(
        broker.generation >= 2,
        "the supervisor reconnected: {broker:?}"
    );
    assert!(
        handled_before < total,
        "the fault hit while messages flowed: {handled_before} of {total} handled before it"
    );
    let after: usize = total - handled_before;
    assert!(after > 0, "ids were handled after the fault");
    eprintln!(
        "fault survived: {total} ids, 0 lost, {} duplicates; {stats:?}",
        seen.count() - total
    );
    env.finish(running, &delays()).await;
}

/// 5,000 messages; `rabbitmqctl close_all_connections` after the first 500 were handled.
#[actix_rt::test]
async fn force_closed_connections_lose_nothing() {
    let _turn = FAULTS.lock().await;
    consume_through(5_000, || async {
        rabbitmqctl(&["close_all_connections", "actix-outbox worker fault test"]).await;
    })
    .await;
}

/// 2,000 messages; the broker stopped for ~3 s and started again after the first 500: the
/// durable queue keeps the rest, the consumer declares its topology again and drains it.
#[actix_rt::test]
async fn broker_restart_loses_nothing() {
    let _turn = FAULTS.lock().await;
    consume_through(2_000, || async {
        rabbitmqctl(&["stop_app"]).await;
        outage(Duration::from_secs(3)).await;
        rabbitmqctl(&["start_app"]).await;
        rabbitmqctl(&["await_startup"]).await;
    })
    .await;
}
