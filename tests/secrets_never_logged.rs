//! Passwords never reach a log, at any level: with every target at `trace`, a relay and a
//! worker connected through `DatabaseConfig` and `BrokerConfig` with credentials of their own
//! run an event end to end, and the captured output holds neither password.
#![cfg(feature = "service-tests")]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Actor;
use actix_outbox::{DatabaseConfig, setup};
use actix_outbox_actors::{
    BrokerConfig, ConnectionSupervisor, Listen, RelayActor, RelayConfig, StopBroker, StopRelay,
    Worker, WorkerConfig,
};
use common::faults::rabbitmqctl;
use common::worker::{Log, scripted};
use common::{TestDb, require_env, unique, wait_for};
use sea_orm::ConnectionTrait;
use serde_json::Value;

const DB_PASSWORD: &str = "Zx7dbSecret9Q";
const AMQP_PASSWORD: &str = "Kp4mqSecret2W";

/// Everything written by the `tracing` subscriber of this test binary.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture lock")).into_owned()
    }
}

/// Relay and worker at `trace`, end to end, with their own database role and broker user:
/// the log is long and names both URLs, with `***` where the passwords were.
#[actix_rt::test]
async fn no_password_in_trace_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let t = TestDb::postgres().await;
    let role = unique("role");
    for sql in [
        format!("CREATE ROLE {role} LOGIN PASSWORD '{DB_PASSWORD}'"),
        format!("GRANT USAGE, CREATE ON SCHEMA {} TO {role}", t.name),
    ] {
        t.db.execute_unprepared(&sql)
            .await
            .expect("create the test role");
    }
    let admin_url = require_env("DATABASE_URL");
    let host_and_db = admin_url.rsplit('@').next().expect("host").to_owned();
    let db_url = format!(
        "postgres://{role}:{DB_PASSWORD}@{host_and_db}?options=-c%20search_path%3D{}",
        t.name
    );
    let user = unique("mq");
    rabbitmqctl(&["add_user", &user, AMQP_PASSWORD]).await;
    rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]).await;
    let amqp_url = format!("amqp://{user}:{AMQP_PASSWORD}@127.0.0.1:5672/%2f");

    let db = DatabaseConfig::new(db_url.as_str())
        .with_max_connections(4)
        .connect()
        .await
        .expect("connect as the test role");
    setup(&db).await.expect("setup");
    let exchange = unique("ex");
    let queue = unique("secret_q");
    let broker = ConnectionSupervisor::start_supervised(
        BrokerConfig::new(amqp_url.as_str()).expect("broker config"),
    )
    .expect("supervisor");
    let log = Arc::new(Log::default());
    let running = Worker::new(
        broker.clone(),
        WorkerConfig::default().with_exchange(exchange.as_str()),
    )
    .expect("worker config")
    .listen(
        Listen::new(["#"]).expect("keys").with_queue(queue.as_str()),
        scripted::<Value, _>(&log, |_| Ok(())),
    )
    .expect("listen")
    .start()
    .await
    .expect("worker starts");
    let relay = RelayActor::new(
        db.clone(),
        broker.clone(),
        RelayConfig::default().with_exchange(exchange.as_str()),
    )
    .expect("relay")
    .start();
    let id = actix_outbox::emit(&db, "user.created", &1)
        .await
        .expect("emit");
    log.wait_count("the event to be handled", 1, Duration::from_secs(20))
        .await;
    assert_eq!(log.attempts(id), [1]);

    running.stop().await;
    relay.send(StopRelay).await.expect("relay stops");
    broker.send(StopBroker).await.expect("broker stops");
    db.close().await.expect("close");
    rabbitmqctl(&["delete_user", &user]).await;
    let _ =
        t.db.execute_unprepared(&format!("DROP OWNED BY {role} CASCADE"))
            .await;
    let _ = t.db.execute_unprepared(&format!("DROP ROLE {role}")).await;
    let text = wait_for("the trace output", Duration::from_secs(5), || async {
        let text = captured.text();
        text.contains("relay stopped").then_some(text)
    })
    .await;
    assert!(
        text.len() > 10_000,
        "trace output is suspiciously short: {} bytes",
        text.len()
    );
    for secret in [DB_PASSWORD, AMQP_PASSWORD] {
        if let Some(at) = text.find(secret) {
            let from = at.saturating_sub(300);
            panic!(
                "a password reached the log:\n…{}…",
                &text[from..(at + 50).min(text.len())]
            );
        }
    }
    assert!(
        text.contains(&format!("{user}:***@")),
        "the broker URL is logged redacted"
    );
    t.cleanup().await;
}
