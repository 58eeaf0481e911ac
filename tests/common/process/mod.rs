//! The child-process harness of the fault matrix (`tests/fault_*.rs`) and of the soak
//! (`examples/fault_soak.rs`): the real `relay` and `fault_worker` programs run as child
//! processes against the test PostgreSQL and RabbitMQ, an emitter commits events at a fixed
//! rate, and the worker's record table is the ledger every check reads.
//!
//! - **Names and services** — [`Services`] (the two URLs) and [`Names`] (a case's own outbox
//!   table, record table, exchange and queue: cases never share broker or table state).
//! - **Processes** — [`example_binary`](child::example_binary) finds a built example next to
//!   the running test; [`ChildProcess`](child::ChildProcess) starts, SIGKILLs, SIGTERMs and
//!   restarts one, with a log file per generation. Children are killed when dropped, and when
//!   the test is panicking their log tails are printed, so a failed assertion shows what the
//!   processes said.
//! - **[`FaultRig`]** — one case: its relays and workers, emission ([`FaultRig::emit_backlog`],
//!   [`Emitter`]), the ledger ([`FaultRig::tally`], [`FaultRig::wait_recovered`]) and
//!   [`FaultRig::finish`], the end-of-case checks (outbox empty, queue empty, dead letters
//!   exactly as expected, nothing unroutable, clean exits, none lost).
//! - **Service faults** — [`rabbitmqctl`], [`restart_postgres`] and [`restart_mariadb`], each
//!   waiting (bounded)
//!   until the service is back before returning.
//!
//! The code is split by concern: `child.rs` (child processes and binary lookup), `rig.rs`
//! (the rig, its processes, broker queues and end-of-case checks), `ledger.rs` (the ledger
//! queries, [`Tally`] and [`report`]), `emitter.rs` (the paced emitter) and `services.rs`
//! (broker and PostgreSQL restarts). This file re-exports what the tests and the soak use.
//!
//! Self-contained on purpose (nothing from outside this directory): the soak driver includes
//! this module with `#[path]`, so the tests and the soak count messages the same way.
#![allow(dead_code, unreachable_pub, missing_docs)]

mod child;
mod emitter;
mod ledger;
mod rig;
mod services;

use std::future::Future;
use std::time::{Duration, Instant};

use uuid::Uuid;

// What the tests and the soak name; each test binary uses only some of it.
#[allow(unused_imports)]
pub use child::{ChildProcess, example_binary};
#[allow(unused_imports)]
pub use emitter::{EmitPlan, Emitter};
#[allow(unused_imports)]
pub use ledger::{Tally, report};
#[allow(unused_imports)]
pub use rig::{FaultRig, WorkerOptions};
#[allow(unused_imports)]
pub use services::{rabbitmqctl, restart_broker, restart_mariadb, restart_postgres};

// ------------------------------------------------------------------ names and services ---

/// The services every case runs against.
#[derive(Debug, Clone)]
pub struct Services {
    pub database_url: String,
    pub amqp_url: String,
}

impl Services {
    /// Reads `DATABASE_URL` and `AMQP_URL`, failing loudly when either is missing.
    pub fn from_env() -> Self {
        Self {
            database_url: require_env("DATABASE_URL"),
            amqp_url: require_env("AMQP_URL"),
        }
    }
}

fn require_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set. The fault matrix needs real PostgreSQL and RabbitMQ: run \
             `scripts/test`, or start them with `scripts/services` and export the URLs it prints."
        ),
    }
}

/// One case's own tables, exchange and queue.
#[derive(Debug, Clone)]
pub struct Names {
    /// The outbox table the emitter writes and the relays drain.
    pub outbox_table: String,
    /// The workers' record table (the ledger).
    pub seen_table: String,
    /// The topic exchange.
    pub exchange: String,
    /// The queue every worker of the case consumes.
    pub queue: String,
}

impl Names {
    /// Names tagged with `case` (letters and digits, at most 12) and a random suffix.
    pub fn new(case: &str) -> Self {
        let id = Uuid::now_v7().simple().to_string();
        let id = &id[id.len() - 10..];
        let tag: String = case
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect::<String>()
            .to_ascii_lowercase();
        Self {
            outbox_table: format!("fo_{tag}_{id}"),
            seen_table: format!("fs_{tag}_{id}"),
            exchange: format!("fx_{tag}_{id}"),
            queue: format!("fq_{tag}_{id}"),
        }
    }

    /// The queue's dead-letter queue.
    pub fn dlq(&self) -> String {
        format!("dlq_{}", self.queue)
    }

    /// Where the exchange's unroutable messages go.
    pub fn unroutable(&self) -> String {
        format!("{}.unroutable", self.exchange)
    }

    /// The retry delay exchange and queue for `ms`.
    pub fn delay(&self, ms: u64) -> String {
        format!("{}.retry.{ms}ms", self.exchange)
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout` naming
/// `what`. The one bounded wait of every test (`common::wait_for` is this function).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deletes `queues` and `exchanges` on a channel of its own (best effort: what is already gone
/// is fine), then closes that channel and `conn`, each bounded by 5 s.
pub async fn delete_topology(conn: lapin::Connection, queues: &[String], exchanges: &[String]) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    if let Ok(channel) = conn.create_channel().await {
        for q in queues {
            let _ = channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for e in exchanges {
            let _ = channel
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        // Closed, not dropped, before the connection: see `broker::close_channel` (this
        // module is also built into examples that do not have `broker`).
        let closing = channel.close(200, "".into());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), closing).await;
    }
    let closing = conn.close(200, "".into());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), closing).await;
}
