//! A channel the broker closes is that channel's business: the supervisor keeps the
//! connection (and every other channel on it).
#![cfg(feature = "service-tests")]
#![allow(missing_docs)]

mod common;

use std::time::{Duration, Instant};

use actix_outbox_actors::lapin::options::QueueDeclareOptions;
use actix_outbox_actors::lapin::types::FieldTable;
use actix_outbox_actors::{
    BrokerConfig, ConnectionSupervisor, GetBrokerState, GetChannel, StopBroker,
};
use common::{require_env, unique};

/// Three passive declares of a missing queue (404, each closing its channel) and a declare
/// with mismatched arguments (406): the connection stays generation 1 throughout, and a
/// channel opened before them still works. (lapin reports channel closes among its
/// connection events; the supervisor used to take each for a lost connection, and every
/// consumer of the process lost its channel with it.)
#[actix_rt::test]
async fn a_closed_channel_leaves_the_connection_alone() {
    let config = BrokerConfig::new(require_env("AMQP_URL")).expect("url");
    let broker = ConnectionSupervisor::start_supervised(config).expect("supervisor");
    let survivor = broker
        .send(GetChannel)
        .await
        .expect("mailbox")
        .expect("channel");
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let missing = unique("no_such_queue");
    for _ in 0..3 {
        let channel = broker
            .send(GetChannel)
            .await
            .expect("mailbox")
            .expect("channel");
        let refused = channel
            .queue_declare(missing.as_str().into(), passive, FieldTable::default())
            .await;
        assert!(refused.is_err(), "404 for a missing queue");
    }
    let queue = unique("chan_err");
    survivor
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let mut other = FieldTable::default();
    other.insert("x-max-length".into(), 5i64.into());
    let channel = broker
        .send(GetChannel)
        .await
        .expect("mailbox")
        .expect("channel");
    let mismatch = channel
        .queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), other)
        .await;
    assert!(mismatch.is_err(), "406 for other arguments");

    // The loss report would arrive asynchronously: watch for a second.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let state = broker.send(GetBrokerState).await.expect("mailbox");
        assert!(
            state.connected && state.generation == 1,
            "the connection was dropped: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    survivor
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .expect("the channel opened before still works");
    let _ = broker.send(StopBroker).await;
}
