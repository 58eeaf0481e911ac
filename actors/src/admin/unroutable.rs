//! Messages kept in `<exchange>.unroutable`: once the missing bindings exist, publish them
//! to the exchange again.

use std::time::Duration;

use actix::Addr;
use actix_outbox::Result;
use serde::Serialize;

use super::ReplayOptions;
use super::moving::{Target, close, move_messages};
use crate::broker::{self, ConnectionSupervisor};
use crate::exchange::{queue_counts, unroutable_name};

/// What [`unroutable_replay`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct UnroutableReplay {
    /// Messages published to the exchange again (each confirmed before its original was
    /// acked).
    pub replayed: u64,
    /// Messages in `<exchange>.unroutable` right afterwards. Replayed messages whose key
    /// still matches no binding are routed back there by the alternate exchange, so a figure
    /// close to `replayed` means the bindings are still missing. A snapshot: on a quorum
    /// store, messages given back (not selected) may show in the count a moment later.
    pub waiting_after: u32,
}

/// Publishes the messages kept in `<exchange>.unroutable` to `exchange` again, under their
/// original routing keys, with a fresh attempt count. Each copy is confirmed before its
/// original is acked (an interrupted replay loses nothing). Looks at no more messages than
/// the queue held at the start, so messages that come back unroutable are not replayed twice.
/// [`ReplayOptions::with_key`] replays only the keys whose bindings now exist.
///
/// # Errors
///
/// [`Error::Amqp`](actix_outbox::Error::Amqp) when `<exchange>.unroutable` does not exist,
/// [`Error::BrokerRefused`](actix_outbox::Error::BrokerRefused) when a copy is returned
/// (the exchange has no alternate exchange and nothing is bound for its key: the original is
/// kept), [`Error::Timeout`](actix_outbox::Error::Timeout) when no channel came within `wait`.
pub async fn unroutable_replay(
    broker: &Addr<ConnectionSupervisor>,
    exchange: &str,
    options: &ReplayOptions,
    wait: Duration,
) -> Result<UnroutableReplay> {
    let store = unroutable_name(exchange);
    let channel = broker::channel(broker, wait).await?;
    let target = Target {
        exchange,
        routing_key: None,
        reset_deadline: options.reset_deadline,
        object: ("exchange", exchange),
    };
    let moved = move_messages(&channel, &store, &options.selection(), &target).await;
    let after = match &moved {
        Ok(_) => queue_counts(&channel, &store).await.map(|(n, _)| n),
        Err(_) => Ok(0),
    };
    close(channel).await;
    Ok(UnroutableReplay {
        replayed: moved?,
        waiting_after: after?,
    })
}
