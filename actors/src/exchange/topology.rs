//! The broker objects actix-outbox needs, as data: one [`Topology`] is what the relay and the
//! consumers declare (or check), what `actix-outbox topology export` prints as RabbitMQ
//! definitions, and what `topology check` compares with a live broker. Declaring and
//! exporting read the same description, so they cannot drift apart.

use std::time::Duration;

use actix_outbox::{BindingKey, Result};
use lapin::{Channel, ExchangeKind};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::declare::{bind, declare_exchange_def, declare_queue_def};
use super::{
    TopologyMode, Unroutable, dead_letter_exchange, dead_letter_queue, delay_name,
    partition_exchange, partition_queue, unroutable_name,
};

/// The delivery limit given to quorum dead-letter queues: high enough never to be reached.
///
/// RabbitMQ 4 gives a quorum queue declared without one a limit of 20 deliveries, after
/// which a message is dropped when the queue has no dead-letter exchange — as dead-letter
/// queues have not. Listing or replaying dead letters hands them out and gives some back,
/// which counts, so without an explicit limit an operator's `dlq list` could drop them.
pub const DLQ_DELIVERY_LIMIT: i64 = 1_000_000_000;

/// Kind of an [`ExchangeDef`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ExchangeType {
    /// Routes by topic pattern (the outbox exchange).
    Topic,
    /// Routes to every bound queue (the unroutable store, the delay exchanges).
    Fanout,
    /// Routes by exact key (the dead-letter exchange).
    Direct,
    /// Routes each message to one bound queue by a hash of its ordering key (the partitions
    /// of an ordered listener; RabbitMQ's `rabbitmq_consistent_hash_exchange` plugin).
    ConsistentHash,
}

impl ExchangeType {
    /// The name RabbitMQ gives this kind.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Topic => "topic",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Direct => "direct",
            ExchangeType::ConsistentHash => "x-consistent-hash",
        }
    }

    pub(crate) fn kind(self) -> ExchangeKind {
        match self {
            ExchangeType::Topic => ExchangeKind::Topic,
            ExchangeType::Fanout => ExchangeKind::Fanout,
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::ConsistentHash => ExchangeKind::Custom(self.as_str().to_owned()),
        }
    }
}

/// A durable exchange.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ExchangeDef {
    /// Its name.
    pub name: String,
    /// Its kind.
    #[serde(rename = "type")]
    pub kind: ExchangeType,
    /// Declaration arguments (`alternate-exchange`).
    pub arguments: Map<String, Value>,
}

/// A durable queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct QueueDef {
    /// Its name.
    pub name: String,
    /// Declaration arguments (`x-queue-type`, dead-lettering, TTL, …).
    pub arguments: Map<String, Value>,
}

/// A queue (or exchange) bound to an exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BindingDef {
    /// The exchange.
    pub source: String,
    /// The queue, or with `to_exchange` the exchange, messages go on to.
    pub destination: String,
    /// The binding key.
    pub routing_key: String,
    /// The destination is an exchange (an ordered listener's consistent-hash exchange).
    pub to_exchange: bool,
}

/// What one handler queue needs, beside the exchange.
#[derive(Debug, Clone)]
pub(crate) struct QueueLayout<'a> {
    /// The topic exchange.
    pub(crate) exchange: &'a str,
    /// The handler queue.
    pub(crate) queue: &'a str,
    /// Its binding keys.
    pub(crate) keys: &'a [BindingKey],
    /// `x-queue-type` of the queue, its dead-letter queue and delay queues.
    pub(crate) queue_type: &'static str,
    /// Retry delays (one delay exchange and queue each).
    pub(crate) delays: &'a [Duration],
    /// The handler queue was declared by an earlier version, without at-least-once
    /// dead-lettering: declare it as it is.
    pub(crate) legacy_queue: bool,
    /// The dead-letter queue was declared by an earlier version, without a delivery limit.
    pub(crate) legacy_dlq: bool,
    /// Ordered listener: the number of partition queues (0: one plain queue).
    pub(crate) partitions: u16,
}

/// Exchanges, queues and bindings, each once, in declaration order.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Topology {
    /// The exchanges.
    pub exchanges: Vec<ExchangeDef>,
    /// The queues.
    pub queues: Vec<QueueDef>,
    /// The bindings.
    pub bindings: Vec<BindingDef>,
}

impl Topology {
    /// What the relay needs: the durable topic `exchange` and, with
    /// [`Unroutable::AlternateExchange`], its alternate exchange `<exchange>.unroutable`
    /// (fanout) bound to a durable quorum queue of the same name (replicated: on a cluster,
    /// unroutable messages survive the loss of a node, and so does the declaration).
    #[must_use]
    pub fn for_exchange(exchange: &str, unroutable: Unroutable) -> Self {
        Self::for_exchange_with(exchange, unroutable, super::is_legacy_store(exchange))
    }

    /// As [`for_exchange`](Self::for_exchange); with `legacy_store`, the unroutable queue is
    /// declared as earlier versions did (classic, no arguments).
    pub(crate) fn for_exchange_with(
        exchange: &str,
        unroutable: Unroutable,
        legacy_store: bool,
    ) -> Self {
        let mut topology = Self::default();
        let mut arguments = Map::new();
        if unroutable == Unroutable::AlternateExchange {
            let ae = unroutable_name(exchange);
            let mut store = Map::new();
            if !legacy_store {
                store.insert("x-queue-type".into(), "quorum".into());
            }
            topology.exchange(&ae, ExchangeType::Fanout, Map::new());
            topology.queue(&ae, store);
            topology.bind(&ae, &ae, "");
            arguments.insert("alternate-exchange".into(), ae.into());
        }
        topology.exchange(exchange, ExchangeType::Topic, arguments);
        topology
    }

    /// Adds what one handler queue needs (the table in [`crate::worker`]'s link module).
    pub(crate) fn add_queue(&mut self, layout: &QueueLayout<'_>) {
        let quorum = layout.queue_type == "quorum";
        let typed = || {
            let mut args = Map::new();
            args.insert("x-queue-type".into(), layout.queue_type.into());
            args
        };
        let at_least_once = |args: &mut Map<String, Value>| {
            if quorum {
                args.insert("x-dead-letter-strategy".into(), "at-least-once".into());
                args.insert("x-overflow".into(), "reject-publish".into());
            }
        };
        let dlx = dead_letter_exchange(layout.exchange);
        let dlq = dead_letter_queue(layout.queue);
        self.exchange(&dlx, ExchangeType::Direct, Map::new());
        let mut dlq_args = typed();
        if quorum && !layout.legacy_dlq {
            dlq_args.insert("x-delivery-limit".into(), DLQ_DELIVERY_LIMIT.into());
        }
        self.queue(&dlq, dlq_args);
        let mut main = typed();
        main.insert("x-dead-letter-exchange".into(), dlx.as_str().into());
        main.insert("x-dead-letter-routing-key".into(), dlq.as_str().into());
        if !layout.legacy_queue {
            at_least_once(&mut main);
        }
        if layout.partitions > 0 {
            self.add_partitions(layout, main);
            self.bind(&dlx, &dlq, &dlq);
            return;
        }
        self.queue(layout.queue, main);
        let mut delays = layout.delays.to_vec();
        delays.sort();
        delays.dedup();
        for delay in delays {
            // TTL = the delay; dead-lettered to the default exchange under the copy's own
            // routing key (the queue's name), so only that queue sees the retry.
            let name = delay_name(layout.exchange, delay);
            let mut args = typed();
            let ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-message-ttl".into(), ms.into());
            args.insert("x-dead-letter-exchange".into(), "".into());
            at_least_once(&mut args);
            self.exchange(&name, ExchangeType::Fanout, Map::new());
            self.queue(&name, args);
            self.bind(&name, &name, "");
        }
        self.bind(&dlx, &dlq, &dlq);
        for key in layout.keys {
            self.bind(layout.exchange, layout.queue, key.as_str());
        }
    }

    /// An ordered listener's queues: the consistent-hash exchange bound to the topic exchange
    /// with the listener's keys, and one single-active-consumer queue per partition bound to
    /// it with weight 1. Retries happen in place (no delay queues): a retry of one event
    /// holds back the later events of its partition.
    fn add_partitions(&mut self, layout: &QueueLayout<'_>, mut queue_args: Map<String, Value>) {
        let hash = partition_exchange(layout.exchange, layout.queue);
        let mut args = Map::new();
        args.insert(
            "hash-header".into(),
            actix_outbox::headers::ORDERING_KEY.into(),
        );
        self.exchange(&hash, ExchangeType::ConsistentHash, args);
        queue_args.insert("x-single-active-consumer".into(), true.into());
        for n in 0..layout.partitions {
            let partition = partition_queue(layout.queue, n);
            self.queue(&partition, queue_args.clone());
            self.bind(&hash, &partition, "1");
        }
        for key in layout.keys {
            self.bind_exchange(layout.exchange, &hash, key.as_str());
        }
    }

    /// Adds everything of `other` this topology lacks.
    pub fn merge(&mut self, other: Topology) {
        for e in other.exchanges {
            self.exchange(&e.name, e.kind, e.arguments);
        }
        for q in other.queues {
            self.queue(&q.name, q.arguments);
        }
        for b in other.bindings {
            self.add_binding(&b.source, &b.destination, &b.routing_key, b.to_exchange);
        }
    }

    fn exchange(&mut self, name: &str, kind: ExchangeType, arguments: Map<String, Value>) {
        if !self.exchanges.iter().any(|e| e.name == name) {
            self.exchanges.push(ExchangeDef {
                name: name.to_owned(),
                kind,
                arguments,
            });
        }
    }

    fn queue(&mut self, name: &str, arguments: Map<String, Value>) {
        if !self.queues.iter().any(|q| q.name == name) {
            self.queues.push(QueueDef {
                name: name.to_owned(),
                arguments,
            });
        }
    }

    fn bind(&mut self, source: &str, destination: &str, key: &str) {
        self.add_binding(source, destination, key, false);
    }

    fn bind_exchange(&mut self, source: &str, destination: &str, key: &str) {
        self.add_binding(source, destination, key, true);
    }

    fn add_binding(&mut self, source: &str, destination: &str, key: &str, to_exchange: bool) {
        let binding = BindingDef {
            source: source.to_owned(),
            destination: destination.to_owned(),
            routing_key: key.to_owned(),
            to_exchange,
        };
        if !self.bindings.contains(&binding) {
            self.bindings.push(binding);
        }
    }

    /// The topology as a RabbitMQ definitions document for virtual host `vhost`, as
    /// `rabbitmqctl import_definitions` and the management API's `POST /api/definitions`
    /// take it. Users, permissions and the virtual host itself are left to the operator.
    #[must_use]
    pub fn to_definitions(&self, vhost: &str) -> Value {
        let exchanges: Vec<Value> = self
            .exchanges
            .iter()
            .map(|e| {
                json!({
                    "name": e.name, "vhost": vhost, "type": e.kind.as_str(), "durable": true,
                    "auto_delete": false, "internal": false, "arguments": e.arguments,
                })
            })
            .collect();
        let queues: Vec<Value> = self
            .queues
            .iter()
            .map(|q| {
                json!({
                    "name": q.name, "vhost": vhost, "durable": true, "auto_delete": false,
                    "arguments": q.arguments,
                })
            })
            .collect();
        let bindings: Vec<Value> = self
            .bindings
            .iter()
            .map(|b| {
                json!({
                    "source": b.source, "vhost": vhost, "destination": b.destination,
                    "destination_type": if b.to_exchange { "exchange" } else { "queue" },
                    "routing_key": b.routing_key, "arguments": {},
                })
            })
            .collect();
        json!({ "exchanges": exchanges, "queues": queues, "bindings": bindings })
    }

    /// Declares everything on `channel` ([`TopologyMode::Declare`]), or only checks that
    /// each exchange and queue exists ([`TopologyMode::CheckOnly`]: passive declares, no
    /// bindings, which AMQP cannot check).
    ///
    /// # Errors
    ///
    /// [`Error::BrokerRefused`](actix_outbox::Error::BrokerRefused) naming the first object
    /// that is missing (check-only mode) or exists with other arguments. The broker closes
    /// the channel after such an error.
    pub async fn apply(&self, channel: &Channel, mode: TopologyMode) -> Result<()> {
        let check = mode == TopologyMode::CheckOnly;
        for e in &self.exchanges {
            declare_exchange_def(channel, e, check).await?;
        }
        for q in &self.queues {
            declare_queue_def(channel, q, check).await?;
        }
        if !check {
            for b in &self.bindings {
                bind(channel, b).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout<'a>(keys: &'a [BindingKey], delays: &'a [Duration], quorum: bool) -> QueueLayout<'a> {
        QueueLayout {
            exchange: "outbox",
            queue: "mailer",
            keys,
            queue_type: if quorum { "quorum" } else { "classic" },
            delays,
            legacy_queue: false,
            legacy_dlq: false,
            partitions: 0,
        }
    }

    #[test]
    fn a_queue_brings_its_dead_letter_and_delay_objects() {
        let keys = [BindingKey::new("user.*").expect("key")];
        let delays = [
            Duration::from_secs(10),
            Duration::from_secs(1),
            Duration::from_secs(1),
        ];
        let mut t = Topology::for_exchange_with("outbox", Unroutable::AlternateExchange, false);
        t.add_queue(&layout(&keys, &delays, true));
        let names: Vec<&str> = t.exchanges.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "outbox.unroutable",
                "outbox",
                "outbox.dlx",
                "outbox.retry.1000ms",
                "outbox.retry.10000ms"
            ]
        );
        let queue = |n: &str| &t.queues.iter().find(|q| q.name == n).expect(n).arguments;
        assert_eq!(queue("mailer")["x-dead-letter-routing-key"], "dlq_mailer");
        assert_eq!(queue("mailer")["x-dead-letter-strategy"], "at-least-once");
        assert_eq!(queue("dlq_mailer")["x-delivery-limit"], DLQ_DELIVERY_LIMIT);
        assert_eq!(queue("outbox.retry.1000ms")["x-message-ttl"], 1000);
        assert_eq!(queue("outbox.retry.1000ms")["x-dead-letter-exchange"], "");
        assert!(!queue("outbox.retry.1000ms").contains_key("x-dead-letter-routing-key"));
        assert!(t.bindings.contains(&BindingDef {
            source: "outbox".into(),
            destination: "mailer".into(),
            routing_key: "user.*".into(),
            to_exchange: false,
        }));
        assert_eq!(
            t.exchanges[1].arguments["alternate-exchange"],
            "outbox.unroutable"
        );
    }

    #[test]
    fn an_ordered_listener_gets_a_hash_exchange_and_partitions() {
        let keys = [BindingKey::new("order.*").expect("key")];
        let delays = [Duration::from_secs(1)];
        let mut t = Topology::default();
        t.add_queue(&QueueLayout {
            partitions: 3,
            ..layout(&keys, &delays, true)
        });
        let hash = t
            .exchanges
            .iter()
            .find(|e| e.name == "outbox.ordered.mailer")
            .expect("the consistent-hash exchange");
        assert_eq!(hash.kind, ExchangeType::ConsistentHash);
        assert_eq!(hash.arguments["hash-header"], "x-outbox-ordering-key");
        let names: Vec<&str> = t.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["dlq_mailer", "mailer.p0", "mailer.p1", "mailer.p2"]);
        for q in &t.queues[1..] {
            assert_eq!(q.arguments["x-single-active-consumer"], true);
            assert_eq!(q.arguments["x-dead-letter-routing-key"], "dlq_mailer");
            assert_eq!(q.arguments["x-dead-letter-strategy"], "at-least-once");
        }
        assert!(
            !t.exchanges.iter().any(|e| e.name.contains(".retry.")),
            "retries happen in place: no delay queues"
        );
        let feed = t
            .bindings
            .iter()
            .find(|b| b.to_exchange)
            .expect("the topic exchange feeds the hash exchange");
        assert_eq!(
            (
                feed.source.as_str(),
                feed.destination.as_str(),
                feed.routing_key.as_str()
            ),
            ("outbox", "outbox.ordered.mailer", "order.*")
        );
        let weights = t.bindings.iter().filter(|b| b.source == hash.name).count();
        assert_eq!(weights, 3, "one weight-1 binding per partition");
        let defs = t.to_definitions("/");
        let types: Vec<&str> = defs["bindings"]
            .as_array()
            .expect("bindings")
            .iter()
            .map(|b| b["destination_type"].as_str().expect("type"))
            .collect();
        assert!(
            types.contains(&"exchange") && types.contains(&"queue"),
            "{types:?}"
        );
        assert!(
            defs["exchanges"]
                .as_array()
                .expect("exchanges")
                .iter()
                .any(|e| e["type"] == "x-consistent-hash")
        );
    }

    #[test]
    fn classic_and_legacy_queues_have_no_quorum_arguments() {
        let mut t = Topology::default();
        t.add_queue(&layout(&[], &[Duration::from_millis(250)], false));
        for q in &t.queues {
            assert_eq!(q.arguments["x-queue-type"], "classic");
            assert!(
                !q.arguments.contains_key("x-dead-letter-strategy"),
                "{}",
                q.name
            );
            assert!(!q.arguments.contains_key("x-delivery-limit"), "{}", q.name);
        }
        let mut legacy = layout(&[], &[], true);
        legacy.legacy_queue = true;
        legacy.legacy_dlq = true;
        let mut t = Topology::default();
        t.add_queue(&legacy);
        assert!(
            !t.queues
                .iter()
                .any(|q| q.arguments.contains_key("x-dead-letter-strategy")
                    || q.arguments.contains_key("x-delivery-limit"))
        );
    }

    #[test]
    fn merging_keeps_each_object_once_and_definitions_carry_the_vhost() {
        let keys = [BindingKey::new("#").expect("key")];
        let mut t = Topology::for_exchange("outbox", Unroutable::Drop);
        t.add_queue(&layout(&keys, &[], true));
        let copy = t.clone();
        t.merge(copy.clone());
        assert_eq!(t, copy);
        let defs = t.to_definitions("orders");
        assert_eq!(defs["exchanges"][0]["name"], "outbox");
        assert_eq!(defs["exchanges"][0]["type"], "topic");
        assert!(
            defs["exchanges"][0]["arguments"]
                .as_object()
                .expect("map")
                .is_empty()
        );
        assert!(
            defs["queues"]
                .as_array()
                .expect("queues")
                .iter()
                .all(|q| q["vhost"] == "orders")
        );
        assert_eq!(defs["bindings"][1]["routing_key"], "#");
        assert_eq!(defs["bindings"][1]["destination_type"], "queue");
    }
}
