//! What an operator asks of a running outbox, as library calls: the `actix-outbox` command
//! (feature `cli`) is built on them, and an application can call them from an admin endpoint.
//!
//! Parked rows are handled by the emit side's [`Outbox::parked`](actix_outbox::Outbox::parked),
//! [`Outbox::retry_parked`](actix_outbox::Outbox::retry_parked) and
//! [`Outbox::discard_parked`](actix_outbox::Outbox::discard_parked); this module adds what
//! needs the relay's SQL or the broker.

use std::time::Duration;

use actix::Addr;
use actix_outbox::{Error, Result, TableName};
use sea_orm::DatabaseConnection;
use serde::Serialize;

use crate::broker::{self, ConnectionSupervisor};
use crate::exchange::{dead_letter_queue, delay_name, unroutable_name};
use crate::relay::{RelaySql, gauges};

mod dead_letters;
mod moving;
mod topology;
mod unroutable;

pub use dead_letters::{
    DeadLetter, ReplayOptions, dlq_list, dlq_purge, dlq_replay, dlq_replay_ordered,
};
pub use moving::Progress;
pub use topology::{Finding, ObjectCheck, topology_check};
pub use unroutable::{UnroutableReplay, unroutable_replay};

/// What the outbox table holds now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TableStatus {
    /// The table.
    pub table: String,
    /// Rows due now, not sent and not parked.
    pub due: u64,
    /// How long the oldest of them has waited, in seconds (0 when none).
    pub oldest_due_age_seconds: f64,
    /// Parked rows (they wait for an operator).
    pub parked: u64,
    /// Sent rows kept for their retention (keep mode).
    pub kept: u64,
}

/// Reads the table's counts: four counts on its partial indexes.
///
/// # Errors
///
/// [`Error::UnsupportedBackend`] for a database the relay does not support,
/// [`Error::SchemaMismatch`] when the table does not exist (run `setup`), [`Error::Db`] when
/// a query fails.
pub async fn table_status(db: &DatabaseConnection, table: &TableName) -> Result<TableStatus> {
    let backend = db.get_database_backend();
    if !crate::relay::supported(backend) {
        return Err(Error::UnsupportedBackend(format!("{backend:?}")));
    }
    let g = gauges(db, &RelaySql::new(backend, table.clone())).await;
    let g = actix_outbox::__private::name_missing_table(db, table, g).await?;
    Ok(TableStatus {
        table: table.to_string(),
        due: g.due,
        oldest_due_age_seconds: g.oldest_due_age.as_secs_f64(),
        parked: g.parked,
        kept: g.kept,
    })
}

/// One handler queue on the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct QueueStatus {
    /// The queue.
    pub queue: String,
    /// Messages ready in it.
    pub ready: u32,
    /// Consumers on it.
    pub consumers: u32,
    /// Messages in `dlq_<queue>` (`None` when that queue does not exist).
    pub dead_letters: Option<u32>,
}

/// Counts of `queue` and its dead-letter queue, each asked on a throwaway channel.
///
/// # Errors
///
/// [`Error::Amqp`] when the queue does not exist (the broker answers 404), [`Error::Timeout`]
/// when no channel came within `wait`.
pub async fn queue_status(
    broker: &Addr<ConnectionSupervisor>,
    queue: &str,
    wait: Duration,
) -> Result<QueueStatus> {
    let (ready, consumers) = broker::queue_counts(broker, wait, queue).await?;
    let dead_letters = waiting_in(broker, &dead_letter_queue(queue), wait).await?;
    Ok(QueueStatus {
        queue: queue.to_owned(),
        ready,
        consumers,
        dead_letters,
    })
}

/// One retry delay queue (`<exchange>.retry.<ms>ms`), shared by every handler queue that
/// retries after that delay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DelayQueueStatus {
    /// The delay queue.
    pub queue: String,
    /// The delay, in milliseconds.
    pub delay_ms: u64,
    /// Retry copies waiting out their delay in it (`None` when it does not exist).
    pub waiting: Option<u32>,
}

/// The delay queues of `exchange` for `delays` (a worker's retry delays), each asked on a
/// throwaway channel.
///
/// # Errors
///
/// [`Error::Timeout`] when no channel came within `wait` (the broker is unreachable).
pub async fn delay_queues(
    broker: &Addr<ConnectionSupervisor>,
    exchange: &str,
    delays: &[Duration],
    wait: Duration,
) -> Result<Vec<DelayQueueStatus>> {
    let mut found = Vec::new();
    let mut delays = delays.to_vec();
    delays.sort();
    delays.dedup();
    for delay in delays {
        let queue = delay_name(exchange, delay);
        let waiting = waiting_in(broker, &queue, wait).await?;
        found.push(DelayQueueStatus {
            queue,
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            waiting,
        });
    }
    Ok(found)
}

/// Messages waiting in `<exchange>.unroutable` (`None` when that queue does not exist: the
/// relay then runs without an alternate exchange).
///
/// # Errors
///
/// [`Error::Timeout`] when no channel came within `wait` (the broker is unreachable).
pub async fn unroutable_waiting(
    broker: &Addr<ConnectionSupervisor>,
    exchange: &str,
    wait: Duration,
) -> Result<Option<u32>> {
    waiting_in(broker, &unroutable_name(exchange), wait).await
}

/// Messages ready in `queue`, `None` when it does not exist (the broker answers 404).
async fn waiting_in(
    broker: &Addr<ConnectionSupervisor>,
    queue: &str,
    wait: Duration,
) -> Result<Option<u32>> {
    match broker::queue_counts(broker, wait, queue).await {
        Ok((n, _)) => Ok(Some(n)),
        Err(Error::Amqp(_)) => Ok(None),
        Err(e) => Err(e),
    }
}
