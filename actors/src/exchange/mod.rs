//! What the relay and the worker must agree on about the broker: the topic exchange, how it
//! treats unroutable messages, whether topology is declared or only checked, the names of every
//! object derived from the exchange and queue names, and the conversion between JSON headers
//! and AMQP field tables.
//!
//! Both wings import from here and never from each other, so a change to the shared contract
//! is made in one place.
//!
//! | name | object |
//! |---|---|
//! | `<exchange>` | the durable topic exchange the relay publishes to |
//! | `<exchange>.unroutable` | alternate exchange (fanout) and queue that keep unroutable messages |
//! | `<exchange>.dlx` | direct exchange for dead letters |
//! | `dlq_<queue>` | the dead-letter queue of `<queue>` (also its binding key on the dlx) |
//! | `<exchange>.retry.<ms>ms` | fanout exchange and TTL queue of one retry delay (before 0.2: `<exchange>.delay.<ms>ms`, classic) |

mod answer;
mod declare;
mod fields;
mod names;
mod topology;

use std::time::Duration;

use actix_outbox::Error;

pub(crate) use answer::{Answer, Completed, ReturnKey, resolve};
pub(crate) use declare::{declare_exchange, declare_exchange_def, declare_queue_def, queue_counts};
#[cfg(test)]
pub(crate) use fields::table_to_json;
pub(crate) use fields::{amqp_to_json, json_to_amqp, long, table_len};
pub(crate) use names::{MAX_NAME_LEN, check_exchange_name, check_queue_name};
pub(crate) use topology::QueueLayout;
pub use topology::{BindingDef, DLQ_DELIVERY_LIMIT, ExchangeDef, ExchangeType, QueueDef, Topology};

/// What happens to messages whose routing key matches no binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Unroutable {
    /// The exchange gets an alternate exchange `<exchange>.unroutable` (fanout) bound to a
    /// durable queue of the same name, so unroutable messages are kept there; the relay
    /// watches that queue's depth and warns when it grows. The default.
    #[default]
    AlternateExchange,
    /// Fire-and-forget: the broker drops unroutable messages; the relay sees them returned
    /// (published `mandatory`), counts and logs them, and deletes their rows.
    Drop,
}

/// Whether the relay declares its topology or only checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TopologyMode {
    /// Declare the exchange (and alternate exchange and queue) at start. The default.
    #[default]
    Declare,
    /// Least privilege: declare nothing, only check (passive declare) that the exchange
    /// exists, and fail at start naming what is missing.
    CheckOnly,
}

/// [`Error::BrokerRefused`] for `object` (`"exchange"`, `"queue"`, `"binding"`, …) `name`.
pub(crate) fn refused(object: &'static str, name: &str, reason: impl Into<String>) -> Error {
    Error::BrokerRefused {
        object,
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// Longest failure reason kept, in bytes: in a dead letter's `x-outbox-reason` header, in a
/// row's `last_error`, in logs.
pub(crate) const MAX_REASON_BYTES: usize = 1024;

/// `reason` cut to [`MAX_REASON_BYTES`] (on a character boundary, saying how much was cut).
/// Reasons can quote input of any size (a decode error quotes the offending value), and a
/// header larger than the broker's `frame_max` would close the connection under the dead
/// letter that carries it, again on every redelivery.
pub(crate) fn bounded_reason(reason: &str) -> std::borrow::Cow<'_, str> {
    if reason.len() <= MAX_REASON_BYTES {
        return reason.into();
    }
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} more bytes cut)",
        &reason[..end],
        reason.len() - end
    )
    .into()
}

/// Unroutable stores found declared by an earlier version (a classic queue, which RabbitMQ
/// refuses to redeclare as quorum): this process declares them as they are from then on.
static LEGACY_STORES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Whether `exchange`'s unroutable store is a classic queue of an earlier version.
pub(crate) fn is_legacy_store(exchange: &str) -> bool {
    let stores = LEGACY_STORES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    stores.iter().any(|e| e == exchange)
}

/// When `e` is RabbitMQ refusing to redeclare `exchange`'s unroutable store with other
/// arguments, remembers it as a legacy store (warning once, with the upgrade steps) and
/// returns true: the caller declares again on a new channel.
pub(crate) fn note_legacy_store(e: &Error, exchange: &str) -> bool {
    let store = unroutable_name(exchange);
    let mismatch = matches!(e, Error::BrokerRefused { object: "queue", name, reason }
        if *name == store && reason.contains("PRECONDITION_FAILED"));
    if !mismatch {
        return false;
    }
    let mut stores = LEGACY_STORES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !stores.iter().any(|x| x == exchange) {
        stores.push(exchange.to_owned());
        tracing::warn!(
            queue = %store,
            "unroutable store {store} is a classic queue (declared by an earlier version); using \
             it as it is. On a cluster it lives on one node only: to make it a replicated quorum \
             queue, stop the relays, replay what it holds (actix-outbox unroutable replay), \
             delete it, and start them again"
        );
    }
    true
}

/// The alternate exchange and queue for unroutable messages: `<exchange>.unroutable`.
pub(crate) fn unroutable_name(exchange: &str) -> String {
    format!("{exchange}.unroutable")
}

/// The dead-letter exchange of `exchange`: `<exchange>.dlx`.
pub(crate) fn dead_letter_exchange(exchange: &str) -> String {
    format!("{exchange}.dlx")
}

/// The dead-letter queue of `queue`: `dlq_<queue>` (also its binding key).
pub(crate) fn dead_letter_queue(queue: &str) -> String {
    format!("dlq_{queue}")
}

/// Partition `n` of ordered listener `queue`: `<queue>.p<n>`.
pub(crate) fn partition_queue(queue: &str, n: u16) -> String {
    format!("{queue}.p{n}")
}

/// The consistent-hash exchange of ordered listener `queue` on `exchange`:
/// `<exchange>.ordered.<queue>`.
pub(crate) fn partition_exchange(exchange: &str, queue: &str) -> String {
    format!("{exchange}.ordered.{queue}")
}

/// The delay exchange and queue for `delay` on `exchange`: `<exchange>.retry.<ms>ms`.
///
/// Versioned by its name: the `<exchange>.delay.<ms>ms` queues of earlier versions were
/// classic (at-most-once dead-lettering), and RabbitMQ refuses to redeclare a queue with
/// other arguments. Those old queues keep working for the copies already in them (they
/// dead-letter back to their queue as before) and can be deleted once empty.
pub(crate) fn delay_name(exchange: &str, delay: Duration) -> String {
    format!("{exchange}.retry.{}ms", delay.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded_on_a_char_boundary() {
        assert_eq!(bounded_reason("short"), "short");
        let long = format!("{}é{}", "a".repeat(1023), "b".repeat(5000));
        let cut = bounded_reason(&long);
        assert!(cut.starts_with(&"a".repeat(1023)));
        assert!(cut.len() < MAX_REASON_BYTES + 40, "{}", cut.len());
        assert!(cut.ends_with("(5002 more bytes cut)"), "{cut}");
    }

    #[test]
    fn names_follow_the_documented_scheme() {
        assert_eq!(unroutable_name("outbox"), "outbox.unroutable");
        assert_eq!(dead_letter_exchange("outbox"), "outbox.dlx");
        assert_eq!(dead_letter_queue("welcome_mailer"), "dlq_welcome_mailer");
        assert_eq!(
            delay_name("outbox", Duration::from_secs(90)),
            "outbox.retry.90000ms"
        );
        assert_eq!(
            delay_name("outbox", Duration::from_millis(100)),
            "outbox.retry.100ms"
        );
    }
}
