//! A worker process: consumes events into typed actix handlers until Ctrl-C or SIGTERM.
//!
//! Two handlers, each with its own durable queue: `WelcomeMailer` on the exact key
//! `user.created` (queue `welcome_mailer`), and `UserAudit` on the wildcard `user.*` (queue
//! `user_audit`, so it also sees `user.deleted`, but not `user.profile.updated`). Failures
//! are retried after 1 s, 10 s, 1 min and 5 min, then dead-lettered to `dlq_<queue>`.
//!
//! ```text
//! scripts/services      # PostgreSQL and RabbitMQ, or: docker compose up -d
//! cargo run --release --example worker
//! cargo run --release --example relay      # in another terminal: feeds the exchange
//! ```
//!
//! Environment: `AMQP_URL` (default `amqp://outbox:outbox@127.0.0.1:5672/%2f`),
//! `OUTBOX_EXCHANGE` (default `outbox`), `RUST_LOG` (default `info`). On stop, in-flight
//! handlers finish (within the grace period) and are acked before the connection closes.

use actix::prelude::*;
use actix_outbox::{Error, Event, HandlerError, HandlerResult};
use actix_outbox_actors::{
    BrokerConfig, ConnectionSupervisor, Listen, StopBroker, Worker, WorkerConfig,
};
use serde::Deserialize;
use tracing::info;

/// The payload of `user.created`.
#[derive(Debug, Deserialize)]
struct UserCreated {
    id: i64,
    username: String,
}

/// Sends the welcome mail (here: logs it).
#[derive(Default)]
struct WelcomeMailer {
    sent: u64,
}

impl Actor for WelcomeMailer {
    type Context = Context<Self>;
}

impl Handler<Event<UserCreated>> for WelcomeMailer {
    type Result = HandlerResult;

    fn handle(&mut self, event: Event<UserCreated>, _: &mut Context<Self>) -> HandlerResult {
        let user = event.payload();
        if user.username.is_empty() {
            // Retrying cannot fix this: straight to dlq_welcome_mailer.
            return Err(HandlerError::reject("user without a username"));
        }
        self.sent += 1;
        info!(user = user.id, username = %user.username, attempt = event.attempt(), message_id = %event.message_id(), "welcome mail sent");
        Ok(())
    }
}

/// Records every user event, whatever its shape (untyped payload).
#[derive(Default)]
struct UserAudit;

impl Actor for UserAudit {
    type Context = Context<Self>;
}

impl Handler<Event<serde_json::Value>> for UserAudit {
    type Result = HandlerResult;

    fn handle(&mut self, event: Event<serde_json::Value>, _: &mut Context<Self>) -> HandlerResult {
        info!(routing_key = event.routing_key(), message_id = %event.message_id(), "audited");
        Ok(())
    }
}

#[actix::main]
async fn main() -> Result<(), Error> {
    // Installed before anything else, so a SIGTERM during start-up still stops gracefully.
    let stop = actix_outbox_actors::shutdown_signal();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let exchange = std::env::var("OUTBOX_EXCHANGE").unwrap_or_else(|_| "outbox".to_owned());
    let broker = ConnectionSupervisor::start_supervised(BrokerConfig::from_env()?)?;
    let running = Worker::new(
        broker.clone(),
        WorkerConfig::default().with_exchange(exchange),
    )?
    .listen(Listen::new(["user.created"])?, WelcomeMailer::default)?
    .listen(
        Listen::new(["user.*"])?.with_queue("user_audit"),
        UserAudit::default,
    )?
    .start()
    .await?;
    info!(queues = ?running.queues().collect::<Vec<_>>(), "worker running; Ctrl-C to stop");
    stop.await;
    running.stop().await;
    broker.send(StopBroker).await?;
    Ok(())
}
