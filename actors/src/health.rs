//! Liveness and readiness of a process that runs relays and workers, for `/health`
//! endpoints and orchestrators.
//!
//! A [`Health`] names what to look at (the database, broker connections, relays, workers)
//! and [`Health::check`] asks each of them, each bounded by a timeout, at once:
//!
//! | part | live when | ready when |
//! |---|---|---|
//! | database | always (the relay rides out outages) | a ping answers |
//! | broker connection | its supervisor answers | connected |
//! | relay | it answers | the oldest due row waited less than `max_backlog_age` (as of its last housekeeping round) |
//! | worker | every consumer answers | every consumer consumes |
//!
//! *Live* means "the actors run": restart the process if not. *Ready* means "it does its
//! work now": route traffic or alert on it. A relay standing by (SQLite: another relay holds
//! the file) is ready; its detail says so.
//!
//! ```no_run
//! # async fn demo(
//! #     db: sea_orm::DatabaseConnection,
//! #     broker: actix::Addr<actix_outbox_actors::ConnectionSupervisor>,
//! #     relay: actix::Addr<actix_outbox_actors::RelayActor>,
//! #     worker: &actix_outbox_actors::RunningWorker,
//! # ) {
//! use std::time::Duration;
//! use actix_outbox_actors::health::Health;
//!
//! let health = Health::new()
//!     .with_database("database", db)
//!     .with_broker("broker", broker)
//!     .with_relay("relay", relay)
//!     .with_worker("worker", worker.probe())
//!     .with_max_backlog_age(Duration::from_secs(60));
//! let report = health.check().await;
//! println!("ready: {}, {}", report.ready, serde_json::to_string(&report).unwrap());
//! # }
//! ```

use std::time::Duration;

use actix::Addr;
use futures_util::future::join_all;
use sea_orm::DatabaseConnection;
use serde::Serialize;

use crate::broker::{ConnectionSupervisor, GetBrokerState};
use crate::relay::{GetRelayStats, RelayActor};
use crate::worker::WorkerProbe;

/// What to check; cheap to clone (every part is an address or a pool).
#[derive(Debug, Clone)]
pub struct Health {
    parts: Vec<(String, Part)>,
    max_backlog_age: Duration,
    timeout: Duration,
}

#[derive(Debug, Clone)]
enum Part {
    Database(DatabaseConnection),
    Broker(Addr<ConnectionSupervisor>),
    Relay(Addr<RelayActor>),
    Worker(WorkerProbe),
}

/// The answer of one part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PartHealth {
    /// The name given when the part was added.
    pub name: String,
    /// Its actors answered.
    pub live: bool,
    /// It does its work now.
    pub ready: bool,
    /// What was found, for people.
    pub detail: String,
}

/// The answer of a [`Health::check`]: serializable as the body of a `/health` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// Every part is live.
    pub live: bool,
    /// Every part is ready.
    pub ready: bool,
    /// Each part's answer, in the order added.
    pub parts: Vec<PartHealth>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Nothing to check yet; backlog age bound 5 min, 2 s per answer.
    #[must_use]
    pub fn new() -> Self {
        Self {
            parts: Vec::new(),
            max_backlog_age: Duration::from_secs(300),
            timeout: Duration::from_secs(2),
        }
    }

    /// Pings this database.
    #[must_use]
    pub fn with_database(mut self, name: impl Into<String>, db: DatabaseConnection) -> Self {
        self.parts.push((name.into(), Part::Database(db)));
        self
    }

    /// Checks this broker connection.
    #[must_use]
    pub fn with_broker(
        mut self,
        name: impl Into<String>,
        broker: Addr<ConnectionSupervisor>,
    ) -> Self {
        self.parts.push((name.into(), Part::Broker(broker)));
        self
    }

    /// Checks this relay and the age of its table's oldest due row.
    #[must_use]
    pub fn with_relay(mut self, name: impl Into<String>, relay: Addr<RelayActor>) -> Self {
        self.parts.push((name.into(), Part::Relay(relay)));
        self
    }

    /// Checks every consumer of a worker ([`RunningWorker::probe`](crate::RunningWorker::probe)).
    #[must_use]
    pub fn with_worker(mut self, name: impl Into<String>, worker: WorkerProbe) -> Self {
        self.parts.push((name.into(), Part::Worker(worker)));
        self
    }

    /// A relay is not ready once the oldest due row of its table has waited longer than
    /// `age`. Defaults to 5 min; set it above your slowest expected catch-up.
    #[must_use]
    pub fn with_max_backlog_age(mut self, age: Duration) -> Self {
        self.max_backlog_age = age;
        self
    }

    /// How long each part may take to answer before it counts as not live. Defaults to 2 s.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Asks every part at once and collects the answers.
    pub async fn check(&self) -> HealthReport {
        let parts = join_all(
            self.parts
                .iter()
                .map(|(name, part)| self.check_part(name, part)),
        )
        .await;
        HealthReport {
            live: parts.iter().all(|p| p.live),
            ready: parts.iter().all(|p| p.ready),
            parts,
        }
    }

    async fn check_part(&self, name: &str, part: &Part) -> PartHealth {
        let (live, ready, detail) = match part {
            Part::Database(db) => match tokio::time::timeout(self.timeout, db.ping()).await {
                Ok(Ok(())) => (true, true, "reachable".to_owned()),
                Ok(Err(e)) => (true, false, format!("unreachable: {e}")),
                Err(_) => (true, false, format!("no answer within {:?}", self.timeout)),
            },
            Part::Broker(addr) => match self.ask(addr.send(GetBrokerState)).await {
                Some(s) if s.connected => (
                    true,
                    true,
                    format!("connected (generation {})", s.generation),
                ),
                Some(s) => (
                    true,
                    false,
                    format!("not connected ({} failed attempts)", s.failed_attempts),
                ),
                None => self.silent(),
            },
            Part::Relay(addr) => match self.ask(addr.send(GetRelayStats)).await {
                Some(s) => relay_health(&s, self.max_backlog_age),
                None => self.silent(),
            },
            Part::Worker(probe) => {
                let consumers = tokio::time::timeout(self.timeout, probe.stats()).await;
                match consumers {
                    Ok(stats) if stats.len() == probe.len() => {
                        let idle: Vec<&str> = stats
                            .iter()
                            .filter(|(_, s)| !s.consuming)
                            .map(|(q, _)| q.as_str())
                            .collect();
                        match idle.is_empty() {
                            true => (true, true, format!("{} queues consuming", stats.len())),
                            false => (true, false, format!("not consuming: {}", idle.join(", "))),
                        }
                    }
                    Ok(stats) => (
                        false,
                        false,
                        format!("{} of {} consumers answered", stats.len(), probe.len()),
                    ),
                    Err(_) => self.silent(),
                }
            }
        };
        PartHealth {
            name: name.to_owned(),
            live,
            ready,
            detail,
        }
    }

    async fn ask<T, E>(&self, answer: impl Future<Output = Result<T, E>>) -> Option<T> {
        tokio::time::timeout(self.timeout, answer).await.ok()?.ok()
    }

    fn silent(&self) -> (bool, bool, String) {
        (false, false, format!("no answer within {:?}", self.timeout))
    }
}

/// A relay's readiness from its counters.
fn relay_health(s: &crate::RelayStats, max_age: Duration) -> (bool, bool, String) {
    if s.standby {
        return (
            true,
            true,
            "standing by (another relay drains the file)".to_owned(),
        );
    }
    let age = s.oldest_due_age;
    match age > max_age {
        true => (
            true,
            false,
            format!(
                "the oldest due row waited {age:?} (more than {max_age:?}); backlog {}",
                s.backlog
            ),
        ),
        false => (
            true,
            true,
            format!("backlog {}, oldest due {age:?}", s.backlog),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_is_ready_until_its_backlog_is_too_old() {
        let mut s = crate::RelayStats::default();
        assert!(relay_health(&s, Duration::from_secs(60)).1);
        s.oldest_due_age = Duration::from_secs(61);
        s.backlog = 7;
        let (live, ready, detail) = relay_health(&s, Duration::from_secs(60));
        assert!(live && !ready, "{detail}");
        assert!(detail.contains("backlog 7"), "{detail}");
        s.standby = true;
        assert!(
            relay_health(&s, Duration::from_secs(60)).1,
            "a spare is ready"
        );
    }
}
