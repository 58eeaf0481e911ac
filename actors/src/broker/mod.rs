//! The broker wing: one [`ConnectionSupervisor`] owns a process's RabbitMQ connection and
//! hands out channels; [`BrokerConfig`] says where the broker is and how to reconnect.
//!
//! Relay and consumers never hold the connection. They ask for a channel (a [`GetChannel`]
//! under a timeout, then confirm mode) whenever they have none (at start, and after any
//! failure), so a reconnect needs no coordination: the next request simply gets a channel on
//! the new connection.

mod config;
mod messages;
mod runtime;
mod supervisor;

use std::time::Duration;

use actix::Addr;
use actix_outbox::{Error, Result};
use lapin::Channel;
use lapin::options::ConfirmSelectOptions;

pub use config::BrokerConfig;
pub use messages::{BrokerState, BrokerStatus, GetBrokerState, GetChannel, StopBroker, Subscribe};
pub use supervisor::ConnectionSupervisor;

/// A fresh channel from `supervisor`, in publisher-confirm mode, waiting at most `wait` for
/// it (the supervisor holds requests while it reconnects).
///
/// # Errors
///
/// [`Error::Timeout`] when no channel came within `wait`, [`Error::Shutdown`] after
/// [`StopBroker`], [`Error::Mailbox`] when the supervisor has stopped, [`Error::Amqp`] when
/// the channel could not be opened or put in confirm mode.
pub(crate) async fn channel(
    supervisor: &Addr<ConnectionSupervisor>,
    wait: Duration,
) -> Result<Channel> {
    let channel = tokio::time::timeout(wait, supervisor.send(GetChannel))
        .await
        .map_err(|_| Error::Timeout {
            what: "waiting for a broker channel",
            after: wait,
        })???;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// How many messages wait in `queue`, asked with a passive declare on a throwaway channel (a
/// missing queue closes the channel it is asked on, which must never be one in use). `None`
/// when the broker cannot be asked or the queue does not exist.
pub(crate) async fn queue_depth(
    supervisor: &Addr<ConnectionSupervisor>,
    wait: Duration,
    queue: &str,
) -> Option<u32> {
    queue_counts(supervisor, wait, queue)
        .await
        .ok()
        .map(|(messages, _)| messages)
}

/// Messages ready in `queue` and its consumers, asked as [`queue_depth`] does.
///
/// # Errors
///
/// As [`channel`], or [`Error::Amqp`] when the queue does not exist (404).
pub(crate) async fn queue_counts(
    supervisor: &Addr<ConnectionSupervisor>,
    wait: Duration,
    queue: &str,
) -> Result<(u32, u32)> {
    let channel = tokio::time::timeout(wait, supervisor.send(GetChannel))
        .await
        .map_err(|_| Error::Timeout {
            what: "waiting for a broker channel",
            after: wait,
        })???;
    let counts = crate::exchange::queue_counts(&channel, queue).await;
    if channel.status().connected() {
        let _ = tokio::time::timeout(Duration::from_secs(2), channel.close(200, "".into())).await;
    }
    counts
}
