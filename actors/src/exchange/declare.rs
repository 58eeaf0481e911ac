//! Declaring (or only checking) the topic exchange both wings use, and the store that keeps
//! its unroutable messages.

use actix_outbox::Result;
use lapin::Channel;
use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use serde_json::{Map, Value};

use super::topology::{BindingDef, ExchangeDef, QueueDef, Topology};
use super::{TopologyMode, Unroutable, json_to_amqp, refused};

/// Declares `exchange` — a durable topic exchange — and, with
/// [`Unroutable::AlternateExchange`], its alternate exchange `<exchange>.unroutable` (fanout)
/// bound to a durable quorum queue of the same name. In check-only mode it declares nothing
/// and passively checks that the exchange exists.
///
/// A store that exists as a classic queue (earlier versions) is refused with
/// PRECONDITION_FAILED once: [`note_legacy_store`](super::note_legacy_store) remembers it,
/// and the caller's next attempt declares it as it is.
///
/// Relays and workers declare the exchange with the same arguments (RabbitMQ refuses a
/// redeclaration with different ones), so both go through this function.
///
/// # Errors
///
/// [`Error::BrokerRefused`](actix_outbox::Error::BrokerRefused) naming the exchange when it is missing (check-only mode) or exists
/// with other arguments (for example without the alternate exchange).
pub(crate) async fn declare_exchange(
    channel: &Channel,
    exchange: &str,
    unroutable: Unroutable,
    mode: TopologyMode,
) -> Result<()> {
    let topology = Topology::for_exchange(exchange, unroutable);
    match mode {
        TopologyMode::Declare => topology.apply(channel, mode).await,
        // Only the exchange itself: the unroutable store is the operator's business then.
        TopologyMode::CheckOnly => {
            let main = topology.exchanges.iter().find(|e| e.name == exchange);
            let main = main.expect("for_exchange describes the exchange");
            declare_exchange_def(channel, main, true).await
        }
    }
}

/// Messages ready in `queue` and its consumers (a passive declare: creates nothing; a missing
/// queue closes the channel, so ask on a channel of its own).
pub(crate) async fn queue_counts(channel: &Channel, queue: &str) -> Result<(u32, u32)> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?;
    Ok((queue.message_count(), queue.consumer_count()))
}

/// Declares (or, with `check`, passively checks) one exchange.
pub(crate) async fn declare_exchange_def(
    channel: &Channel,
    e: &ExchangeDef,
    check: bool,
) -> Result<()> {
    let options = ExchangeDeclareOptions {
        passive: check,
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let args = if check {
        FieldTable::default()
    } else {
        table(&e.arguments)
    };
    channel
        .exchange_declare(e.name.as_str().into(), e.kind.kind(), options, args)
        .await
        .map_err(|err| declare_refused("exchange", &e.name, check, &err))
}

/// Declares (or, with `check`, passively checks) one queue.
pub(crate) async fn declare_queue_def(channel: &Channel, q: &QueueDef, check: bool) -> Result<()> {
    let options = QueueDeclareOptions {
        passive: check,
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let args = if check {
        FieldTable::default()
    } else {
        table(&q.arguments)
    };
    channel
        .queue_declare(q.name.as_str().into(), options, args)
        .await
        .map(drop)
        .map_err(|err| declare_refused("queue", &q.name, check, &err))
}

pub(crate) async fn bind(channel: &Channel, b: &BindingDef) -> Result<()> {
    let (destination, source, key) = (
        b.destination.as_str().into(),
        b.source.as_str().into(),
        b.routing_key.as_str().into(),
    );
    let bound = match b.to_exchange {
        true => {
            let options = ExchangeBindOptions::default();
            channel
                .exchange_bind(destination, source, key, options, FieldTable::default())
                .await
        }
        false => {
            let options = QueueBindOptions::default();
            channel
                .queue_bind(destination, source, key, options, FieldTable::default())
                .await
        }
    };
    bound.map_err(|e| {
        refused(
            "binding",
            &format!("{} <- {}", b.destination, b.source),
            format!("cannot bind with key {:?}: {e}", b.routing_key),
        )
    })
}

fn table(arguments: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in arguments {
        table.insert(k.as_str().into(), json_to_amqp(v));
    }
    table
}

/// A declaration the broker refused, with what to do about it.
fn declare_refused(
    object: &'static str,
    name: &str,
    check: bool,
    e: &lapin::Error,
) -> actix_outbox::Error {
    let reason = if check {
        format!("missing or not accessible (check-only mode: create it first): {e}")
    } else {
        format!("cannot declare it (does it exist with other arguments?): {e}")
    };
    refused(object, name, reason)
}
