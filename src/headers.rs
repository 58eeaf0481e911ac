//! Names of the message headers actix-outbox owns, and the user-header rules.
//!
//! Every header we set starts with `x-outbox-`. None reuses a name RabbitMQ sets itself
//! (`x-death`, `x-delivery-count`, `x-first-death-*`, `x-last-death-*`), which would clash on
//! quorum queues and dead-lettering.

use crate::error::{Error, Result};

/// The chain of message ids that led to this event (oldest first, this event last).
pub const TRACKING_IDS: &str = "x-outbox-tracking-ids";
/// The correlation id an event was emitted with, in the outbox row's headers column; the
/// relay publishes it as the AMQP `correlation_id` property (not as a header). Absent, the
/// correlation id is the first id of the tracking chain: the event that started it.
pub const CORRELATION_ID: &str = "x-outbox-correlation-id";
/// The event's ordering key (see `OutboxEvent::with_ordering_key`): the consistent-hash
/// exchange of an ordered listener partitions on it.
pub const ORDERING_KEY: &str = "x-outbox-ordering-key";
/// The absolute deadline (RFC 3339) after which the event is dead-lettered, not handled.
pub const DEADLINE: &str = "x-outbox-deadline";
/// The delivery attempt of this copy: 1 for the first delivery, 2 after one retry, …
pub const ATTEMPT: &str = "x-outbox-attempt";
/// The routing key the event was emitted with (retries travel through other exchanges).
pub const ROUTING_KEY: &str = "x-outbox-routing-key";
/// Why a message was dead-lettered (handler error, decode error, expiry).
pub const REASON: &str = "x-outbox-reason";
/// Which queue's handler dead-lettered the message.
pub const HANDLER: &str = "x-outbox-handler";
/// Classic queues only (quorum queues count in `x-delivery-count`): how often this message
/// was delivered before without being settled. A consumer that receives a redelivered message
/// from a classic queue publishes it back to the queue with this count raised instead of
/// handling it, so that a message that crashes its worker every time is dead-lettered at the
/// redelivery limit.
pub const REDELIVERIES: &str = "x-outbox-redeliveries";

/// Header prefixes reserved for actix-outbox and for RabbitMQ.
const RESERVED: [&str; 5] = [
    "x-outbox-",
    "x-death",
    "x-delivery-count",
    "x-first-death-",
    "x-last-death-",
];

/// Checks a user header name: non-empty, at most 128 bytes, and not reserved.
pub(crate) fn check_user_header(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > 128 {
        "longer than 128 bytes"
    } else if RESERVED.iter().any(|p| name.starts_with(p)) {
        "reserved for actix-outbox (`x-outbox-*`) or RabbitMQ (`x-death`, `x-delivery-count`, …)"
    } else {
        return Ok(());
    };
    Err(Error::InvalidConfig {
        field: "header",
        reason: format!("header name {name:?} {reason}"),
    })
}

/// The longest AMQP short string (content types, header names at any depth), in bytes.
pub(crate) const MAX_SHORT_STRING: usize = 255;

/// Checks a user header value: the names inside nested objects, at any depth, must fit an
/// AMQP short string, or the relay could not publish the event.
pub(crate) fn check_user_header_value(name: &str, value: &serde_json::Value) -> Result<()> {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if key.len() > MAX_SHORT_STRING {
                    return Err(Error::InvalidConfig {
                        field: "header",
                        reason: format!(
                            "header {name:?} holds a field name of {} bytes; AMQP allows at most {MAX_SHORT_STRING}",
                            key.len()
                        ),
                    });
                }
                check_user_header_value(name, inner)?;
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| check_user_header_value(name, item)),
        _ => Ok(()),
    }
}

/// Checks a content type: it travels as an AMQP short string, so at most 255 bytes.
pub(crate) fn check_content_type(content_type: &str) -> Result<()> {
    check_short("content_type", "the content type", content_type)
}

/// Checks a correlation id: it travels as an AMQP short string, so at most 255 bytes.
pub(crate) fn check_correlation_id(id: &str) -> Result<()> {
    check_short("correlation_id", "the correlation id", id)
}

fn check_short(field: &'static str, what: &str, value: &str) -> Result<()> {
    if value.len() > MAX_SHORT_STRING {
        return Err(Error::InvalidConfig {
            field,
            reason: format!(
                "{what} is {} bytes; AMQP allows at most {MAX_SHORT_STRING}",
                value.len()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_are_refused() {
        for bad in [
            "",
            "x-outbox-attempt",
            "x-death",
            "x-delivery-count",
            "x-first-death-queue",
        ] {
            assert!(check_user_header(bad).is_err(), "{bad:?}");
        }
        for ok in ["tenant", "x-request-id", "traceparent"] {
            assert!(check_user_header(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn short_string_limits() {
        assert!(check_content_type(&"c".repeat(255)).is_ok());
        let err = check_content_type(&"c".repeat(256)).expect_err("256 bytes");
        assert!(err.to_string().contains("256 bytes"), "{err}");
        let nested = serde_json::json!({"a": [{"k".repeat(256): 1}]});
        assert!(check_user_header_value("meta", &nested).is_err());
        let fine = serde_json::json!({"a": [{"k".repeat(255): {"b": 1}}], "n": 1});
        assert!(check_user_header_value("meta", &fine).is_ok());
    }
}
