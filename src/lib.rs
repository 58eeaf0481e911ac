//! # actix-outbox
//!
//! The transactional outbox for actix + SeaORM + RabbitMQ: save a row and announce it
//! ("user.created") in **one** database transaction, and let a relay deliver the announcement
//! to RabbitMQ at least once — never lost, never invented.
//!
//! ## How it fits together
//!
//! ```text
//! app                        relay (actix-outbox-actors)       worker (actix-outbox-actors)
//!   txn.begin                  RelayActor --claim batch--> DB    ConsumerActor, one per queue
//!   insert business row        | publish with confirms          | decode Event<T>
//!   emit(&txn, key, &payload)  v                                v
//!   txn.commit --NOTIFY--> topic exchange --bindings--> queues --> your Handler<Event<T>>
//! ```
//!
//! 1. **Emit** — [`emit`] writes the event into the outbox table through your own
//!    transaction (any SeaORM [`ConnectionTrait`](sea_orm::ConnectionTrait)), so it commits or
//!    rolls back with your data. [`setup`] gets or creates the table: no migration needed.
//! 2. **Relay** — `RelayActor` (crate `actix-outbox-actors`) claims due rows, publishes them
//!    with publisher confirms and deletes them only once confirmed.
//! 3. **Consume** — `ConsumerActor` hands typed [`Event<T>`] messages to your actix actors;
//!    they answer with a [`HandlerResult`].
//!
//! An application that only emits depends on this crate alone; it does not pull in lapin.
//!
//! ## Modules of this crate
//!
//! - `outbox` — [`Outbox`], [`setup`], [`emit`], [`emit_event`], [`emit_many`].
//! - `outbox_event` — [`OutboxEvent`]: payload plus eta, expiration, headers, tracking ids.
//! - [`outbox_message`] — the SeaORM entity of the outbox table.
//! - `schema` — [`ddl`]: the statements `setup` runs per backend.
//! - `notify` — [`Outbox::set_notify`]: the PostgreSQL NOTIFY trigger as an on/off switch.
//! - `routing_key` / `binding_key` — [`RoutingKey`] validation, [`BindingKey`] wildcards.
//! - `table_name` — [`TableName`], a validated SQL identifier.
//! - `codec` — [`Codec`] (JSON, MessagePack, raw bytes) and [`RawPayload`].
//! - `event` / `outcome` — [`Event<T>`], [`HandlerError`], [`HandlerResult`].
//! - [`headers`] — the `x-outbox-*` header names.
//! - `duration` — [`parse_duration`] (`"500ms"`, `"1m30s"`).
//! - `redact` — [`redact_url`]: passwords never reach logs.
//! - `database` — [`DatabaseConfig`]: connecting without handing the URL to a log at any level.
//! - `error` — [`Error`], [`Result`].
//! - [`testing`] — test your handlers without a broker; wait for the outbox to drain.
//!
//! ## Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `postgres` | yes | PostgreSQL backend (SKIP LOCKED claims, NOTIFY wake-ups) |
//! | `sqlite` | yes | SQLite backend (embedded; one relay per file) |
//! | `msgpack` | no | MessagePack payloads ([`Codec::MsgPack`]) |
//! | `amqp` | no | broker error variant; turned on by `actix-outbox-actors` |
//! | `service-tests` | no | the test suites that need real PostgreSQL and RabbitMQ |
//!
//! ## Example
//!
//! ```no_run
//! use sea_orm::{Database, TransactionTrait};
//!
//! #[derive(serde::Serialize)]
//! struct UserCreated { id: u64, username: String }
//!
//! # async fn run() -> Result<(), actix_outbox::Error> {
//! let db = Database::connect("postgres://outbox:outbox@127.0.0.1:5432/outbox").await?;
//! actix_outbox::setup(&db).await?;
//!
//! let txn = db.begin().await?;
//! // ... insert the user row through `txn` ...
//! let user = UserCreated { id: 123, username: "johndoe".into() };
//! actix_outbox::emit(&txn, "user.created", &user).await?;
//! txn.commit().await?; // the event exists if and only if this commits
//! # Ok(())
//! # }
//! ```
#![doc = ""]
#![doc = include_str!("../migrations-free.md")]

mod binding_key;
mod codec;
mod database;
mod duration;
mod error;
mod event;
pub mod headers;
pub mod inbox;
#[cfg(feature = "migration")]
pub mod migration;
mod notify;
#[cfg(feature = "otel")]
pub mod otel;
mod outbox;
mod outbox_event;
pub mod outbox_message;
mod outcome;
mod parked;
mod redact;
mod routing_key;
mod schema;
mod table_name;
pub mod testing;

/// The SeaORM this crate is built against: `emit` and `setup` take its connection types, so
/// use `actix_outbox::sea_orm` (or pin the same version) to get matching types.
pub use sea_orm;

pub use binding_key::BindingKey;
pub use codec::{Codec, RawPayload};
pub use database::DatabaseConfig;
pub use duration::parse_duration;
pub use error::{Error, Result};
pub use event::Event;
pub use inbox::{Inbox, InboxCleanup};
pub use outbox::{Outbox, emit, emit_event, emit_many, setup};
pub use outbox_event::{MAX_TRACKING_IDS, OutboxEvent};
pub use outcome::{HandlerError, HandlerResult};
pub use parked::{Parked, ParkedRow};
pub use redact::redact_url;
pub use routing_key::{MAX_KEY_LEN, RoutingKey};
pub use schema::ddl;
pub use table_name::{MAX_TABLE_NAME_LEN, TableName};

#[doc(hidden)]
pub mod __private {
    //! Items shared with `actix-outbox-actors`; not part of the public API.
    pub use crate::duration::require_positive;
    pub use crate::event::{Received, received_event};
    pub use crate::notify::notify_state_query;
    pub use crate::redact::redact_unparsed;
    pub use crate::schema::{COLUMNS, name_missing_table, notify_channel_query};
}

/// The types most users need: `use actix_outbox::prelude::*;`.
pub mod prelude {
    pub use crate::{
        BindingKey, Codec, Error, Event, HandlerError, HandlerResult, Outbox, OutboxEvent,
        RoutingKey, TableName, emit, emit_event, emit_many, setup,
    };
}

/// The README's code blocks, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
