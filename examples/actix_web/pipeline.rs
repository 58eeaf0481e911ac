//! The example's outbox pipeline: the relay that publishes committed `user.created` events
//! and the worker whose `WelcomeMailer` handles them, started and stopped as one.

use std::sync::{Arc, Mutex, PoisonError};

use actix::{Actor, Addr, Context, Handler};
use actix_outbox::{Event, HandlerResult, Outbox};
use actix_outbox_actors::health::Health;
use actix_outbox_actors::{
    BrokerConfig, ConnectionSupervisor, ConsumerStats, Listen, RelayActor, RelayConfig, RelayStats,
    RunningWorker, StopBroker, StopRelay, Worker, WorkerConfig,
};
use sea_orm::DatabaseConnection;
use tracing::info;

use super::{USER_CREATED, UserCreated};

/// The welcome mails sent so far, as user ids in the order sent. A redelivered event would
/// appear twice: delivery is at least once.
#[derive(Debug, Default)]
pub(crate) struct SentMail(Mutex<Vec<i64>>);

impl SentMail {
    fn record(&self, user_id: i64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(user_id);
    }

    /// The user ids welcomed so far.
    pub(crate) fn user_ids(&self) -> Vec<i64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Handles `user.created`: "sends" the welcome mail (a log line) and records it. Delivery is
/// at least once, so a real mailer would remember `event.message_id()` and skip repeats.
#[derive(Debug)]
pub(crate) struct WelcomeMailer {
    /// Shared with `main` (summary) and the test (assertions); survives mailer restarts.
    sent: Arc<SentMail>,
}

impl Actor for WelcomeMailer {
    type Context = Context<Self>;
}

impl Handler<Event<UserCreated>> for WelcomeMailer {
    type Result = HandlerResult;

    fn handle(&mut self, event: Event<UserCreated>, _: &mut Context<Self>) -> HandlerResult {
        let user = event.payload();
        info!(
            user_id = user.id,
            username = %user.username,
            email = %user.email,
            message_id = %event.message_id(),
            attempt = event.attempt(),
            "welcome mail sent"
        );
        self.sent.record(user.id);
        Ok(())
    }
}

/// What the background side connects to and the names it uses; the test swaps in its own.
#[derive(Debug, Clone)]
pub(crate) struct PipelineConfig {
    /// Where RabbitMQ is and how to reconnect to it.
    pub(crate) broker: BrokerConfig,
    /// Which outbox table the relay drains, and to which exchange.
    pub(crate) relay: RelayConfig,
    /// The same exchange, and the retry rules of the mailer.
    pub(crate) worker: WorkerConfig,
    /// The welcome mailer's queue.
    pub(crate) queue: String,
}

impl PipelineConfig {
    /// Relays the table of `outbox` to `exchange` and consumes `user.created` from there into
    /// `queue`; everything else keeps the library defaults.
    pub(crate) fn new(broker: BrokerConfig, outbox: &Outbox, exchange: &str, queue: &str) -> Self {
        Self {
            broker,
            relay: RelayConfig::default()
                .with_table(outbox.table().clone())
                .with_exchange(exchange),
            worker: WorkerConfig::default().with_exchange(exchange),
            queue: queue.to_owned(),
        }
    }
}

/// The running background side: the worker, the relay and their broker connection.
#[derive(Debug)]
pub(crate) struct Pipeline {
    /// Runs the welcome mailer on its queue.
    worker: RunningWorker,
    /// Publishes committed outbox rows.
    relay: Addr<RelayActor>,
    /// The worker's RabbitMQ connection.
    broker: Addr<ConnectionSupervisor>,
    /// The relay's own connection: RabbitMQ blocks a connection that publishes while a memory
    /// or disk alarm lasts, and the worker's acks must not wait behind the relay's publishes.
    relay_broker: Addr<ConnectionSupervisor>,
    /// The mailer's queue, to find its counters.
    queue: String,
}

/// What the pipeline did, as reported by [`Pipeline::stop`].
#[derive(Debug)]
pub(crate) struct PipelineStats {
    /// The relay's final counters.
    pub(crate) relay: RelayStats,
    /// The mailer's counters just before it stopped (`None` if its consumer had died).
    pub(crate) mailer: Option<ConsumerStats>,
}

impl Pipeline {
    /// Starts the broker connections, then the worker, then the relay (inside an actix System).
    ///
    /// The worker goes first so that its queue is bound before the relay publishes anything:
    /// an event no queue is bound for would end up in `<exchange>.unroutable` instead.
    pub(crate) async fn start(
        db: &DatabaseConnection,
        config: PipelineConfig,
        sent: &Arc<SentMail>,
    ) -> Result<Self, actix_outbox::Error> {
        let broker = ConnectionSupervisor::start_supervised(config.broker.clone())?;
        let relay_broker = ConnectionSupervisor::start_supervised(
            config
                .broker
                .clone()
                .with_connection_name("actix-outbox-relay"),
        )?;
        match Self::start_on([broker.clone(), relay_broker.clone()], db, config, sent).await {
            Ok(pipeline) => Ok(pipeline),
            Err(e) => {
                for b in [broker, relay_broker] {
                    let _closed = b.send(StopBroker).await; // report `e`, not a mailbox error
                }
                Err(e)
            }
        }
    }

    /// Starts the worker and the relay on their broker connections.
    async fn start_on(
        [broker, relay_broker]: [Addr<ConnectionSupervisor>; 2],
        db: &DatabaseConnection,
        config: PipelineConfig,
        sent: &Arc<SentMail>,
    ) -> Result<Self, actix_outbox::Error> {
        let sent = Arc::clone(sent);
        let listen = Listen::new([USER_CREATED])?.with_queue(config.queue.as_str());
        let worker = Worker::new(broker.clone(), config.worker)?
            .listen(listen, move || WelcomeMailer { sent: sent.clone() })?
            .start()
            .await?;
        let relay = RelayActor::new(db.clone(), relay_broker.clone(), config.relay)?.start();
        Ok(Self {
            worker,
            relay,
            broker,
            relay_broker,
            queue: config.queue,
        })
    }

    /// Health checks of everything the pipeline runs on: the database, both broker
    /// connections, the relay (not ready once a due row waited over a minute) and the worker.
    pub(crate) fn health(&self, db: &DatabaseConnection) -> Health {
        Health::new()
            .with_database("database", db.clone())
            .with_broker("worker_broker", self.broker.clone())
            .with_broker("relay_broker", self.relay_broker.clone())
            .with_relay("relay", self.relay.clone())
            .with_worker("worker", self.worker.probe())
            .with_max_backlog_age(std::time::Duration::from_secs(60))
    }

    /// The mailer's consumer counters, while it runs.
    pub(crate) async fn mailer_stats(&self) -> Option<ConsumerStats> {
        self.worker.queue_stats(&self.queue).await
    }

    /// Stops the worker (handlers in flight finish and are acked), the relay (its batch in
    /// flight is confirmed or released) and the broker connections, in that order. Close the
    /// database afterwards: nothing uses it any more.
    pub(crate) async fn stop(self) -> Result<PipelineStats, actix_outbox::Error> {
        let mailer = self.mailer_stats().await;
        self.worker.stop().await;
        let relay = self.relay.send(StopRelay).await?;
        self.relay_broker.send(StopBroker).await?;
        self.broker.send(StopBroker).await?;
        Ok(PipelineStats { relay, mailer })
    }
}
