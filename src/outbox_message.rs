//! The SeaORM entity of the outbox table: one row per emitted event.
//!
//! The entity's own table name is `outbox`; [`Outbox`](crate::Outbox) retargets statements to a
//! configured table name, so the same entity serves every table. Columns, in order:
//!
//! | column | meaning |
//! |---|---|
//! | `id` | insertion order (big integer, never reused) |
//! | `message_id` | UUID, becomes the AMQP message id (stable across re-sends, for dedupe) |
//! | `routing_key` | the topic routing key |
//! | `payload` | encoded payload bytes |
//! | `content_type` | how `payload` is encoded (`application/json`, …) |
//! | `headers` | JSON object: user headers and `x-outbox-tracking-ids` |
//! | `created_at` | when the row was inserted (database clock on PostgreSQL) |
//! | `send_after` | due time: the relay publishes no earlier (defaults to `created_at`) |
//! | `expires_at` | absolute deadline after which the event is dead-lettered, not handled |
//! | `attempts` | failed publish attempts |
//! | `last_error` | why the last publish attempt failed |
//! | `sent_at` | when the broker confirmed it (keep-mode only; otherwise the row is deleted) |
//! | `parked_at` | when the relay gave up after too many failed attempts |
//! | `ordering_key` | events of one key are published in `id` order, never overtaking (see `OutboxEvent::with_ordering_key`) |
#![allow(missing_docs)]

use sea_orm::entity::prelude::*;

/// One outbox row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub message_id: Uuid,
    pub routing_key: String,
    pub payload: Vec<u8>,
    pub content_type: String,
    pub headers: Json,
    pub created_at: DateTimeUtc,
    pub send_after: DateTimeUtc,
    pub expires_at: Option<DateTimeUtc>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub sent_at: Option<DateTimeUtc>,
    pub parked_at: Option<DateTimeUtc>,
    pub ordering_key: Option<String>,
}

/// The outbox table has no relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
