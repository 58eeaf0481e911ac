//! A handler that never answers does not pin its delivery for ever: past the listener's
//! handler timeout the delivery is a failed attempt (retried by the tiers), and the queue
//! keeps flowing meanwhile.
#![cfg(feature = "service-tests")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_outbox::{Event, HandlerResult};
use actix_outbox_actors::{Listen, Worker};
use common::wait_for;
use common::worker::{WorkerEnv, delays, wait_stats};
use serde_json::Value;
use uuid::Uuid;

/// What the handler saw: (message id, attempt).
type Seen = Arc<Mutex<Vec<(Uuid, u32)>>>;

/// Answers at once, except on the first attempt of an event whose payload says `hang`: that
/// answer never comes (an awaited call that hangs).
struct Hanger {
    seen: Seen,
}

impl Actor for Hanger {
    type Context = Context<Self>;
}

impl Handler<Event<Value>> for Hanger {
    type Result = ResponseFuture<HandlerResult>;

    fn handle(&mut self, event: Event<Value>, _: &mut Context<Self>) -> Self::Result {
        let attempt = event.attempt();
        self.seen
            .lock()
            .expect("seen lock")
            .push((event.message_id(), attempt));
        if event.payload()["hang"] == true && attempt == 1 {
            Box::pin(std::future::pending())
        } else {
            Box::pin(async { Ok(()) })
        }
    }
}

/// With a 300 ms handler timeout, the hung first attempt counts as a failure and is retried
/// (handled on attempt 2); an event published after it is handled while it hangs.
#[actix_rt::test]
async fn a_hung_handler_times_out_into_a_retry() {
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("hanging");
    let seen: Seen = Arc::default();
    let factory_seen = seen.clone();
    let running = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            Listen::new(["job.#"])
                .expect("keys")
                .with_queue(queue.as_str())
                .with_handler_timeout(Duration::from_millis(300)),
            move || Hanger {
                seen: factory_seen.clone(),
            },
        )
        .expect("listen")
        .start()
        .await
        .expect("worker starts");

    let hung = env.publish("job.run", br#"{"hang":true}"#).await;
    wait_for(
        "the first attempt to start",
        Duration::from_secs(10),
        || async {
            seen.lock()
                .expect("seen lock")
                .iter()
                .any(|(id, _)| *id == hung)
                .then_some(())
        },
    )
    .await;
    let next = env.publish("job.run", br#"{"hang":false}"#).await;
    let stats = wait_stats(&running, &queue, "both events handled", |s| s.handled == 2).await;
    assert_eq!((stats.timeouts, stats.retried), (1, 1), "{stats:?}");
    let seen = seen.lock().expect("seen lock").clone();
    let attempts = |id| {
        seen.iter()
            .filter(|(m, _)| *m == id)
            .map(|(_, a)| *a)
            .collect::<Vec<_>>()
    };
    assert_eq!(attempts(hung), [1, 2], "timed out once, then retried");
    assert_eq!(attempts(next), [1]);
    env.finish(running, &delays()).await;
}
