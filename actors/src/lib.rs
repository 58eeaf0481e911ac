//! # actix-outbox-actors
//!
//! The moving parts of [actix-outbox](actix_outbox): the actors that relay outbox rows to
//! RabbitMQ and consume them into your handlers. This crate re-exports `actix_outbox`, so a
//! relay or worker process needs this one dependency.
#![doc = ""]

pub use actix_outbox;
pub use actix_outbox::prelude;
