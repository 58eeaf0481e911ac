//! Broker helpers for service tests: a per-test exchange, queues bound to it, and draining.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use super::{require_env, unique};

/// A test's view of the broker: its own exchange name and the queues it created.
pub struct TestBroker {
    pub url: String,
    pub exchange: String,
    pub conn: Connection,
    pub channel: Channel,
    queues: Vec<String>,
}

impl TestBroker {
    /// Connects to `AMQP_URL` and picks a unique exchange name (not declared: the relay does).
    pub async fn new() -> Self {
        let url = require_env("AMQP_URL");
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("connect to AMQP_URL");
        let channel = conn.create_channel().await.expect("channel");
        Self {
            url,
            exchange: unique("ex"),
            conn,
            channel,
            queues: Vec::new(),
        }
    }

    /// Opens a fresh connection (after a test force-closed every connection).
    pub async fn reconnect(&mut self) {
        self.conn = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .expect("reconnect to AMQP_URL");
        self.channel = self.conn.create_channel().await.expect("channel");
    }

    /// Declares the topic exchange the way the relay does (durable, alternate exchange), so
    /// queues can be bound before the relay starts.
    pub async fn declare_exchange(&self) {
        let ae = format!("{}.unroutable", self.exchange);
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.channel
            .exchange_declare(
                ae.as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await
            .expect("declare alternate exchange");
        let mut args = FieldTable::default();
        args.insert(
            "alternate-exchange".into(),
            lapin::types::AMQPValue::LongString(ae.as_str().into()),
        );
        self.channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                args,
            )
            .await
            .expect("declare exchange");
    }

    /// Declares the test exchange as a plain durable exchange of `kind`, without the
    /// alternate exchange the relay would give it.
    pub async fn declare_bare_exchange(&self, kind: ExchangeKind) {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.channel
            .exchange_declare(
                self.exchange.as_str().into(),
                kind,
                durable,
                FieldTable::default(),
            )
            .await
            .expect("declare the bare exchange");
    }

    /// Deletes `queue` (it must exist).
    pub async fn delete_queue(&self, queue: &str) {
        self.channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .unwrap_or_else(|e| panic!("delete queue {queue}: {e}"));
    }

    /// A durable queue bound to the test exchange with `keys`.
    pub async fn bind_queue(&mut self, keys: &[&str]) -> String {
        self.bind_queue_with(keys, FieldTable::default()).await
    }

    /// A durable queue with `args`, bound to the test exchange with `keys`.
    pub async fn bind_queue_with(&mut self, keys: &[&str], args: FieldTable) -> String {
        let queue = unique("q");
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(queue.as_str().into(), durable, args)
            .await
            .expect("declare queue");
        for key in keys {
            self.channel
                .queue_bind(
                    queue.as_str().into(),
                    self.exchange.as_str().into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind queue");
        }
        self.queues.push(queue.clone());
        queue
    }

    /// Remembers a queue someone else declared, for cleanup.
    pub fn track_queue(&mut self, queue: &str) {
        self.queues.push(queue.to_owned());
    }

    /// Messages ready in `queue` (a passive declare on a fresh channel).
    pub async fn depth(&self, queue: &str) -> u32 {
        let channel = self.conn.create_channel().await.expect("channel");
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("queue {queue} should exist: {e}"));
        close_channel(channel).await;
        q.message_count()
    }

    /// Consumes (and acks) until `expected` messages arrived, failing after `timeout`.
    /// Returns how many times each message id was seen.
    pub async fn drain(
        &self,
        queue: &str,
        expected: usize,
        timeout: Duration,
    ) -> HashMap<String, usize> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for id in self.drain_in_order(queue, expected, timeout).await {
            *seen.entry(id).or_default() += 1;
        }
        seen
    }

    /// As [`drain`](Self::drain), but returns the message ids in arrival order.
    pub async fn drain_in_order(
        &self,
        queue: &str,
        expected: usize,
        timeout: Duration,
    ) -> Vec<String> {
        consume_and_ack(&self.conn, queue, Until::Count(expected, timeout))
            .await
            .iter()
            .map(|d| {
                d.properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Drains `queue` until each of `expected` arrived, then watches it for another 500 ms
    /// (a bounded observation window): fails on a missing id, a duplicate or a stranger.
    pub async fn drain_exactly(&self, queue: &str, expected: &[uuid::Uuid], timeout: Duration) {
        let mut seen = self.drain(queue, expected.len(), timeout).await;
        for late in self.collect_for(queue, Duration::from_millis(500)).await {
            let id = late
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default();
            *seen.entry(id).or_default() += 1;
        }
        assert_exactly_once(&seen, expected);
    }

    /// Consumes (and acks) `queue` until each of `ids` arrived at least once, failing after
    /// `timeout`: for faults that may cost duplicates. Returns how many times each message id
    /// came (see [`duplicates`]).
    pub async fn collect_at_least_once(
        &self,
        queue: &str,
        ids: &[uuid::Uuid],
        timeout: Duration,
    ) -> HashMap<String, usize> {
        let seen = std::sync::Mutex::new(HashMap::<String, usize>::new());
        super::wait_for(
            &format!("all {} events delivered", ids.len()),
            timeout,
            || async {
                let batch = self.collect_for(queue, Duration::from_millis(300)).await;
                let mut seen = seen.lock().expect("seen lock");
                for d in batch {
                    let id = d.properties.message_id().as_ref().map(|s| s.to_string());
                    *seen.entry(id.unwrap_or_default()).or_default() += 1;
                }
                ids.iter()
                    .all(|id| seen.contains_key(&id.to_string()))
                    .then(|| seen.clone())
            },
        )
        .await
    }

    /// Consumes (and acks) every message that arrives in `queue` within `window`: for
    /// asserting that nothing (more) arrives.
    pub async fn collect_for(
        &self,
        queue: &str,
        window: Duration,
    ) -> Vec<lapin::message::Delivery> {
        consume_and_ack(&self.conn, queue, Until::Window(window)).await
    }

    /// Deletes what the test declared (best effort).
    pub async fn cleanup(self) {
        if let Ok(channel) = self.conn.create_channel().await {
            for q in &self.queues {
                let _ = channel
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let ae = format!("{}.unroutable", self.exchange);
            let _ = channel
                .queue_delete(ae.as_str().into(), QueueDeleteOptions::default())
                .await;
            for ex in [self.exchange.as_str(), ae.as_str()] {
                let _ = channel
                    .exchange_delete(ex.into(), ExchangeDeleteOptions::default())
                    .await;
            }
            close_channel(channel).await;
        }
        close_connection(&self.conn).await;
    }
}

/// The deliveries beyond the first of each message id in `seen`.
pub fn duplicates(seen: &HashMap<String, usize>) -> usize {
    seen.values().map(|n| n - 1).sum()
}

/// Asserts every id in `expected` was seen exactly once and nothing else was.
pub fn assert_exactly_once(seen: &HashMap<String, usize>, expected: &[uuid::Uuid]) {
    let dupes: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dupes.is_empty(),
        "{} message ids seen more than once, e.g. {:?}",
        dupes.len(),
        dupes.first()
    );
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !seen.contains_key(&id.to_string()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} messages missing, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    assert_eq!(seen.len(), expected.len(), "unexpected extra message ids");
}

/// Asserts every id in `expected` was seen at least once and nothing else was; returns how
/// many extra copies (duplicates) arrived, which at-least-once delivery allows after faults.
pub fn assert_none_lost(seen: &HashMap<String, usize>, expected: &[uuid::Uuid]) -> usize {
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !seen.contains_key(&id.to_string()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} messages LOST, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    assert_eq!(seen.len(), expected.len(), "unexpected extra message ids");
    seen.values().map(|n| n - 1).sum()
}

/// How long [`consume_and_ack`] goes on.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// Until this many messages arrived; fails the test when they did not within the timeout.
    Count(usize, Duration),
    /// Whatever arrives within the window (for asserting that nothing, or nothing more, comes).
    Window(Duration),
}

/// Consumes `queue` on a channel of its own and acks exactly what it returns: the one consume
/// helper of the tests.
///
/// Not auto-ack: with `no_ack` the broker forgets a message as soon as it sends it, so the
/// ones on the wire when the window closes (or beyond `Count`) would vanish unseen and a later
/// look would miss them. Here they stay unacked and go back to the queue with the channel.
pub async fn consume_and_ack(conn: &Connection, queue: &str, until: Until) -> Vec<Delivery> {
    let channel = conn.create_channel().await.expect("channel");
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("consume {queue}: {e}"));
    let (wanted, window) = match until {
        Until::Count(n, timeout) => (Some(n), timeout),
        Until::Window(window) => (None, window),
    };
    let deadline = tokio::time::Instant::now() + window;
    let mut out = Vec::new();
    while wanted.is_none_or(|n| out.len() < n) {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(delivery))) => out.push(delivery),
            Ok(Some(Err(e))) => panic!("consumer of {queue} failed after {}: {e}", out.len()),
            Ok(None) => panic!("consumer of {queue} ended after {}", out.len()),
            Err(_) if wanted.is_none() => break,
            Err(_) => panic!(
                "timed out after {window:?} consuming {queue}: got {} of {}",
                out.len(),
                wanted.unwrap_or_default()
            ),
        }
    }
    if let Some(last) = out.last() {
        channel
            .basic_ack(last.delivery_tag, BasicAckOptions { multiple: true })
            .await
            .unwrap_or_else(|e| panic!("ack what was consumed from {queue}: {e}"));
    }
    close_channel(channel).await;
    out
}

/// Closes `channel`, bounded by 5 s. Close channels rather than drop them before their
/// connection closes: lapin closes a dropped channel in the background, and when that races
/// the connection's close it logs a connection error (and once hung that close for good).
pub async fn close_channel(channel: Channel) {
    let _ = tokio::time::timeout(Duration::from_secs(5), channel.close(200, "".into())).await;
}

/// Closes `conn`, bounded by 5 s.
pub async fn close_connection(conn: &Connection) {
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "".into())).await;
}
