//! Declaring (or only checking) the topic exchange both wings use, and the store that keeps
//! its unroutable messages.

use actix_outbox::Result;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};

use super::{TopologyMode, Unroutable, long, refused, unroutable_name};

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
/// [`Error::BrokerRefused`](actix_outbox::Error::BrokerRefused) naming the exchange when it is missing (check-only mode) or exists
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
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Topic,
                    passive,
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    refused(
                        "exchange",
                        exchange,
                        format!(
                            "missing or not accessible (check-only mode: create it first): {e}"
                        ),
                    )
                })
        }
        TopologyMode::Declare => {
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            let mut args = FieldTable::default();
            if unroutable == Unroutable::AlternateExchange {
                let ae = unroutable_name(exchange);
                declare_unroutable_store(channel, &ae).await?;
                args.insert("alternate-exchange".into(), long(&ae));
            }
            channel
                .exchange_declare(exchange.into(), ExchangeKind::Topic, durable, args)
                .await
                .map_err(|e| refused("exchange", exchange, format!("cannot declare it as a topic exchange (does it exist with other arguments?): {e}")))
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
