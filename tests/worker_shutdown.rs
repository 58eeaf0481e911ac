//! Graceful shutdown: stop taking deliveries, let handlers in flight finish within the grace
//! period, ack them, close.
#![cfg(feature = "service-tests")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_outbox::{Event, HandlerResult};
use actix_outbox_actors::{Listen, Worker};
use common::wait_for;
use common::worker::{WorkerEnv, delays};
use serde_json::Value;

/// Counts handlers that started and finished.
#[derive(Default)]
struct Progress {
    started: AtomicUsize,
    finished: AtomicUsize,
}

/// A handler that takes `work` per event, asynchronously (so ten run at once).
struct Slow {
    progress: Arc<Progress>,
    work: Duration,
}

impl Actor for Slow {
    type Context = Context<Self>;
}

impl Handler<Event<Value>> for Slow {
    type Result = ResponseFuture<HandlerResult>;

    fn handle(&mut self, _: Event<Value>, _: &mut Context<Self>) -> Self::Result {
        let (progress, work) = (self.progress.clone(), self.work);
        progress.started.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(work).await;
            progress.finished.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

/// Starts a worker whose handler takes `work`, publishes ten events and waits until all ten
/// are in flight.
async fn ten_in_flight(
    work: Duration,
    grace: Duration,
) -> (
    WorkerEnv,
    actix_outbox_actors::RunningWorker,
    String,
    Arc<Progress>,
) {
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("slow");
    let progress = Arc::new(Progress::default());
    let shared = progress.clone();
    let running = Worker::new(
        env.supervisor.clone(),
        env.config().with_grace_period(grace),
    )
    .expect("config")
    .listen(
        Listen::new(["report.#"])
            .expect("keys")
            .with_queue(queue.as_str())
            .with_prefetch(10),
        move || Slow {
            progress: shared.clone(),
            work,
        },
    )
    .expect("listen")
    .start()
    .await
    .expect("worker starts");
    for n in 0..10 {
        env.publish("report.build", format!(r#"{{"n":{n}}}"#).as_bytes())
            .await;
    }
    wait_for(
        "ten handlers in flight",
        Duration::from_secs(10),
        || async { (progress.started.load(Ordering::SeqCst) == 10).then_some(()) },
    )
    .await;
    (env, running, queue, progress)
}

/// Ten slow handlers in flight when `stop` is called: all ten finish and are acked, none is
/// redelivered, and `stop` returns well within the grace period.
#[actix_rt::test]
async fn in_flight_handlers_finish_and_are_acked() {
    let grace = Duration::from_secs(10);
    let (env, running, queue, progress) = ten_in_flight(Duration::from_millis(1_500), grace).await;
    let stopping = Instant::now();
    running.stop().await;
    let took = stopping.elapsed();
    assert_eq!(
        progress.finished.load(Ordering::SeqCst),
        10,
        "all ten finished"
    );
    assert!(took < grace, "stopped within the grace period: {took:?}");
    assert_eq!(
        env.broker.depth(&queue).await,
        0,
        "all ten acked: nothing went back"
    );
    // Observe a bounded window: nothing is redelivered from the queue.
    let again = env
        .broker
        .collect_for(&queue, Duration::from_millis(500))
        .await;
    assert!(again.is_empty(), "{} messages redelivered", again.len());
    assert_eq!(
        progress.started.load(Ordering::SeqCst),
        10,
        "no handler ran twice"
    );
    env.cleanup(&delays()).await;
}

/// Handlers slower than the grace period: `stop` returns once the grace period is over and
/// their messages go back to the queue (redelivered later, never lost).
#[actix_rt::test]
async fn grace_period_bounds_the_stop() {
    let grace = Duration::from_millis(500);
    let (env, running, queue, progress) = ten_in_flight(Duration::from_secs(30), grace).await;
    let stopping = Instant::now();
    running.stop().await;
    let took = stopping.elapsed();
    assert!(
        took >= grace && took < grace + Duration::from_secs(5),
        "took {took:?}"
    );
    assert_eq!(progress.finished.load(Ordering::SeqCst), 0);
    wait_for(
        "the ten messages back in the queue",
        Duration::from_secs(10),
        || async { (env.broker.depth(&queue).await == 10).then_some(()) },
    )
    .await;
    env.cleanup(&delays()).await;
}
