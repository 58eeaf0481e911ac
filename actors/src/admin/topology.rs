//! `topology check`: how a live broker compares with the [`Topology`] a worker needs.

use std::time::Duration;

use actix::Addr;
use actix_outbox::{Error, Result};
use serde::Serialize;

use crate::broker::{self, ConnectionSupervisor};
use crate::exchange::{ExchangeDef, QueueDef, Topology, declare_exchange_def, declare_queue_def};

/// What the check found for one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Finding {
    /// It exists with the expected kind and arguments.
    Matches,
    /// It does not exist (or this user may not see it).
    Missing(String),
    /// It exists with another kind or other arguments.
    Differs(String),
    /// It exists; its arguments could not be compared (the user lacks the `configure`
    /// permission the comparison needs).
    Exists(String),
    /// Not checkable over AMQP 0-9-1 (bindings): `rabbitmqctl list_bindings` shows them.
    Unchecked,
}

impl Finding {
    /// Whether the object is as the topology wants it (or could not be checked).
    #[must_use]
    pub fn is_ok(&self) -> bool {
        matches!(
            self,
            Finding::Matches | Finding::Exists(_) | Finding::Unchecked
        )
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Matches => f.write_str("ok"),
            Finding::Missing(why) => write!(f, "MISSING: {why}"),
            Finding::Differs(why) => write!(f, "DIFFERENT: {why}"),
            Finding::Exists(why) => write!(f, "exists (arguments not compared: {why})"),
            Finding::Unchecked => {
                f.write_str("not checkable over AMQP (rabbitmqctl list_bindings)")
            }
        }
    }
}

/// One object and its [`Finding`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ObjectCheck {
    /// `exchange`, `queue` or `binding`.
    pub object: &'static str,
    /// Its name (a binding: `queue <- exchange (key)`).
    pub name: String,
    /// What was found.
    #[serde(flatten)]
    pub finding: Finding,
}

/// Compares each exchange and queue of `topology` with the broker.
///
/// Each object is first declared passively (does it exist?), then — when it does — declared
/// again with the expected kind and arguments, which changes nothing on a matching object
/// and is refused on a different one. Each step runs on a channel of its own (a refusal
/// closes it). Bindings cannot be checked over AMQP 0-9-1 and are listed as
/// [`Finding::Unchecked`].
///
/// # Errors
///
/// [`Error::Timeout`] when no channel came within `wait` (the broker is unreachable).
pub async fn topology_check(
    broker: &Addr<ConnectionSupervisor>,
    topology: &Topology,
    wait: Duration,
) -> Result<Vec<ObjectCheck>> {
    let mut found = Vec::new();
    for e in &topology.exchanges {
        let finding = check(broker, wait, Object::Exchange(e)).await?;
        found.push(ObjectCheck {
            object: "exchange",
            name: e.name.clone(),
            finding,
        });
    }
    for q in &topology.queues {
        let finding = check(broker, wait, Object::Queue(q)).await?;
        found.push(ObjectCheck {
            object: "queue",
            name: q.name.clone(),
            finding,
        });
    }
    found.extend(topology.bindings.iter().map(|b| ObjectCheck {
        object: "binding",
        name: format!("{} <- {} ({:?})", b.destination, b.source, b.routing_key),
        finding: Finding::Unchecked,
    }));
    Ok(found)
}

#[derive(Clone, Copy)]
enum Object<'a> {
    Exchange(&'a ExchangeDef),
    Queue(&'a QueueDef),
}

async fn check(
    broker: &Addr<ConnectionSupervisor>,
    wait: Duration,
    object: Object<'_>,
) -> Result<Finding> {
    if let Err(e) = declare(broker, wait, object, true).await? {
        return Ok(Finding::Missing(e));
    }
    Ok(match declare(broker, wait, object, false).await? {
        Ok(()) => Finding::Matches,
        Err(e) if e.contains("ACCESS_REFUSED") => Finding::Exists(e),
        Err(e) => Finding::Differs(e),
    })
}

/// One declare on a fresh channel: the broker's refusal as `Ok(Err(text))`; only failing
/// to get a channel is an error.
async fn declare(
    broker: &Addr<ConnectionSupervisor>,
    wait: Duration,
    object: Object<'_>,
    passive: bool,
) -> Result<std::result::Result<(), String>> {
    let channel = broker::channel(broker, wait).await?;
    let done = match object {
        Object::Exchange(e) => declare_exchange_def(&channel, e, passive).await,
        Object::Queue(q) => declare_queue_def(&channel, q, passive).await,
    };
    super::moving::close(channel).await;
    Ok(done.map_err(|e| match e {
        Error::BrokerRefused { reason, .. } => reason,
        other => other.to_string(),
    }))
}
