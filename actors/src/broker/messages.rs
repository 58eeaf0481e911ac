//! The messages of the [`ConnectionSupervisor`](super::ConnectionSupervisor) and what it
//! answers.

use actix::prelude::*;
use actix_outbox::Result;
use lapin::Channel;

/// Asks for a fresh channel on the current connection; waits while (re)connecting.
///
/// Fails with [`Error::Shutdown`](actix_outbox::Error::Shutdown) after [`StopBroker`], or with [`Error::Amqp`](actix_outbox::Error::Amqp) when the
/// connection broke while the channel was being opened (ask again).
///
/// The channel is yours: close it (`channel.close(200, …)`, awaited, best bounded by a
/// timeout) when done, rather than dropping it. lapin 4 closes a dropped channel in the
/// background, and if [`StopBroker`] closes the connection at that moment the two race: lapin
/// logs "Connection error: invalid channel state: Closing (channel.close)" at ERROR, and an
/// unbounded connection close can then wait forever (seen with a raw connection in this
/// project's benchmark; the supervisor bounds its own close by 5 s).
#[derive(Debug, Message)]
#[rtype(result = "Result<Channel>")]
pub struct GetChannel;

/// Subscribes a recipient to [`BrokerStatus`] changes.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<BrokerStatus>);

/// A change of the broker connection, sent to subscribers.
#[derive(Debug, Clone, Message, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum BrokerStatus {
    /// Connection number `generation` is up (1 for the first, +1 per reconnect).
    Connected {
        /// Counts connections made so far.
        generation: u64,
    },
    /// Connection number `generation` was lost; a reconnect is under way.
    Lost {
        /// The connection that was lost.
        generation: u64,
        /// Why, as reported by lapin.
        reason: String,
    },
}

/// Asks for a snapshot of the connection state (for health checks and tests).
#[derive(Debug, Message)]
#[rtype(result = "BrokerState")]
pub struct GetBrokerState;

/// A snapshot of the connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerState {
    /// A connection is up.
    pub connected: bool,
    /// Connections made so far (reconnects are `generation - 1`).
    pub generation: u64,
    /// Failed connection attempts since the last success.
    pub failed_attempts: u32,
    /// The largest frame the current connection negotiated, in bytes (0 when not
    /// connected). A message's properties must fit in one frame.
    pub frame_max: u32,
    /// Which of the configured URLs (cluster nodes) the current or next connection uses,
    /// counted from 0.
    pub node: usize,
}

/// Closes the connection (bounded by 5 s) and refuses further channel requests. Send it after
/// the relay and consumers have stopped.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StopBroker;
