//! Mistakes in registering handlers are typed errors at registration (or at start, for
//! topology that is missing in check-only mode), never a half-running worker.
#![cfg(feature = "service-tests")]

mod common;

use std::sync::Arc;

use actix_outbox::Error;
use actix_outbox_actors::{Listen, TopologyMode, Worker, WorkerConfig};
use common::worker::{Log, Scripted, WorkerEnv, delays, scripted};
use serde_json::Value;

#[derive(Default)]
struct WelcomeMailer;

impl actix::Actor for WelcomeMailer {
    type Context = actix::Context<Self>;
}

impl actix::Handler<actix_outbox::Event<Value>> for WelcomeMailer {
    type Result = actix_outbox::HandlerResult;
    fn handle(&mut self, _: actix_outbox::Event<Value>, _: &mut Self::Context) -> Self::Result {
        Ok(())
    }
}

fn handler() -> impl Fn() -> Scripted<Value> {
    scripted::<Value, _>(&Arc::new(Log::default()), |_| Ok(()))
}

fn field(result: Result<Worker, Error>) -> &'static str {
    match result {
        Err(Error::InvalidConfig { field, .. }) => field,
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

/// Malformed binding keys and empty key lists are refused by `Listen::new`.
#[actix_rt::test]
async fn bad_binding_keys_are_typed_errors() {
    for bad in ["user..created", "user.cre*", "", "user created", "order.#x"] {
        assert!(
            matches!(Listen::new([bad]), Err(Error::InvalidBindingKey { .. })),
            "{bad:?} should be refused"
        );
    }
    assert!(matches!(
        Listen::new(Vec::<String>::new()),
        Err(Error::InvalidConfig {
            field: "binding_keys",
            ..
        })
    ));
}

/// Two handlers on one queue name, bad queue names, zero prefetch and bad delays are
/// refused by `Worker::listen`; a bad exchange by `Worker::new`.
#[actix_rt::test]
async fn bad_registrations_are_typed_errors() {
    let env = WorkerEnv::new().await;
    let worker = || Worker::new(env.supervisor.clone(), env.config()).expect("config");
    let keys = || Listen::new(["user.*"]).expect("keys");

    let first = worker()
        .listen(keys().with_queue("mailer"), handler())
        .expect("first");
    let duplicate = first.listen(keys().with_queue("mailer"), handler());
    match duplicate {
        Err(Error::InvalidConfig {
            field: "queue",
            reason,
        }) => {
            assert!(
                reason.contains("\"mailer\" is already registered"),
                "{reason}"
            )
        }
        other => panic!("expected a duplicate queue error, got {other:?}"),
    }
    let derived = worker()
        .listen(keys(), WelcomeMailer::default)
        .expect("derived");
    assert_eq!(derived.queues().collect::<Vec<_>>(), ["welcome_mailer"]);
    assert_eq!(
        field(derived.listen(keys(), WelcomeMailer::default)),
        "queue",
        "the derived name is taken too"
    );
    assert_eq!(
        field(worker().listen(keys().with_queue("amq.mine"), handler())),
        "queue"
    );
    assert_eq!(
        field(worker().listen(keys().with_queue("has space"), handler())),
        "queue"
    );
    assert_eq!(
        field(worker().listen(keys().with_prefetch(0), handler())),
        "prefetch"
    );
    assert_eq!(
        field(worker().listen(
            keys().with_retry_delays([std::time::Duration::ZERO]),
            handler()
        )),
        "retry_delays"
    );
    assert!(matches!(
        worker().listen(keys().with_retry_delays(["soon"]), handler()),
        Err(Error::InvalidDuration { .. })
    ));
    let bad_exchange = WorkerConfig::default().with_exchange("amq.topic");
    assert!(matches!(
        Worker::new(env.supervisor.clone(), bad_exchange),
        Err(Error::InvalidConfig {
            field: "exchange",
            ..
        })
    ));
    assert!(matches!(
        worker().start().await,
        Err(Error::InvalidConfig {
            field: "listen",
            ..
        })
    ));
    env.cleanup(&delays()).await;
}

/// Check-only mode declares nothing: start fails naming the first missing object, and
/// succeeds once a declaring worker has provisioned the topology.
#[actix_rt::test]
async fn check_only_names_what_is_missing() {
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("least_privilege");
    let exchange = env.broker.exchange.clone();
    let check_only = || {
        Worker::new(
            env.supervisor.clone(),
            env.config().with_topology(TopologyMode::CheckOnly),
        )
        .expect("config")
        .listen(
            Listen::new(["user.*"])
                .expect("keys")
                .with_queue(queue.as_str()),
            handler(),
        )
        .expect("listen")
    };
    let refused = |result: Result<_, Error>| match result {
        Err(
            e @ Error::BrokerRefused {
                object: "exchange", ..
            },
        ) => e.to_string(),
        Err(other) => panic!("expected BrokerRefused, got {other}"),
        Ok(_) => panic!("check-only start should fail while topology is missing"),
    };

    let message = refused(check_only().start().await);
    assert!(
        message.contains(&format!("exchange {exchange:?}: missing")),
        "{message}"
    );

    let declaring = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            Listen::new(["user.*"])
                .expect("keys")
                .with_queue(queue.as_str()),
            handler(),
        )
        .expect("listen")
        .start()
        .await
        .expect("declaring worker starts");
    declaring.stop().await;

    let running = check_only().start().await.expect("topology exists now");
    env.finish(running, &delays()).await;
}
