//! Binding keys with wildcards route exactly the events RabbitMQ's topic rules say.
#![cfg(feature = "service-tests")]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use actix_outbox_actors::{Listen, Worker};
use common::worker::{Log, WorkerEnv, delays, scripted};
use serde_json::Value;

/// `user.*` gets `user.created` and `user.deleted` but not `user.profile.updated`;
/// `order.#` gets `order`, `order.created` and `order.line.added` but not `user.created`.
#[actix_rt::test]
async fn star_matches_one_word_and_hash_any_number() {
    let mut env = WorkerEnv::new().await;
    let (users_q, orders_q) = (env.queue("users"), env.queue("orders"));
    let users = Arc::new(Log::default());
    let orders = Arc::new(Log::default());
    let running = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            Listen::new(["user.*"])
                .expect("keys")
                .with_queue(users_q.as_str()),
            scripted::<Value, _>(&users, |_| Ok(())),
        )
        .expect("users")
        .listen(
            Listen::new(["order.#"])
                .expect("keys")
                .with_queue(orders_q.as_str()),
            scripted::<Value, _>(&orders, |_| Ok(())),
        )
        .expect("orders")
        .start()
        .await
        .expect("worker starts");

    for key in [
        "user.created",
        "user.deleted",
        "user.profile.updated",
        "order",
        "order.created",
        "order.line.added",
        "invoice.created",
    ] {
        env.publish(key, br#"{"n":1}"#).await;
    }
    let wait = Duration::from_secs(10);
    users.wait_count("two user events", 2, wait).await;
    orders.wait_count("three order events", 3, wait).await;
    // Nothing else may arrive: observe a bounded window after the expected ones.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let keys = |log: &Log| {
        log.all()
            .into_iter()
            .map(|s| s.key)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        keys(&users),
        BTreeSet::from(["user.created".into(), "user.deleted".into()])
    );
    assert_eq!(
        keys(&orders),
        BTreeSet::from([
            "order".into(),
            "order.created".into(),
            "order.line.added".into()
        ])
    );
    assert_eq!((users.count(), orders.count()), (2, 3), "each handled once");
    env.finish(running, &delays()).await;
}
