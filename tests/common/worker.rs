//! Worker helpers for service tests: a broker connection and supervisor per test, direct
//! publishing the way the relay publishes, a scripted handler actor that records what it saw,
//! and cleanup of everything a worker declares.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_outbox::{Event, HandlerResult, headers as h};
use actix_outbox_actors::{
    BrokerConfig, ConnectionSupervisor, ConsumerStats, RunningWorker, StopBroker, WorkerConfig,
};
use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::common::broker::{TestBroker, Until, consume_and_ack};
use crate::common::{unique, wait_for};

/// Retry delays short enough for tests.
pub const DELAYS: [&str; 2] = ["100ms", "200ms"];

/// A test's broker side: its exchange, a supervisor for the worker, a confirm-mode channel
/// for publishing, and the names to delete at the end.
pub struct WorkerEnv {
    pub broker: TestBroker,
    pub supervisor: Addr<ConnectionSupervisor>,
    conn: Connection,
    publisher: Channel,
    queues: Vec<String>,
}

impl WorkerEnv {
    /// Connects (inside an actix System) and picks a unique exchange.
    pub async fn new() -> Self {
        let broker = TestBroker::new().await;
        let config = BrokerConfig::new(broker.url.as_str())
            .expect("broker config")
            .with_reconnect(Duration::from_millis(50), Duration::from_secs(1));
        let supervisor = ConnectionSupervisor::start_supervised(config).expect("supervisor");
        let conn = Connection::connect(&broker.url, ConnectionProperties::default())
            .await
            .expect("connect to AMQP_URL");
        let publisher = conn.create_channel().await.expect("channel");
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        Self {
            broker,
            supervisor,
            conn,
            publisher,
            queues: Vec::new(),
        }
    }

    /// The worker config of a test: its exchange, 100ms/200ms delays, fast reconnects.
    pub fn config(&self) -> WorkerConfig {
        WorkerConfig::default()
            .with_exchange(self.broker.exchange.as_str())
            .with_retry_delays(DELAYS)
            .with_grace_period(Duration::from_secs(10))
            .with_channel_timeout(Duration::from_secs(10))
            .with_reconnect_backoff(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// A unique queue name, remembered (with its `dlq_`) for cleanup.
    pub fn queue(&mut self, prefix: &str) -> String {
        let queue = unique(prefix);
        self.queues.push(queue.clone());
        self.queues.push(format!("dlq_{queue}"));
        queue
    }

    /// Publishes `body` as JSON with `key`, like the relay does; returns the message id.
    pub async fn publish(&self, key: &str, body: &[u8]) -> Uuid {
        self.publish_with(key, body, Extra::default()).await
    }

    /// Publishes with a content type, a deadline or an attempt of your choice.
    pub async fn publish_with(&self, key: &str, body: &[u8], extra: Extra) -> Uuid {
        let id = Uuid::now_v7();
        let mut headers = FieldTable::default();
        headers.insert(h::ROUTING_KEY.into(), long(key));
        if let Some(deadline) = extra.deadline {
            headers.insert(h::DEADLINE.into(), long(&deadline.to_rfc3339()));
        }
        let props = BasicProperties::default()
            .with_message_id(id.to_string().into())
            .with_content_type(extra.content_type.unwrap_or("application/json").into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirm = self
            .publisher
            .basic_publish(
                self.broker.exchange.as_str().into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish");
        let confirmation = confirm.await.expect("confirm");
        assert!(confirmation.is_ack(), "broker refused the test message");
        id
    }

    /// Takes (and acks) exactly `n` messages from `queue`, failing after `timeout`.
    pub async fn take(&self, queue: &str, n: usize, timeout: Duration) -> Vec<Delivery> {
        consume_and_ack(&self.conn, queue, Until::Count(n, timeout)).await
    }

    /// Stops the worker (bounded) and the supervisor, then deletes everything declared.
    pub async fn finish(self, running: RunningWorker, delays: &[Duration]) {
        tokio::time::timeout(Duration::from_secs(30), running.stop())
            .await
            .expect("worker stops within 30 s");
        self.cleanup(delays).await;
    }

    /// Closes the supervisor's connection and deletes queues and exchanges (best effort, on a
    /// fresh connection: fault tests force-close the test's own).
    pub async fn cleanup(self, delays: &[Duration]) {
        let _ =
            tokio::time::timeout(Duration::from_secs(10), self.supervisor.send(StopBroker)).await;
        let ex = self.broker.exchange.clone();
        let mut queues = self.queues.clone();
        queues.push(format!("{ex}.unroutable"));
        let mut exchanges = vec![format!("{ex}.dlx"), format!("{ex}.unroutable"), ex.clone()];
        for d in delays {
            let name = format!("{ex}.retry.{}ms", d.as_millis());
            queues.push(name.clone());
            exchanges.push(name);
        }
        if let Ok(conn) =
            Connection::connect(&self.broker.url, ConnectionProperties::default()).await
        {
            super::process::delete_topology(conn, &queues, &exchanges).await;
        }
        super::broker::close_connection(&self.conn).await;
        self.broker.cleanup().await;
    }

    /// Publishes `n` JSON events with `key`, pipelined, then waits for every confirm.
    pub async fn publish_many(&self, key: &str, n: usize) -> Vec<Uuid> {
        let mut ids = Vec::with_capacity(n);
        let mut confirms = Vec::with_capacity(n);
        for i in 0..n {
            let id = Uuid::now_v7();
            let mut headers = FieldTable::default();
            headers.insert(h::ROUTING_KEY.into(), long(key));
            let props = BasicProperties::default()
                .with_message_id(id.to_string().into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_headers(headers);
            let body = format!(r#"{{"n":{i}}}"#);
            let confirm = self
                .publisher
                .basic_publish(
                    self.broker.exchange.as_str().into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    props,
                )
                .await
                .expect("publish");
            confirms.push(confirm);
            ids.push(id);
        }
        for confirm in confirms {
            assert!(
                confirm.await.expect("confirm").is_ack(),
                "broker refused a message"
            );
        }
        ids
    }
}

/// The test delays as durations (for cleanup).
pub fn delays() -> Vec<Duration> {
    vec![Duration::from_millis(100), Duration::from_millis(200)]
}

/// Options of a directly published test message.
#[derive(Default)]
pub struct Extra {
    pub content_type: Option<&'static str>,
    pub deadline: Option<DateTime<Utc>>,
}

/// One event a handler saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub id: Uuid,
    pub key: String,
    pub attempt: u32,
}

/// What a scripted handler saw, shared with the test.
#[derive(Default)]
pub struct Log(Mutex<Vec<Seen>>);

impl Log {
    pub fn all(&self) -> Vec<Seen> {
        self.0.lock().expect("log lock").clone()
    }

    pub fn count(&self) -> usize {
        self.0.lock().expect("log lock").len()
    }

    /// Attempts seen for `id`, in order.
    pub fn attempts(&self, id: Uuid) -> Vec<u32> {
        self.all()
            .into_iter()
            .filter(|s| s.id == id)
            .map(|s| s.attempt)
            .collect()
    }

    /// Waits until `n` events were seen.
    pub async fn wait_count(&self, what: &str, n: usize, timeout: Duration) {
        wait_for(what, timeout, || async {
            (self.count() >= n).then_some(())
        })
        .await;
    }
}

/// What a scripted handler does with an event.
pub type Behaviour<T> = Arc<dyn Fn(&Event<T>) -> HandlerResult + Send + Sync>;

/// A handler actor that records every event, then does what its behaviour says.
pub struct Scripted<T> {
    log: Arc<Log>,
    behave: Behaviour<T>,
}

impl<T: Unpin + 'static> Actor for Scripted<T> {
    type Context = Context<Self>;
}

impl<T: Unpin + 'static> Handler<Event<T>> for Scripted<T> {
    type Result = HandlerResult;

    fn handle(&mut self, event: Event<T>, _: &mut Context<Self>) -> HandlerResult {
        self.log.0.lock().expect("log lock").push(Seen {
            id: event.message_id(),
            key: event.routing_key().to_owned(),
            attempt: event.attempt(),
        });
        (self.behave)(&event)
    }
}

/// A factory of scripted handlers sharing `log` (restartable registration).
pub fn scripted<T, F>(log: &Arc<Log>, behave: F) -> impl Fn() -> Scripted<T> + use<T, F>
where
    T: DeserializeOwned + Send + Unpin + 'static,
    F: Fn(&Event<T>) -> HandlerResult + Send + Sync + 'static,
{
    let log = log.clone();
    let behave: Behaviour<T> = Arc::new(behave);
    move || Scripted {
        log: log.clone(),
        behave: behave.clone(),
    }
}

/// Reads a header of a delivery as text (or a number as text).
pub fn header(delivery: &Delivery, name: &str) -> Option<String> {
    let table = delivery.properties.headers().as_ref()?;
    match table.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongLongInt(i) => Some(i.to_string()),
        AMQPValue::LongInt(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// The message id of a delivery.
pub fn message_id(delivery: &Delivery) -> Uuid {
    let id = delivery
        .properties
        .message_id()
        .as_ref()
        .expect("message id");
    Uuid::parse_str(id.as_str()).expect("uuid message id")
}

/// Waits until `queue`'s counters satisfy `check`.
pub async fn wait_stats(
    running: &RunningWorker,
    queue: &str,
    what: &str,
    check: impl Fn(&ConsumerStats) -> bool,
) -> ConsumerStats {
    wait_for(what, Duration::from_secs(15), || async {
        running.queue_stats(queue).await.filter(|s| check(s))
    })
    .await
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}
