//! # actix-outbox-actors
//!
//! The moving parts of [actix-outbox](actix_outbox): the actors that relay outbox rows to
//! RabbitMQ and consume them into your handlers. This crate re-exports `actix_outbox`, so a
//! relay or worker process needs this one dependency.
//!
//! ## Actors
//!
//! - [`ConnectionSupervisor`] — owns the RabbitMQ connection, hands out channels, reconnects
//!   with backoff and jitter, tells subscribers ([`BrokerStatus`]).
//! - [`RelayActor`] — claims due outbox rows in batches, publishes them to the topic exchange
//!   with publisher confirms and `mandatory`, deletes (or marks) them once confirmed. Wakes on
//!   PostgreSQL NOTIFY, a poll, and the next due row.
//! - [`ConsumerActor`] — one per queue, started by a [`Worker`] (handlers registered with
//!   [`Listen`] binding keys): decodes [`Event<T>`](actix_outbox::Event) for your
//!   `Handler<Event<T>>` actor, acks after it, retries through TTL delay queues, dead-letters
//!   to `dlq_<queue>`, restarts factory-made handlers after a panic, reconnects by itself and
//!   drains on [`RunningWorker::stop`].
//!
//! ## Running a relay
//!
//! ```no_run
//! use actix_outbox_actors::{BrokerConfig, ConnectionSupervisor, RelayActor, RelayConfig, StopRelay};
//! use actix::Actor;
//!
//! #[actix::main]
//! async fn main() -> Result<(), actix_outbox::Error> {
//!     let db = sea_orm::Database::connect("postgres://outbox:outbox@127.0.0.1:5432/outbox").await?;
//!     actix_outbox::setup(&db).await?;
//!     let broker = ConnectionSupervisor::start_supervised(BrokerConfig::from_env()?)?;
//!     let relay = RelayActor::new(db.clone(), broker.clone(), RelayConfig::default())?.start();
//!     tokio::signal::ctrl_c().await.ok();
//!     relay.send(StopRelay).await?;                       // finish the batch in flight
//!     broker.send(actix_outbox_actors::Shutdown).await?;  // then the broker connection
//!     db.close().await?;                                   // then the database
//!     Ok(())
//! }
//! ```
//!
//! Shut down in that order — relay, broker connection, database — so nothing holds a pooled
//! connection or an open transaction when the System stops.
#![doc = ""]

mod amqp_name;
mod backoff;
mod broker_config;
mod connection_supervisor;
mod consumer_actor;
mod consumer_delivery;
mod consumer_envelope;
mod consumer_handler;
mod consumer_stats;
mod envelope;
mod notify_listener;
mod relay_actor;
mod relay_batch;
mod relay_config;
mod relay_sql;
mod retry_policy;
mod shutdown;
mod topology;
mod worker;
mod worker_config;
mod worker_listen;
mod worker_topology;

pub use actix_outbox;
pub use actix_outbox::prelude;
pub use backoff::Backoff;
pub use broker_config::BrokerConfig;
pub use connection_supervisor::{
    BrokerState, BrokerStatus, ConnectionSupervisor, GetBrokerState, GetChannel, Shutdown,
    Subscribe,
};
pub use consumer_actor::{ConsumerActor, GetConsumerStats, StopConsumer};
pub use consumer_handler::{HandlerSource, IntoHandler};
pub use consumer_stats::ConsumerStats;
pub use relay_actor::{GetRelayStats, RelayActor, RelayStats, StopRelay, WakeUp};
pub use relay_config::{
    Cleanup, RABBITMQ_MAX_MESSAGE_BYTES, RelayConfig, TopologyMode, Unroutable,
};
pub use retry_policy::RetryDelay;
pub use shutdown::shutdown_signal;
pub use worker::{RunningWorker, Worker};
pub use worker_config::{QueueType, WorkerConfig};
pub use worker_listen::Listen;

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
    #[doc = include_str!("../../migrations-free.md")]
    pub mod migrations_free {}
}
