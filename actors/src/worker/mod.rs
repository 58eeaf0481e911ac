//! The worker wing: a [`Worker`] registers handler actors with binding keys ([`Listen`]),
//! then runs one consumer actor per queue; [`RunningWorker`] stops them and reports their
//! counters.
//!
//! One delivery's path through the files: `link` opens the consumer's channel and declares
//! its queue, dead-letter queue and delay queues; `consumer` (the actor) takes deliveries from
//! the stream; `delivery` reads the `envelope`, decodes `Event<T>` and calls the `handler`;
//! `retry` decides the delivery's fate (ack, retry after a delay, dead-letter, requeue) as a
//! pure function; `delivery` carries it out, publishing a retry or dead-letter copy and acking
//! the original only once the copy is confirmed; `stats` counts it.
//!
//! Everything that can be checked without the broker is checked when a handler is
//! registered ([`Worker::listen`]): binding keys, queue names (and duplicates), prefetch,
//! retry delays. [`Worker::start`] then declares (or checks) each queue's topology and starts
//! consuming; it fails naming what is missing rather than running half a worker.

mod acks;
mod config;
mod consumer;
mod delivery;
mod envelope;
mod handler;
mod link;
mod listen;
mod probation;
mod retry;
mod stats;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use actix::prelude::*;
use actix_outbox::{Error, Result};
use futures_util::future::join_all;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tracing::info;

use crate::broker::ConnectionSupervisor;
use consumer::{ConsumerActor, GetConsumerStats, StopConsumer};
use listen::ConsumerSpec;

pub use config::{QueueType, WorkerConfig};
pub(crate) use envelope::{DeliveryMeta, copy_properties};
pub use handler::{HandlerSource, IntoHandler};
pub use listen::Listen;

use crate::exchange::Topology;

/// What a worker with `config` and these listeners declares, without a broker connection
/// or handlers (for `actix-outbox topology export`); as [`Worker::topology`].
///
/// # Errors
///
/// [`Error::InvalidConfig`] for a listener without a queue name (field `queue`: the name
/// would come from the handler's type), a repeated queue name, or settings
/// [`Worker::listen`] refuses; as [`WorkerConfig::validate`] for the config.
pub fn topology(config: &WorkerConfig, listens: &[Listen]) -> Result<Topology> {
    config.validate()?;
    let mut specs: Vec<ConsumerSpec> = Vec::new();
    for listen in listens {
        if !listen.has_queue() {
            return Err(Error::InvalidConfig {
                field: "queue",
                reason: "name each listener's queue (`Listen::with_queue`): without a handler there is no type to name it after".to_owned(),
            });
        }
        let spec = listen.resolve(config, "")?;
        if specs.iter().any(|s| s.queue == spec.queue) {
            return Err(Error::InvalidConfig {
                field: "queue",
                reason: format!("queue {:?} is given twice", spec.queue),
            });
        }
        specs.push(spec);
    }
    Ok(link::topology_of(&specs))
}
pub use retry::RetryDelay;
pub use stats::ConsumerStats;

/// The consumers of one process, before they run: a [`WorkerConfig`] plus one handler per
/// queue.
///
/// Handlers are ordinary actix actors implementing `Handler<Event<T>>` with
/// `type Result = HandlerResult` (or a future of it), for any `T: DeserializeOwned`;
/// `serde_json::Value` and [`RawPayload`](actix_outbox::RawPayload) serve untyped handlers.
///
/// # Examples
///
/// ```no_run
/// use actix::prelude::*;
/// use actix_outbox::{Event, HandlerResult};
/// use actix_outbox_actors::{BrokerConfig, ConnectionSupervisor, Listen, Worker, WorkerConfig};
///
/// #[derive(serde::Deserialize)]
/// struct UserCreated { id: u64 }
///
/// #[derive(Default)]
/// struct WelcomeMailer;
/// impl Actor for WelcomeMailer { type Context = Context<Self>; }
/// impl Handler<Event<UserCreated>> for WelcomeMailer {
///     type Result = HandlerResult;
///     fn handle(&mut self, event: Event<UserCreated>, _: &mut Context<Self>) -> HandlerResult {
///         let _user_id = event.payload().id; // send the mail; `?` turns errors into retries
///         Ok(())
///     }
/// }
///
/// #[actix::main]
/// async fn main() -> Result<(), actix_outbox::Error> {
///     let broker = ConnectionSupervisor::start_supervised(BrokerConfig::from_env()?)?;
///     let running = Worker::new(broker.clone(), WorkerConfig::default().with_exchange("outbox"))?
///         .listen(Listen::new(["user.created"])?, WelcomeMailer::default)? // queue `welcome_mailer`
///         .start()
///         .await?;
///     running.stop_on_signal().await;                        // SIGINT / SIGTERM, then drain
///     broker.send(actix_outbox_actors::StopBroker).await?;  // then the connection
///     Ok(())
/// }
/// ```
pub struct Worker {
    /// Where every consumer gets its channels.
    supervisor: Addr<ConnectionSupervisor>,
    /// The checked worker-wide settings.
    config: WorkerConfig,
    /// One per queue, in registration order.
    registrations: Vec<Box<dyn Registration>>,
    /// Queue names taken so far (duplicates are refused).
    queues: BTreeSet<String>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker whose consumers get their channels from `supervisor`.
    ///
    /// # Errors
    ///
    /// As [`WorkerConfig::validate`].
    pub fn new(supervisor: Addr<ConnectionSupervisor>, config: WorkerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            supervisor,
            config,
            registrations: Vec::new(),
            queues: BTreeSet::new(),
        })
    }

    /// Registers `handler` for the events `listen` selects. `handler` is a factory closure
    /// `|| MyActor::new()` (restarted after a panic: prefer it), an `Addr<MyActor>` or a
    /// `Recipient<Event<T>>` (not restartable). When the handler implements
    /// `Handler<Event<T>>` for several `T`, name it: `.listen::<UserCreated, _>(..)`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use actix::prelude::*;
    /// use actix_outbox::{Event, HandlerResult};
    /// use actix_outbox_actors::{Listen, Worker};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct OrderPlaced { id: u64 }
    ///
    /// /// Handles typed orders, and anything else as raw JSON.
    /// #[derive(Default)]
    /// struct Audit;
    /// impl Actor for Audit { type Context = Context<Self>; }
    /// impl Handler<Event<OrderPlaced>> for Audit {
    ///     type Result = HandlerResult;
    ///     fn handle(&mut self, _: Event<OrderPlaced>, _: &mut Context<Self>) -> HandlerResult { Ok(()) }
    /// }
    /// impl Handler<Event<serde_json::Value>> for Audit {
    ///     type Result = HandlerResult;
    ///     fn handle(&mut self, _: Event<serde_json::Value>, _: &mut Context<Self>) -> HandlerResult { Ok(()) }
    /// }
    ///
    /// # fn build(worker: Worker) -> Result<Worker, actix_outbox::Error> {
    /// let worker = worker
    ///     .listen::<OrderPlaced, _>(Listen::new(["order.placed"])?.with_queue("audit_orders"), Audit::default)?
    ///     .listen::<serde_json::Value, _>(Listen::new(["#"])?.with_queue("audit_all").with_retry_on_error(false), Audit::default)?;
    /// # Ok(worker)
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an invalid queue name (field `queue`), a queue name that is
    /// already registered (field `queue`), a prefetch of 0 (`prefetch`) or a bad delay
    /// (`retry_delays`); [`Error::InvalidDuration`] for delay text that does not parse.
    pub fn listen<T, M>(mut self, listen: Listen, handler: impl IntoHandler<T, M>) -> Result<Self>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let source = handler.into_handler();
        let spec = listen.resolve(&self.config, source.type_name())?;
        if !self.queues.insert(spec.queue.clone()) {
            return Err(Error::InvalidConfig {
                field: "queue",
                reason: format!(
                    "queue {:?} is already registered with this worker: give each handler its own queue (`Listen::with_queue`)",
                    spec.queue
                ),
            });
        }
        self.registrations.push(Box::new(Typed { spec, source }));
        Ok(self)
    }

    /// The queues registered so far, in name order.
    pub fn queues(&self) -> impl Iterator<Item = &str> {
        self.queues.iter().map(String::as_str)
    }

    /// The exchanges, queues and bindings this worker declares when it starts (as a fresh
    /// broker would get them): give [`Topology::to_definitions`] to
    /// `rabbitmqctl import_definitions` to provision a broker for a worker in
    /// [`TopologyMode::CheckOnly`](crate::TopologyMode::CheckOnly).
    #[must_use]
    pub fn topology(&self) -> Topology {
        link::topology_of(self.registrations.iter().map(|r| r.spec()))
    }

    /// Starts one consumer per queue (call inside an actix System): each gets a channel,
    /// declares or checks its topology and starts consuming. Resolves once all consume.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] (`listen`) when nothing was registered; otherwise the first
    /// consumer's failure — [`Error::BrokerRefused`] naming a missing exchange or queue
    /// (check-only mode) or one declared with other arguments, [`Error::Timeout`] when no
    /// channel came in time. Consumers already started are stopped again.
    pub async fn start(self) -> Result<RunningWorker> {
        if self.registrations.is_empty() {
            return Err(Error::InvalidConfig {
                field: "listen",
                reason: "no handler registered: call `Worker::listen` first".to_owned(),
            });
        }
        let mut running = RunningWorker {
            consumers: Vec::new(),
        };
        for registration in self.registrations {
            for (consumer, started) in registration.start(self.supervisor.clone()) {
                match started.await.unwrap_or(Err(Error::Shutdown)) {
                    Ok(()) => running.consumers.push(consumer),
                    Err(e) => {
                        running.stop().await;
                        return Err(e);
                    }
                }
            }
        }
        info!(queues = running.consumers.len(), "worker started");
        Ok(running)
    }
}

/// A started worker. Stop it with [`stop`](Self::stop) (or
/// [`stop_on_signal`](Self::stop_on_signal)) before closing the broker connection; dropping
/// it leaves the consumers running until the System stops.
#[derive(Debug)]
pub struct RunningWorker {
    /// One per queue.
    consumers: Vec<ConsumerHandle>,
}

impl RunningWorker {
    /// The queues being consumed.
    pub fn queues(&self) -> impl Iterator<Item = &str> {
        self.consumers.iter().map(|c| c.queue.as_str())
    }

    /// Each queue's counters. Consumers that already stopped are left out.
    pub async fn stats(&self) -> BTreeMap<String, ConsumerStats> {
        let asks = self.consumers.iter().map(|c| async move {
            c.stats
                .send(GetConsumerStats)
                .await
                .ok()
                .map(|s| (c.queue.clone(), s))
        });
        join_all(asks).await.into_iter().flatten().collect()
    }

    /// A cloneable handle for health checks: it asks these consumers for their counters.
    #[must_use]
    pub fn probe(&self) -> WorkerProbe {
        WorkerProbe {
            consumers: self
                .consumers
                .iter()
                .map(|c| (c.queue.clone(), c.stats.clone()))
                .collect(),
        }
    }

    /// One queue's counters, if that consumer runs.
    pub async fn queue_stats(&self, queue: &str) -> Option<ConsumerStats> {
        let consumer = self.consumers.iter().find(|c| c.queue == queue)?;
        consumer.stats.send(GetConsumerStats).await.ok()
    }

    /// Stops every consumer gracefully and at once: cancel, let handlers in flight finish
    /// within the grace period and ack them, close the channels. Resolves when all stopped.
    pub async fn stop(self) {
        join_all(self.consumers.iter().map(|c| c.stop.send(StopConsumer))).await;
        info!("worker stopped");
    }

    /// Waits for SIGINT (Ctrl-C) or, on Unix, SIGTERM, then [`stop`](Self::stop)s.
    pub async fn stop_on_signal(self) {
        crate::shutdown::shutdown_signal().await;
        info!("shutdown signal received");
        self.stop().await;
    }
}

/// A cloneable handle that asks a running worker's consumers for their counters, for
/// [`Health`](crate::health::Health) and admin endpoints.
#[derive(Debug, Clone)]
pub struct WorkerProbe {
    consumers: std::sync::Arc<[(String, Recipient<GetConsumerStats>)]>,
}

impl WorkerProbe {
    /// How many consumers the worker started.
    #[must_use]
    pub fn len(&self) -> usize {
        self.consumers.len()
    }

    /// Whether the worker started no consumer (never true for a started worker).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.consumers.is_empty()
    }

    /// Each queue's counters; consumers that stopped are left out.
    pub async fn stats(&self) -> BTreeMap<String, ConsumerStats> {
        let asks = self.consumers.iter().map(|(queue, stats)| async move {
            stats
                .send(GetConsumerStats)
                .await
                .ok()
                .map(|s| (queue.clone(), s))
        });
        join_all(asks).await.into_iter().flatten().collect()
    }
}

/// What the worker keeps of a running consumer (its payload type erased).
#[derive(Debug)]
struct ConsumerHandle {
    queue: String,
    stop: Recipient<StopConsumer>,
    stats: Recipient<GetConsumerStats>,
}

/// A registration whose payload type is known only inside.
trait Registration {
    fn spec(&self) -> &ConsumerSpec;

    /// Starts the consumer (one per partition of an ordered listener); each handle comes with
    /// the news of its first attempt to consume.
    fn start(self: Box<Self>, supervisor: Addr<ConnectionSupervisor>) -> Vec<Started>;
}

/// A started consumer, and whether its first attempt to consume worked.
type Started = (ConsumerHandle, oneshot::Receiver<Result<()>>);

struct Typed<T: Send + 'static> {
    spec: ConsumerSpec,
    source: HandlerSource<T>,
}

impl<T: DeserializeOwned + Send + 'static> Registration for Typed<T> {
    fn spec(&self) -> &ConsumerSpec {
        &self.spec
    }

    fn start(self: Box<Self>, supervisor: Addr<ConnectionSupervisor>) -> Vec<Started> {
        let specs: Vec<ConsumerSpec> = match self.spec.partitions {
            0 => vec![self.spec],
            n => (0..n)
                .map(|i| ConsumerSpec {
                    consume: crate::exchange::partition_queue(&self.spec.queue, i),
                    ..self.spec.clone()
                })
                .collect(),
        };
        specs
            .into_iter()
            .map(|spec| {
                let (ready, started) = oneshot::channel();
                let queue = spec.consume.clone();
                let source = self.source.clone();
                let actor = ConsumerActor::new(Arc::new(spec), supervisor.clone(), source, ready);
                let addr = actor.start();
                let handle = ConsumerHandle {
                    queue,
                    stop: addr.clone().recipient(),
                    stats: addr.recipient(),
                };
                (handle, started)
            })
            .collect()
    }
}
