//! # actix-outbox-actors
//!
//! The moving parts of [actix-outbox](actix_outbox): the actors that relay outbox rows to
//! RabbitMQ and consume them into your handlers. This crate re-exports `actix_outbox` (and the
//! `sea_orm` and `lapin` its signatures use), so a relay or worker process needs this one
//! dependency.
//!
//! ## The wings
//!
//! ```text
//!            broker/  ConnectionSupervisor: the connection, channels, reconnects
//!              ▲  ▲
//!   channels   │  │   channels
//!        relay/       worker/
//!  RelayActor:        Worker → one consumer actor per queue:
//!  claim → publish    deliver → decode → your Handler<Event<T>>
//!  → confirm → settle → fate (ack / retry / dead-letter) → settle
//!              ╲      ╱
//!             exchange/  what both must agree on: the topic exchange, unroutable
//!                        handling, declare-or-check, object names, header tables
//! ```
//!
//! - **broker** — [`ConnectionSupervisor`] owns the RabbitMQ connection (on its own small
//!   runtime), hands out channels, reconnects with backoff and jitter, tells subscribers
//!   ([`BrokerStatus`]); [`BrokerConfig`].
//! - **relay** — [`RelayActor`] claims due outbox rows in batches, publishes them to the topic
//!   exchange with publisher confirms and `mandatory`, deletes (or marks) them once confirmed.
//!   Wakes on PostgreSQL NOTIFY, a poll, and the next due row; [`RelayConfig`].
//! - **worker** — a [`Worker`] (handlers registered with [`Listen`] binding keys) runs one
//!   consumer actor per queue: it decodes [`Event<T>`](actix_outbox::Event) for your
//!   `Handler<Event<T>>` actor, acks after it, retries through TTL delay queues,
//!   dead-letters to `dlq_<queue>`, restarts factory-made handlers after a panic, reconnects by
//!   itself and drains on [`RunningWorker::stop`]; [`WorkerConfig`].
//! - **exchange** — [`TopologyMode`] and [`Unroutable`], shared by both configs; relay and
//!   worker import from it and never from each other.
//! - **health** — [`health::Health`]: liveness and readiness of the database, broker
//!   connections, relays and workers of a process, for `/health` endpoints.
//! - **metrics** — every actor records Prometheus-style metrics through the `metrics` facade
//!   (no-ops until you install a recorder); the module lists them.
//! - `backoff` (exponential backoff with jitter, one validation) and `shutdown`
//!   ([`shutdown_signal`]) serve all three.
//!
//! ## Running a relay
//!
//! ```no_run
//! use actix_outbox_actors::prelude::*;
//! use actix::Actor;
//!
//! #[actix::main]
//! async fn main() -> Result<(), actix_outbox::Error> {
//!     let db = sea_orm::Database::connect("postgres://outbox:outbox@127.0.0.1:5432/outbox").await?;
//!     actix_outbox::setup(&db).await?;
//!     let broker = ConnectionSupervisor::start_supervised(BrokerConfig::from_env()?)?;
//!     let relay = RelayActor::new(db.clone(), broker.clone(), RelayConfig::default())?.start();
//!     tokio::signal::ctrl_c().await.ok();
//!     relay.send(StopRelay).await?;    // finish the batch in flight
//!     broker.send(StopBroker).await?;  // then the broker connection
//!     db.close().await?;               // then the database
//!     Ok(())
//! }
//! ```
//!
//! Shut down in that order — relay, broker connection, database — so nothing holds a pooled
//! connection or an open transaction when the System stops.
#![doc = ""]

pub mod admin;
mod backoff;
pub mod broker;
pub mod exchange;
pub mod health;
pub mod metrics;
pub mod relay;
mod shutdown;
pub mod worker;

pub use actix_outbox;
/// The SeaORM this crate is built against: [`RelayActor::new`] takes its
/// `DatabaseConnection`.
pub use actix_outbox::sea_orm;
/// The lapin this crate is built against: [`GetChannel`] answers with its `Channel`, and
/// [`Error::Amqp`](actix_outbox::Error::Amqp) wraps its error.
pub use lapin;

pub use broker::{
    BrokerConfig, BrokerState, BrokerStatus, ConnectionSupervisor, GetBrokerState, GetChannel,
    StopBroker, Subscribe,
};
pub use exchange::{Topology, TopologyMode, Unroutable};
pub use relay::{
    Cleanup, GetRelayStats, MYSQL_POLL_INTERVAL, RABBITMQ_MAX_MESSAGE_BYTES, RelayActor,
    RelayConfig, RelayStats, StopRelay, WakeUp,
};
pub use shutdown::shutdown_signal;
pub use worker::{
    ConsumerStats, HandlerSource, IntoHandler, Listen, QueueType, RetryDelay, RunningWorker,
    Worker, WorkerConfig, WorkerProbe,
};

/// The types most relay and worker processes need: `use actix_outbox_actors::prelude::*;`
/// (includes [`actix_outbox::prelude`]).
pub mod prelude {
    pub use actix_outbox::prelude::*;

    pub use crate::{
        BrokerConfig, ConnectionSupervisor, Listen, RelayActor, RelayConfig, RunningWorker,
        StopBroker, StopRelay, Worker, WorkerConfig,
    };
}

/// Guides: how actix-outbox behaves and how to run it (the markdown files in `docs/`).
pub mod guides {
    #[doc = include_str!("../../docs/delivery-guarantees.md")]
    pub mod delivery_guarantees {}
    #[doc = include_str!("../../docs/retries-and-dead-letters.md")]
    pub mod retries_and_dead_letters {}
    #[doc = include_str!("../../docs/production.md")]
    pub mod production {}
    #[doc = include_str!("../../docs/tuning.md")]
    pub mod tuning {}
    #[doc = include_str!("../../docs/observing.md")]
    pub mod observing {}
    #[doc = include_str!("../../migrations-free.md")]
    pub mod migrations_free {}
}
