//! `ConnectionSupervisor`: owns the one RabbitMQ connection of a process.
//!
//! **Owns** the lapin connection and the small tokio runtime lapin's I/O runs on (so a busy or
//! blocked actix thread never stalls heartbeats, publishes or confirms).
//! **Receives** [`GetChannel`] (from the relay and the consumers), [`Subscribe`],
//! [`GetBrokerState`] and [`StopBroker`].
//! **Sends** [`BrokerStatus`] to subscribers whenever the connection comes up or is lost.
//!
//! When the connection is lost — broker restart, connection force-closed, network error,
//! missed heartbeats — it reconnects by itself with exponential backoff and jitter. Channel
//! requests made meanwhile wait for the new connection; callers bound that wait with their own
//! timeout. Users of a channel notice its loss on their next operation and simply ask for a
//! new one: this pull model is the one recovery path for every failure kind.
//!
//! **Restart**: started under an actix [`Supervisor`](actix::Supervisor); a restart drops the
//! current connection and connects again. Channels handed out before are then dead, and their
//! owners ask for new ones. No message is lost by a restart: the outbox rows and the broker's
//! unacked deliveries are the source of truth, not this actor's state.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_outbox::{Error, Result};
use futures_util::StreamExt;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::BrokerConfig;
use super::messages::{
    BrokerState, BrokerStatus, GetBrokerState, GetChannel, StopBroker, Subscribe,
};
use super::runtime::LapinRuntime;
use crate::metrics::BrokerMetrics;

/// The outcome of one connection attempt.
#[derive(Message)]
#[rtype(result = "()")]
struct ConnectAttempt(Result<Connection>);

/// Connection `generation` reported an error or is no longer connected.
#[derive(Message)]
#[rtype(result = "()")]
struct ConnectionLost {
    generation: u64,
    reason: String,
}

/// Owner of the broker connection. See the module docs for its lifecycle.
pub struct ConnectionSupervisor {
    /// URL (with credentials), backoff, names.
    config: BrokerConfig,
    /// lapin's own runtime; `None` once shut down.
    runtime: LapinRuntime,
    /// The live connection, shared with channel-opening futures.
    connection: Option<Arc<Connection>>,
    /// Counts successful connections; tells stale loss reports from current ones.
    generation: u64,
    /// A connection attempt is in flight or scheduled.
    connecting: bool,
    /// Failed attempts since the last success (drives the backoff).
    failed_attempts: u32,
    /// Index of the URL (cluster node) of the current or next connection.
    node: usize,
    /// Channel requests waiting for a connection.
    waiters: Vec<oneshot::Sender<Arc<Connection>>>,
    /// Who hears about [`BrokerStatus`] changes.
    subscribers: Vec<Recipient<BrokerStatus>>,
    /// [`StopBroker`] was received.
    shut_down: bool,
    /// Connection state and reconnects as metrics.
    metrics: BrokerMetrics,
}

impl std::fmt::Debug for ConnectionSupervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSupervisor")
            .field("config", &self.config)
            .field("connected", &self.connection.is_some())
            .field("generation", &self.generation)
            .field("failed_attempts", &self.failed_attempts)
            .finish_non_exhaustive()
    }
}

impl ConnectionSupervisor {
    /// A supervisor for the broker in `config`; nothing connects until it is started.
    ///
    /// # Errors
    ///
    /// As [`BrokerConfig::validate`]; [`Error::Io`] when lapin's runtime thread cannot be
    /// created.
    pub fn new(config: BrokerConfig) -> Result<Self> {
        config.validate()?;
        let metrics = BrokerMetrics::new(config.connection_name());
        Ok(Self {
            config,
            runtime: LapinRuntime::start()?,
            connection: None,
            generation: 0,
            connecting: false,
            failed_attempts: 0,
            node: 0,
            waiters: Vec::new(),
            subscribers: Vec::new(),
            shut_down: false,
            metrics,
        })
    }

    /// Starts a supervisor for `config` under actix supervision (in the current System).
    ///
    /// # Errors
    ///
    /// As [`ConnectionSupervisor::new`].
    pub fn start_supervised(config: BrokerConfig) -> Result<Addr<Self>> {
        let actor = Self::new(config)?;
        let mut slot = Some(actor);
        Ok(actix::Supervisor::start(move |_| {
            slot.take()
                .unwrap_or_else(|| unreachable!("the factory runs once"))
        }))
    }
}

impl Actor for ConnectionSupervisor {
    type Context = Context<Self>;

    /// Connects, and checks once a second that the connection is still up (a safety net for
    /// losses lapin reports without an error event).
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.connect(ctx);
        ctx.run_interval(Duration::from_secs(1), |act, ctx| {
            if act
                .connection
                .as_ref()
                .is_some_and(|conn| !conn.status().connected())
            {
                ctx.notify(ConnectionLost {
                    generation: act.generation,
                    reason: "connection no longer connected".to_owned(),
                });
            }
        });
    }

    /// Frees lapin's runtime without blocking the actix thread.
    fn stopped(&mut self, _: &mut Context<Self>) {
        self.runtime.shut_down();
    }
}

impl Supervised for ConnectionSupervisor {
    /// Drops the current connection; `started` then connects again.
    fn restarting(&mut self, _: &mut Context<Self>) {
        warn!("broker connection supervisor restarting");
        self.connection = None;
        self.connecting = false;
    }
}

impl Handler<GetChannel> for ConnectionSupervisor {
    type Result = ResponseFuture<Result<Channel>>;

    fn handle(&mut self, _: GetChannel, ctx: &mut Context<Self>) -> Self::Result {
        if self.shut_down {
            return Box::pin(async { Err(Error::Shutdown) });
        }
        let (tx, rx) = oneshot::channel();
        match &self.connection {
            Some(conn) if conn.status().connected() => {
                let _ = tx.send(conn.clone());
            }
            _ => {
                self.waiters.push(tx);
                self.connect(ctx);
            }
        }
        Box::pin(async move {
            let conn = rx.await.map_err(|_| Error::Shutdown)?;
            Ok(conn.create_channel().await?)
        })
    }
}

impl Handler<Subscribe> for ConnectionSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        if self.connection.is_some() {
            msg.0.do_send(BrokerStatus::Connected {
                generation: self.generation,
            });
        }
        self.subscribers.push(msg.0);
    }
}

impl Handler<GetBrokerState> for ConnectionSupervisor {
    type Result = MessageResult<GetBrokerState>;

    fn handle(&mut self, _: GetBrokerState, _: &mut Context<Self>) -> Self::Result {
        MessageResult(BrokerState {
            connected: self
                .connection
                .as_ref()
                .is_some_and(|c| c.status().connected()),
            generation: self.generation,
            failed_attempts: self.failed_attempts,
            node: self.node,
            frame_max: self
                .connection
                .as_ref()
                .filter(|c| c.status().connected())
                .map_or(0, |c| c.configuration().frame_max()),
        })
    }
}

impl Handler<StopBroker> for ConnectionSupervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopBroker, _: &mut Context<Self>) -> Self::Result {
        self.shut_down = true;
        self.waiters.clear();
        self.metrics.set_connected(false);
        let conn = self.connection.take();
        let close = async move {
            if let Some(conn) = conn {
                let closing = conn.close(200, "actix-outbox shutting down".into());
                let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
            }
        };
        Box::pin(close.into_actor(self).map(|(), act, _| {
            act.runtime.shut_down();
            info!("broker connection closed");
        }))
    }
}

impl Handler<ConnectAttempt> for ConnectionSupervisor {
    type Result = ();

    fn handle(&mut self, msg: ConnectAttempt, ctx: &mut Context<Self>) {
        self.connecting = false;
        if self.shut_down {
            return;
        }
        match msg.0 {
            Ok(conn) => self.on_connected(conn, ctx),
            Err(e) => {
                let delay = self
                    .config
                    .reconnect()
                    .delay_with_jitter(self.failed_attempts);
                self.failed_attempts = self.failed_attempts.saturating_add(1);
                let failed = self.node_url();
                self.next_node();
                warn!(
                    url = %failed,
                    error = %e,
                    attempt = self.failed_attempts,
                    retry_in = ?delay,
                    "broker connection failed"
                );
                self.connecting = true;
                ctx.run_later(delay, |act, ctx| {
                    act.connecting = false;
                    act.connect(ctx);
                });
            }
        }
    }
}

impl Handler<ConnectionLost> for ConnectionSupervisor {
    type Result = ();

    fn handle(&mut self, msg: ConnectionLost, ctx: &mut Context<Self>) {
        if msg.generation != self.generation || self.connection.is_none() || self.shut_down {
            return; // a stale report about a connection already replaced
        }
        warn!(generation = msg.generation, reason = %msg.reason, url = %self.node_url(), "broker connection lost");
        self.connection = None;
        // The node may be the one that went away: the next attempt goes to the next one.
        self.next_node();
        self.broadcast(BrokerStatus::Lost {
            generation: msg.generation,
            reason: msg.reason,
        });
        self.connect(ctx);
    }
}

impl ConnectionSupervisor {
    /// Starts one connection attempt on lapin's runtime, unless one is under way.
    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.connecting || self.shut_down || self.connection.is_some() {
            return;
        }
        let Some(runtime) = self.runtime.get() else {
            return;
        };
        self.connecting = true;
        let handle = runtime.handle().clone();
        let url = self.config.url(self.node).to_owned();
        let timeout = self.config.connect_timeout();
        let props = ConnectionProperties::default()
            .with_connection_name(self.config.connection_name().into());
        let addr = ctx.address();
        debug!(url = %self.node_url(), "connecting to broker");
        runtime.spawn(async move {
            let lapin_rt = async_rs::Runtime::tokio_with_handle(handle);
            let attempt = Connection::connect_with_runtime(&url, props, lapin_rt);
            let result = match tokio::time::timeout(timeout, attempt).await {
                Ok(result) => result.map_err(Error::from),
                Err(_) => Err(Error::Timeout {
                    what: "connecting to the broker",
                    after: timeout,
                }),
            };
            addr.do_send(ConnectAttempt(result));
        });
    }

    /// Installs a fresh connection: watch it, serve waiting channel requests, tell subscribers.
    fn on_connected(&mut self, conn: Connection, ctx: &mut Context<Self>) {
        self.generation += 1;
        self.failed_attempts = 0;
        let generation = self.generation;
        let mut events = conn.events_listener();
        let addr = ctx.address();
        if let Some(runtime) = self.runtime.get() {
            runtime.spawn(async move {
                while let Some(event) = events.next().await {
                    // lapin reports a channel closed by the broker (a 404 on a passive
                    // declare, a 406 on a mismatched one) here too; that channel's owner
                    // sees it, and the connection and its other channels live on.
                    if let lapin::Event::Error(e) = event
                        && !e.is_amqp_soft_error()
                    {
                        addr.do_send(ConnectionLost {
                            generation,
                            reason: e.to_string(),
                        });
                        return;
                    }
                }
            });
        }
        let conn = Arc::new(conn);
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(conn.clone());
        }
        self.connection = Some(conn);
        info!(url = %self.node_url(), generation, "broker connected");
        self.broadcast(BrokerStatus::Connected { generation });
    }

    /// The URL of the current (or next) node, redacted.
    fn node_url(&self) -> String {
        actix_outbox::redact_url(self.config.url(self.node))
    }

    /// Moves to the next URL, round robin (a no-op with one).
    fn next_node(&mut self) {
        self.node = (self.node + 1) % self.config.node_count();
    }

    fn broadcast(&mut self, status: BrokerStatus) {
        match status {
            BrokerStatus::Connected { generation } => {
                self.metrics.set_connected(true);
                self.metrics.reconnects.increment(u64::from(generation > 1));
            }
            BrokerStatus::Lost { .. } => self.metrics.set_connected(false),
        }
        self.subscribers.retain(|s| s.connected());
        for s in &self.subscribers {
            s.do_send(status.clone());
        }
    }
}
