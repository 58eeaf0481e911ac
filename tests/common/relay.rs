//! Starting and stopping a relay in a test.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::time::Duration;

use actix::{Actor, Addr};
use actix_outbox_actors::{
    BrokerConfig, ConnectionSupervisor, GetRelayStats, RelayActor, RelayConfig, RelayStats,
    StopBroker, StopRelay,
};
use sea_orm::DatabaseConnection;

/// A running relay and its broker connection.
pub struct TestRelay {
    pub relay: Addr<RelayActor>,
    pub broker: Addr<ConnectionSupervisor>,
}

impl TestRelay {
    /// Starts a supervisor and a relay with `config` (must run inside an actix System).
    pub fn start(db: &DatabaseConnection, url: &str, config: RelayConfig) -> Self {
        let broker_config = BrokerConfig::new(url)
            .expect("broker config")
            .with_reconnect(Duration::from_millis(50), Duration::from_secs(1));
        let broker = ConnectionSupervisor::start_supervised(broker_config).expect("supervisor");
        let relay = RelayActor::new(db.clone(), broker.clone(), config)
            .expect("relay")
            .start();
        Self { relay, broker }
    }

    pub async fn stats(&self) -> RelayStats {
        self.relay.send(GetRelayStats).await.expect("relay alive")
    }

    /// Stops relay then connection, bounded; returns the relay's final counters.
    pub async fn stop(self) -> RelayStats {
        let stats = tokio::time::timeout(Duration::from_secs(20), self.relay.send(StopRelay))
            .await
            .expect("relay stops within 20 s")
            .expect("relay mailbox");
        tokio::time::timeout(Duration::from_secs(10), self.broker.send(StopBroker))
            .await
            .expect("broker connection closes within 10 s")
            .expect("supervisor mailbox");
        stats
    }
}

/// A relay config for tests: the test's table and exchange, fast retries.
pub fn config(exchange: &str) -> RelayConfig {
    RelayConfig::default()
        .with_exchange(exchange)
        .with_poll_interval(Duration::from_millis(500))
        .with_error_backoff(Duration::from_millis(50), Duration::from_millis(500))
}
