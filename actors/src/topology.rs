//! Declaring (or only checking) the broker topology the relay publishes into.

use actix_outbox::{Error, Result};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::relay_config::{RelayConfig, TopologyMode, Unroutable};

/// Declares the relay's exchange (see [`declare_exchange`]).
pub(crate) async fn declare_relay_topology(channel: &Channel, config: &RelayConfig) -> Result<()> {
    declare_exchange(
        channel,
        config.exchange(),
        config.unroutable,
        config.topology,
    )
    .await
}

/// Declares `exchange` — a durable topic exchange — and, with
/// [`Unroutable::AlternateExchange`], its alternate exchange `<exchange>.unroutable` (fanout)
/// bound to a durable queue of the same name. In check-only mode it declares nothing and
/// passively checks that the exchange exists.
///
/// Relays and workers declare the exchange with the same arguments (RabbitMQ refuses a
/// redeclaration with different ones), so both go through this function.
///
/// # Errors
///
/// [`Error::BrokerRefused`] naming the exchange when it is missing (check-only mode) or exists
/// with other arguments (for example without the alternate exchange).
pub(crate) async fn declare_exchange(
    channel: &Channel,
    exchange: &str,
    unroutable: Unroutable,
    mode: TopologyMode,
) -> Result<()> {
    match mode {
        TopologyMode::CheckOnly => {
            let passive = ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(exchange.into(), ExchangeKind::Topic, passive, FieldTable::default())
                .await
                .map_err(|e| refused(format!("exchange {exchange:?} is missing or not accessible (check-only mode: create it first): {e}")))
        }
        TopologyMode::Declare => {
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            let mut args = FieldTable::default();
            if unroutable == Unroutable::AlternateExchange {
                let ae = format!("{exchange}.unroutable");
                declare_unroutable_store(channel, &ae).await?;
                args.insert(
                    "alternate-exchange".into(),
                    AMQPValue::LongString(LongString::from(ae.as_str())),
                );
            }
            channel
                .exchange_declare(exchange.into(), ExchangeKind::Topic, durable, args)
                .await
                .map_err(|e| refused(format!("cannot declare topic exchange {exchange:?} (does it exist with other arguments?): {e}")))
        }
    }
}

/// The fanout exchange and durable queue that keep unroutable messages.
async fn declare_unroutable_store(channel: &Channel, name: &str) -> Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    let queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(name.into(), queue, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            name.into(),
            name.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// How many messages wait in the unroutable queue (a passive declare: creates nothing).
pub(crate) async fn unroutable_depth(channel: &Channel, config: &RelayConfig) -> Result<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(
            config.unroutable_name().as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await?;
    Ok(queue.message_count())
}

fn refused(message: String) -> Error {
    Error::BrokerRefused(message)
}
