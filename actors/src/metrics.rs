//! Prometheus-style metrics, recorded through the [`metrics`] facade.
//!
//! Every actor records what it does with `metrics` handles it registers when it starts.
//! Without a recorder installed (the default) a record is a no-op call; install one (for
//! example `metrics-exporter-prometheus`'s `PrometheusBuilder`) **before** starting the actors,
//! since handles registered earlier stay no-ops. [`describe`] adds help texts and units; the
//! actors call it themselves when they start, so it is only needed for metrics exported
//! before that.
//!
//! Names and units follow Prometheus conventions (`_total` counters, `_seconds`, base units),
//! and labels stay low-cardinality: `table` (the outbox table), `queue` (a handler queue),
//! `outcome` (a fixed set), `connection` (the broker connection's name). Message ids and
//! routing keys never become labels.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `outbox_relay_published_total` | counter | table | messages confirmed by the broker (rows deleted or marked) |
//! | `outbox_relay_refused_total` | counter | table | publishes refused (nacked, or returned unroutable without an alternate exchange) |
//! | `outbox_relay_parked_total` | counter | table | rows parked (they need an operator) |
//! | `outbox_relay_unroutable_total` | counter | table | unroutable messages dropped (`Unroutable::Drop`) |
//! | `outbox_relay_expired_total` | counter | table | messages published after their deadline (dead-lettered by their queues) |
//! | `outbox_relay_released_total` | counter | table | rows released unconfirmed after a broker failure (sent again: duplicates) |
//! | `outbox_relay_errors_total` | counter | table | batches failed on a database or broker error |
//! | `outbox_relay_purged_total` | counter | table | sent rows purged (keep mode) |
//! | `outbox_relay_batch_duration_seconds` | histogram | table | one batch, claim to commit (batches that claimed rows) |
//! | `outbox_relay_claim_to_confirm_seconds` | histogram | table | from the claim to the last confirm of a batch |
//! | `outbox_relay_due_lag_seconds` | histogram | table | how long a batch's oldest row had been due when claimed |
//! | `outbox_backlog_rows` | gauge | table | rows due now and not yet sent (not parked) |
//! | `outbox_oldest_due_age_seconds` | gauge | table | how long the oldest due row has waited (0 when none) |
//! | `outbox_parked_rows` | gauge | table | parked rows in the table |
//! | `outbox_kept_rows` | gauge | table | sent rows kept for their retention (keep mode) |
//! | `outbox_relay_unroutable_queued` | gauge | table | messages waiting in `<exchange>.unroutable` |
//! | `outbox_relay_standby` | gauge | table | 1 while this relay stands by (SQLite: another holds the file) |
//! | `outbox_consumer_delivered_total` | counter | queue | deliveries received |
//! | `outbox_consumer_outcomes_total` | counter | queue, outcome | each finished delivery, by outcome (below) |
//! | `outbox_consumer_handler_duration_seconds` | histogram | queue | the handler's answer time |
//! | `outbox_consumer_in_flight` | gauge | queue | deliveries being handled |
//! | `outbox_consumer_dlq_depth` | gauge | queue | messages in `dlq_<queue>` |
//! | `outbox_consumer_reconnects_total` | counter | queue | times the consumer got consuming again after losing its channel |
//! | `outbox_broker_connected` | gauge | connection | connections up (supervisors sharing a connection name add up) |
//! | `outbox_broker_reconnects_total` | counter | connection | connections re-established after a loss |
//!
//! The gauges of the table (`outbox_backlog_rows` to `outbox_kept_rows`) are read by each relay
//! once per poll interval with four counts on the table's partial indexes. Outcomes: `ok`,
//! `retry`, `dead_letter`, `abort`, `undecodable`, `expired`, `panic`, `timeout`, `requeue`,
//! `unsettled` (the channel failed first), `redelivery_limit`, `recount` (a classic queue's
//! redelivery, published back with its count).

use std::sync::Once;
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, SharedString, Unit, counter, describe_counter, describe_gauge,
    describe_histogram, gauge, histogram,
};

/// Every outcome label of `outbox_consumer_outcomes_total`.
pub const OUTCOMES: [&str; 12] = [
    "ok",
    "retry",
    "dead_letter",
    "abort",
    "undecodable",
    "expired",
    "panic",
    "timeout",
    "requeue",
    "unsettled",
    "redelivery_limit",
    "recount",
];

/// Registers the help text and unit of every metric with the installed recorder (once per
/// process; later calls do nothing).
pub fn describe() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let c = |name: &'static str, help: &'static str| describe_counter!(name, Unit::Count, help);
        c(
            "outbox_relay_published_total",
            "Messages confirmed by the broker.",
        );
        c(
            "outbox_relay_refused_total",
            "Publishes the broker refused.",
        );
        c("outbox_relay_parked_total", "Rows parked for an operator.");
        c(
            "outbox_relay_unroutable_total",
            "Unroutable messages dropped.",
        );
        c(
            "outbox_relay_expired_total",
            "Messages published after their deadline.",
        );
        c(
            "outbox_relay_released_total",
            "Rows released unconfirmed after a broker failure.",
        );
        c(
            "outbox_relay_errors_total",
            "Batches failed on a database or broker error.",
        );
        c("outbox_relay_purged_total", "Sent rows purged (keep mode).");
        c("outbox_consumer_delivered_total", "Deliveries received.");
        c(
            "outbox_consumer_outcomes_total",
            "Finished deliveries by outcome.",
        );
        c(
            "outbox_consumer_reconnects_total",
            "Consumer channel re-established.",
        );
        c(
            "outbox_broker_reconnects_total",
            "Broker connection re-established.",
        );
        let s = |name: &'static str, help: &'static str| {
            describe_histogram!(name, Unit::Seconds, help);
        };
        s(
            "outbox_relay_batch_duration_seconds",
            "One relay batch, claim to commit.",
        );
        s(
            "outbox_relay_claim_to_confirm_seconds",
            "Claim to last confirm of a batch.",
        );
        s(
            "outbox_relay_due_lag_seconds",
            "How long a batch's oldest row had been due.",
        );
        s(
            "outbox_consumer_handler_duration_seconds",
            "The handler's answer time.",
        );
        describe_gauge!(
            "outbox_oldest_due_age_seconds",
            Unit::Seconds,
            "Age of the oldest due row."
        );
        let g = |name: &'static str, help: &'static str| describe_gauge!(name, Unit::Count, help);
        g("outbox_backlog_rows", "Rows due and not yet sent.");
        g("outbox_parked_rows", "Parked rows.");
        g("outbox_kept_rows", "Sent rows kept for their retention.");
        g(
            "outbox_relay_unroutable_queued",
            "Messages waiting in <exchange>.unroutable.",
        );
        g("outbox_relay_standby", "1 while the relay stands by.");
        g("outbox_consumer_in_flight", "Deliveries being handled.");
        g(
            "outbox_consumer_dlq_depth",
            "Messages in the dead-letter queue.",
        );
        g(
            "outbox_broker_connected",
            "1 while the broker connection is up.",
        );
    });
}

/// A counter registered at 0, so it shows before its first event.
fn zeroed(counter: Counter) -> Counter {
    counter.increment(0);
    counter
}

/// One relay's metric handles.
#[derive(Debug)]
pub(crate) struct RelayMetrics {
    pub(crate) published: Counter,
    pub(crate) refused: Counter,
    pub(crate) parked: Counter,
    pub(crate) unroutable: Counter,
    pub(crate) expired: Counter,
    pub(crate) released: Counter,
    pub(crate) errors: Counter,
    pub(crate) purged: Counter,
    pub(crate) batch_duration: Histogram,
    pub(crate) claim_to_confirm: Histogram,
    pub(crate) due_lag: Histogram,
    pub(crate) backlog: Gauge,
    pub(crate) oldest_due_age: Gauge,
    pub(crate) parked_rows: Gauge,
    pub(crate) kept_rows: Gauge,
    pub(crate) unroutable_queued: Gauge,
    pub(crate) standby: Gauge,
}

impl RelayMetrics {
    pub(crate) fn new(table: &str) -> Self {
        describe();
        let t = SharedString::from(table.to_owned());
        let c = |name: &'static str| zeroed(counter!(name, "table" => t.clone()));
        let h = |name: &'static str| histogram!(name, "table" => t.clone());
        let g = |name: &'static str| gauge!(name, "table" => t.clone());
        Self {
            published: c("outbox_relay_published_total"),
            refused: c("outbox_relay_refused_total"),
            parked: c("outbox_relay_parked_total"),
            unroutable: c("outbox_relay_unroutable_total"),
            expired: c("outbox_relay_expired_total"),
            released: c("outbox_relay_released_total"),
            errors: c("outbox_relay_errors_total"),
            purged: c("outbox_relay_purged_total"),
            batch_duration: h("outbox_relay_batch_duration_seconds"),
            claim_to_confirm: h("outbox_relay_claim_to_confirm_seconds"),
            due_lag: h("outbox_relay_due_lag_seconds"),
            backlog: g("outbox_backlog_rows"),
            oldest_due_age: g("outbox_oldest_due_age_seconds"),
            parked_rows: g("outbox_parked_rows"),
            kept_rows: g("outbox_kept_rows"),
            unroutable_queued: g("outbox_relay_unroutable_queued"),
            standby: g("outbox_relay_standby"),
        }
    }
}

/// One consumer's metric handles.
#[derive(Debug)]
pub(crate) struct ConsumerMetrics {
    pub(crate) delivered: Counter,
    /// One per [`OUTCOMES`] label, in that order.
    outcomes: Vec<Counter>,
    pub(crate) handler_duration: Histogram,
    pub(crate) in_flight: Gauge,
    pub(crate) dlq_depth: Gauge,
    pub(crate) reconnects: Counter,
}

impl ConsumerMetrics {
    pub(crate) fn new(queue: &str) -> Self {
        describe();
        let q = SharedString::from(queue.to_owned());
        let outcomes = OUTCOMES
            .iter()
            .map(|&o| {
                zeroed(counter!(
                    "outbox_consumer_outcomes_total",
                    "queue" => q.clone(),
                    "outcome" => o
                ))
            })
            .collect();
        Self {
            delivered: zeroed(counter!("outbox_consumer_delivered_total", "queue" => q.clone())),
            outcomes,
            handler_duration: histogram!(
                "outbox_consumer_handler_duration_seconds",
                "queue" => q.clone()
            ),
            in_flight: gauge!("outbox_consumer_in_flight", "queue" => q.clone()),
            dlq_depth: gauge!("outbox_consumer_dlq_depth", "queue" => q.clone()),
            reconnects: zeroed(counter!("outbox_consumer_reconnects_total", "queue" => q)),
        }
    }

    /// Counts one finished delivery under `outcome` (one of [`OUTCOMES`]).
    pub(crate) fn outcome(&self, outcome: &str, handler_time: Option<Duration>) {
        if let Some(i) = OUTCOMES.iter().position(|&o| o == outcome) {
            self.outcomes[i].increment(1);
        }
        if let Some(d) = handler_time {
            self.handler_duration.record(d.as_secs_f64());
        }
    }
}

/// One broker connection's metric handles.
#[derive(Debug)]
pub(crate) struct BrokerMetrics {
    /// Connections up under this name: supervisors sharing a connection name (the default)
    /// add up instead of overwriting each other.
    connected: Gauge,
    /// This supervisor's share of `connected`.
    up: bool,
    pub(crate) reconnects: Counter,
}

impl BrokerMetrics {
    pub(crate) fn new(connection: &str) -> Self {
        describe();
        let c = SharedString::from(connection.to_owned());
        let connected = gauge!("outbox_broker_connected", "connection" => c.clone());
        connected.increment(0.0);
        Self {
            connected,
            up: false,
            reconnects: zeroed(counter!("outbox_broker_reconnects_total", "connection" => c)),
        }
    }

    /// Counts this connection as up or down (idempotent).
    pub(crate) fn set_connected(&mut self, up: bool) {
        match (self.up, up) {
            (false, true) => self.connected.increment(1.0),
            (true, false) => self.connected.decrement(1.0),
            _ => {}
        }
        self.up = up;
    }
}

impl Drop for BrokerMetrics {
    fn drop(&mut self) {
        self.set_connected(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_distinct_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for o in OUTCOMES {
            assert!(seen.insert(o), "{o} twice");
            assert!(
                o.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{o}"
            );
        }
    }

    #[test]
    fn handles_work_without_a_recorder() {
        let relay = RelayMetrics::new("outbox");
        relay.published.increment(3);
        relay.backlog.set(2.0);
        let consumer = ConsumerMetrics::new("q");
        consumer.outcome("ok", Some(Duration::from_millis(3)));
        consumer.outcome("not-an-outcome", None);
        BrokerMetrics::new("c").reconnects.increment(1);
    }
}
