//! Helpers for testing your own handlers and services, with or without a broker.
//!
//! - [`deliver`] hands an already-decoded [`Event`] to a handler actor and returns its
//!   [`HandlerResult`], with a stopped or panicked actor turned into a failure as the worker
//!   does — no RabbitMQ needed. It stops there: decoding the payload, retry tiers, deadlines
//!   and dead-lettering are the worker's, and are tested in its own suite.
//! - [`wait_until_drained`] waits, with a timeout, until a relay has emptied the outbox
//!   table: for integration tests of services that emit.
//!
//! # Examples
//!
//! Unit-testing a handler:
//!
//! ```
//! use actix::prelude::*;
//! use actix_outbox::testing::deliver;
//! use actix_outbox::{Event, HandlerError, HandlerResult};
//!
//! #[derive(serde::Deserialize)]
//! struct UserCreated { id: u64 }
//!
//! struct WelcomeMailer;
//! impl Actor for WelcomeMailer { type Context = Context<Self>; }
//! impl Handler<Event<UserCreated>> for WelcomeMailer {
//!     type Result = HandlerResult;
//!     fn handle(&mut self, event: Event<UserCreated>, _: &mut Context<Self>) -> HandlerResult {
//!         if event.payload().id == 0 {
//!             return Err(HandlerError::reject("user 0 does not exist"));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # actix::System::new().block_on(async {
//! let mailer = WelcomeMailer.start();
//! let ok = deliver(&mailer, Event::new("user.created", UserCreated { id: 7 })).await;
//! assert!(ok.is_ok());
//! let retried = Event::new("user.created", UserCreated { id: 0 }).with_attempt(2);
//! assert!(matches!(deliver(&mailer, retried).await, Err(HandlerError::Reject(_))));
//! # });
//! ```

use std::time::{Duration, Instant};

use actix::{Actor, Addr, Handler};
use sea_orm::{ConnectionTrait, Statement};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::outcome::{HandlerError, HandlerResult};
use crate::table_name::TableName;

/// Sends `event` to the handler actor at `addr` and returns its outcome. A handler that
/// stopped or panicked (its mailbox closed) yields [`HandlerError::Failed`], which the worker
/// would count as a failed attempt. What the worker then does with the outcome (retry,
/// dead-letter, ack) is not simulated.
pub async fn deliver<A, T>(addr: &Addr<A>, event: Event<T>) -> HandlerResult
where
    A: Actor + Handler<Event<T>>,
    A::Context: actix::dev::ToEnvelope<A, Event<T>>,
    T: Send + 'static,
{
    match addr.send(event).await {
        Ok(outcome) => outcome,
        Err(e) => Err(HandlerError::failed(format!(
            "handler actor unavailable: {e}"
        ))),
    }
}

/// Waits until `table` holds no unsent, unparked row, polling every 20 ms.
///
/// # Errors
///
/// [`Error::Timeout`] after `timeout`, [`Error::Db`] when the count query fails.
pub async fn wait_until_drained<C: ConnectionTrait>(
    db: &C,
    table: &TableName,
    timeout: Duration,
) -> Result<()> {
    let sql = format!(
        "SELECT count(*) AS pending FROM {table} WHERE sent_at IS NULL AND parked_at IS NULL"
    );
    let backend = db.get_database_backend();
    let start = Instant::now();
    loop {
        let pending: i64 = db
            .query_one_raw(Statement::from_string(backend, sql.clone()))
            .await?
            .map(|row| row.try_get("", "pending"))
            .transpose()?
            .unwrap_or(0);
        if pending == 0 {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                what: "waiting for the outbox table to drain",
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
