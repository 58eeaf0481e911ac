//! The whole outbox in one program: emit → relay → worker, then a summary, then exit.
//!
//! It saves users and an order in SeaORM transactions and emits an event for each **in the
//! same transaction** (plus one transaction that rolls back: its event never leaves). A relay
//! publishes the committed events to RabbitMQ; a worker hands them to three typed actix
//! handlers: one on an exact key, one on a wildcard, and one that fails once and is retried.
//! Everything runs in one actix System and stops by itself.
//!
//! ```text
//! scripts/quickstart                  # starts RabbitMQ (and PostgreSQL) if needed, then runs this
//! cargo run --example quickstart      # if the broker already runs
//! ```
//!
//! The outbox lives in an embedded SQLite file by default; set `DATABASE_URL` (for example
//! `postgres://outbox:outbox@127.0.0.1:5432/outbox`) to use PostgreSQL instead. `AMQP_URL`
//! defaults to `amqp://outbox:outbox@127.0.0.1:5672/%2f`.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_outbox::{DatabaseConfig, Error, Event, HandlerError, HandlerResult, Outbox, TableName};
use actix_outbox_actors::{
    BrokerConfig, ConnectionSupervisor, GetChannel, Listen, RelayActor, RelayConfig, StopBroker,
    StopRelay, Worker, WorkerConfig,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const EXCHANGE: &str = "quickstart";

#[derive(Debug, Serialize, Deserialize)]
struct UserCreated {
    id: i64,
    username: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order: i64,
    user: i64,
    cents: i64,
}

/// Which handler saw which message, and how often (shared by the handlers and `main`).
type Seen = Arc<Mutex<BTreeMap<(&'static str, Uuid), u32>>>;

fn record(seen: &Seen, handler: &'static str, id: Uuid) {
    if let Ok(mut seen) = seen.lock() {
        *seen.entry((handler, id)).or_default() += 1;
    }
}

/// Exact key `user.created`: a typed payload.
struct WelcomeMailer(Seen);
impl Actor for WelcomeMailer {
    type Context = Context<Self>;
}
impl Handler<Event<UserCreated>> for WelcomeMailer {
    type Result = HandlerResult;
    fn handle(&mut self, event: Event<UserCreated>, _: &mut Context<Self>) -> HandlerResult {
        let user = event.payload();
        println!(
            "  [welcome_mailer] user.created  → welcome mail to {} (user {})",
            user.username, user.id
        );
        record(&self.0, "welcome_mailer", event.message_id());
        Ok(())
    }
}

/// Wildcard `#`: every event, untyped.
struct Audit(Seen);
impl Actor for Audit {
    type Context = Context<Self>;
}
impl Handler<Event<serde_json::Value>> for Audit {
    type Result = HandlerResult;
    fn handle(&mut self, event: Event<serde_json::Value>, _: &mut Context<Self>) -> HandlerResult {
        println!(
            "  [audit]          {:<13} → {}",
            event.routing_key(),
            event.payload()
        );
        record(&self.0, "audit", event.message_id());
        Ok(())
    }
}

/// `order.placed`: the payment provider is "down" on the first attempt.
struct Billing(Seen);
impl Actor for Billing {
    type Context = Context<Self>;
}
impl Handler<Event<OrderPlaced>> for Billing {
    type Result = HandlerResult;
    fn handle(&mut self, event: Event<OrderPlaced>, _: &mut Context<Self>) -> HandlerResult {
        let order = event.payload();
        if event.attempt() == 1 {
            println!(
                "  [billing]        order.placed  → payment provider timed out (attempt 1): retry in 200 ms"
            );
            return Err(HandlerError::failed("payment provider timed out"));
        }
        println!(
            "  [billing]        order.placed  → charged {} cents for order {} (attempt {})",
            order.cents,
            order.order,
            event.attempt()
        );
        record(&self.0, "billing", event.message_id());
        Ok(())
    }
}

#[actix::main]
async fn main() -> Result<ExitCode, Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let db = open_database().await?;
    let outbox = Outbox::new(TableName::new("quickstart_outbox")?);
    outbox.setup(&db).await?;
    db.execute_unprepared("DROP TABLE IF EXISTS quickstart_users")
        .await?;
    db.execute_unprepared("DROP TABLE IF EXISTS quickstart_orders")
        .await?;
    db.execute_unprepared("DELETE FROM quickstart_outbox")
        .await?;
    db.execute_unprepared(
        "CREATE TABLE quickstart_users (id BIGINT PRIMARY KEY, username TEXT NOT NULL)",
    )
    .await?;
    db.execute_unprepared("CREATE TABLE quickstart_orders (id BIGINT PRIMARY KEY, user_id BIGINT NOT NULL, cents BIGINT NOT NULL)").await?;

    // One connection per role: RabbitMQ blocks a connection that publishes while a memory or
    // disk alarm lasts, and the worker's acks must not wait behind the relay's publishes.
    let broker = ConnectionSupervisor::start_supervised(
        BrokerConfig::from_env()?.with_connection_name("quickstart-worker"),
    )?;
    let relay_broker = ConnectionSupervisor::start_supervised(
        BrokerConfig::from_env()?.with_connection_name("quickstart-relay"),
    )?;
    reset_queues(&broker).await?;
    let seen: Seen = Arc::default();
    let (s1, s2, s3) = (seen.clone(), seen.clone(), seen.clone());
    let worker = Worker::new(
        broker.clone(),
        WorkerConfig::default()
            .with_exchange(EXCHANGE)
            .with_retry_delays(["200ms", "1s"]),
    )?
    .listen(
        Listen::new(["user.created"])?.with_queue("quickstart_welcome_mailer"),
        move || WelcomeMailer(s1.clone()),
    )?
    .listen(
        Listen::new(["#"])?.with_queue("quickstart_audit"),
        move || Audit(s2.clone()),
    )?
    .listen(
        Listen::new(["order.placed"])?.with_queue("quickstart_billing"),
        move || Billing(s3.clone()),
    )?
    .start()
    .await?;
    let relay_config = RelayConfig::default()
        .with_table(outbox.table().clone())
        .with_exchange(EXCHANGE)
        .with_poll_interval(Duration::from_millis(200));
    let relay = RelayActor::new(db.clone(), relay_broker.clone(), relay_config)?.start();

    println!("emit (each event in the same transaction as its row):");
    let mut emitted = Vec::new();
    for (id, name) in [(1, "ada"), (2, "grace"), (3, "linus")] {
        let txn = db.begin().await?;
        txn.execute_unprepared(&format!(
            "INSERT INTO quickstart_users VALUES ({id}, '{name}')"
        ))
        .await?;
        let message_id = outbox
            .emit(
                &txn,
                "user.created",
                &UserCreated {
                    id,
                    username: name.into(),
                },
            )
            .await?;
        txn.commit().await?;
        println!("  committed user {id} ({name}) + user.created {message_id}");
        emitted.push(message_id);
    }
    let txn = db.begin().await?;
    txn.execute_unprepared("INSERT INTO quickstart_orders VALUES (100, 1, 4200)")
        .await?;
    let order_id = outbox
        .emit(
            &txn,
            "order.placed",
            &OrderPlaced {
                order: 100,
                user: 1,
                cents: 4200,
            },
        )
        .await?;
    txn.commit().await?;
    println!("  committed order 100 + order.placed {order_id}");
    emitted.push(order_id);
    let txn = db.begin().await?;
    txn.execute_unprepared("INSERT INTO quickstart_users VALUES (4, 'mallory')")
        .await?;
    let ghost = outbox
        .emit(
            &txn,
            "user.created",
            &UserCreated {
                id: 4,
                username: "mallory".into(),
            },
        )
        .await?;
    txn.rollback().await?;
    println!("  rolled back user 4 (mallory): its event {ghost} must never be handled");
    println!("relay → RabbitMQ → worker:");

    // Expected: welcome_mailer and audit see each user, audit and billing see the order.
    let mut expected: Vec<(&str, Uuid)> = Vec::new();
    for id in &emitted[..3] {
        expected.extend([("welcome_mailer", *id), ("audit", *id)]);
    }
    expected.extend([("audit", order_id), ("billing", order_id)]);
    let outcome = wait_until_handled(&seen, &expected, Duration::from_secs(30)).await;

    let stats = worker.stats().await;
    worker.stop().await;
    relay.send(StopRelay).await?;
    relay_broker.send(StopBroker).await?;
    broker.send(StopBroker).await?;
    db.close().await?;

    let retries: u64 = stats.values().map(|s| s.retried).sum();
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let handled_events = emitted
        .iter()
        .filter(|id| seen.keys().any(|(_, m)| m == *id))
        .count();
    let ghost_seen = seen.keys().any(|(_, m)| *m == ghost);
    let lost = emitted.len() - handled_events;
    println!(
        "handled {handled_events}/{} events ({} deliveries), {retries} retry, {lost} lost, rolled-back event {}",
        emitted.len(),
        seen.values().sum::<u32>(),
        if ghost_seen {
            "HANDLED (bug!)"
        } else {
            "never sent"
        }
    );
    outcome?;
    if lost == 0 && !ghost_seen {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("the summary does not add up: an event was lost or a rolled-back one arrived");
        Ok(ExitCode::FAILURE)
    }
}

/// SQLite file in the temp directory (fresh each run) unless `DATABASE_URL` is set.
async fn open_database() -> Result<DatabaseConnection, Error> {
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) => url,
        Err(_) => {
            let path = std::env::temp_dir().join("actix_outbox_quickstart.sqlite");
            let _ = std::fs::remove_file(&path);
            format!("sqlite://{}?mode=rwc", path.display())
        }
    };
    println!("database: {}", actix_outbox::redact_url(&url));
    DatabaseConfig::new(url).connect().await
}

/// Deletes the quickstart's queues from an earlier run, so counts start from zero.
async fn reset_queues(broker: &Addr<ConnectionSupervisor>) -> Result<(), Error> {
    let channel = broker.send(GetChannel).await??;
    for queue in [
        "quickstart_welcome_mailer",
        "quickstart_audit",
        "quickstart_billing",
    ] {
        channel
            .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
            .await?;
    }
    // Bounded: a lapin close can wait forever if the broker closes the channel at that moment.
    let closing = channel.close(200, "reset done".into());
    let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
    Ok(())
}

/// Waits (bounded) until every (handler, message) pair in `expected` was handled.
async fn wait_until_handled(
    seen: &Seen,
    expected: &[(&str, Uuid)],
    timeout: Duration,
) -> Result<(), Error> {
    let start = Instant::now();
    loop {
        let done = seen
            .lock()
            .map(|s| {
                expected
                    .iter()
                    .all(|(h, id)| s.keys().any(|(sh, sid)| sh == h && sid == id))
            })
            .unwrap_or(false);
        if done {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(Error::Timeout {
                what: "waiting for the handlers",
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
