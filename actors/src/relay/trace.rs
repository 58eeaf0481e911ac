//! The relay's OpenTelemetry PRODUCER spans (feature `otel`; without it, none).
//!
//! One span per row, named `publish <exchange>` and shaped by OpenTelemetry's messaging
//! conventions (`messaging.system`, `messaging.operation.type`, `messaging.destination.name`,
//! the routing key, `messaging.message.id`). Its parent is the trace context `emit` stored in
//! the row's headers, so it sits in the trace of the request that emitted the event; the
//! headers travel on with the message for the consumer.

use actix_outbox::outbox_message::Model;
use tracing::Span;

use super::config::RelayConfig;

/// The PRODUCER spans of a batch's rows, in row order (empty without the `otel` feature).
#[cfg(feature = "otel")]
pub(crate) fn producer_spans(config: &RelayConfig, rows: &[Model]) -> Vec<Span> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let exchange = config.exchange();
    rows.iter()
        .map(|row| {
            let span = tracing::info_span!(
                "publish",
                otel.name = %format_args!("publish {exchange}"),
                otel.kind = "producer",
                messaging.system = "rabbitmq",
                messaging.operation.type = "send",
                messaging.destination.name = %exchange,
                messaging.rabbitmq.destination.routing_key = %row.routing_key,
                messaging.message.id = %row.message_id,
            );
            if let Some(parent) = row
                .headers
                .as_object()
                .and_then(actix_outbox::otel::extract)
            {
                let _ = span.set_parent(parent);
            }
            span
        })
        .collect()
}

/// The PRODUCER spans of a batch's rows, in row order (empty without the `otel` feature).
#[cfg(not(feature = "otel"))]
pub(crate) fn producer_spans(_: &RelayConfig, _: &[Model]) -> Vec<Span> {
    Vec::new()
}
