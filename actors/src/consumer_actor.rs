//! `ConsumerActor`: one queue's consumer — from the broker to the user's handler actor.
//!
//! **Owns** one channel in confirm mode (its deliveries, acks, and the retry/dead-letter
//! copies it publishes) and the consumer stream on it, plus the handler actor when it was
//! registered with a factory.
//! **Receives** [`StopConsumer`] and [`GetConsumerStats`] (through
//! [`RunningWorker`](crate::RunningWorker)), and its deliveries as a stream.
//! **Asks** the [`ConnectionSupervisor`] for a channel whenever it has none, and **sends**
//! each decoded [`Event<T>`] to the handler.
//!
//! Lifecycle: get a channel, set `basic_qos(prefetch)`, declare (or check) the queue's
//! topology, `basic_consume`. Each delivery runs concurrently (the prefetch bounds how many)
//! and is settled by `consumer_delivery`. When the stream fails or ends, or the channel is no
//! longer open (broker restart, force-closed connection), the actor drops the channel and
//! starts over with backoff: unacked messages are redelivered by the broker, none is lost.
//!
//! **Stop**: cancel the consumer, let handlers in flight finish within the grace period and
//! settle them, then close the channel. Deliveries that arrive after the cancel are requeued
//! without reaching the handler.
//!
//! **Handler restarts**: a handler actor that panics is replaced from its factory (see
//! `consumer_handler`); the delivery it died on counts as a failed attempt, the deliveries
//! waiting in its mailbox are requeued uncharged, and the next deliveries go to the fresh actor
//! one at a time ("probation") until a crash can be attributed. A handler
//! registered by address cannot be replaced: the consumer requeues and stops consuming.
//! The consumer itself is not supervised; the broker's unacked deliveries, not its state, are
//! the source of truth.

use std::collections::VecDeque;

use actix::prelude::*;
use actix_outbox::{Error, Result};
use futures_util::{StreamExt, stream};
use lapin::message::Delivery;
use lapin::types::ShortString;
use lapin::{Channel, Consumer};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::connection_supervisor::ConnectionSupervisor;
use crate::consumer_delivery::{self, Job, Report, Settled};
use crate::consumer_handler::{HandlerSlot, HandlerSource};
use crate::consumer_stats::ConsumerStats;
use crate::retry_policy::Outcome;
use crate::worker_listen::SharedSpec;
use crate::worker_topology::{cancel, close, open_link};

/// Stops the consumer gracefully; resolves once it has stopped.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StopConsumer;

/// Asks for the consumer's counters.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "ConsumerStats")]
pub struct GetConsumerStats;

/// One item of the consumer stream of channel `generation`.
#[allow(clippy::large_enum_variant)] // almost every item is a delivery: boxing it buys nothing
#[derive(Message)]
#[rtype(result = "()")]
enum Incoming {
    Delivery(u64, Delivery),
    Failed(u64, String),
    Ended(u64),
}

/// The consumer's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Getting a channel, or waiting to try again.
    Connecting,
    /// Deliveries flow.
    Consuming,
    /// Not consuming for good (the handler is gone, or the connection supervisor was shut
    /// down): waiting to be stopped.
    Parked,
    /// Draining in-flight handlers before closing.
    Stopping,
    /// Closing; the actor is about to stop.
    Stopped,
}

/// The live channel and its consumer.
struct Link {
    channel: Channel,
    tag: ShortString,
    stream: SpawnHandle,
}

/// The consumer of one queue. See the module docs for its lifecycle.
pub struct ConsumerActor<T: DeserializeOwned + Send + 'static> {
    /// The queue's checked settings.
    spec: SharedSpec,
    /// Where channels come from.
    supervisor: Addr<ConnectionSupervisor>,
    /// The handler actor (and its factory).
    handler: HandlerSlot<T>,
    /// The channel deliveries come on; `None` while (re)connecting.
    link: Option<Link>,
    /// Counts channels; deliveries and stream events of older ones are stale.
    generation: u64,
    /// Where in its lifecycle the actor is.
    state: State,
    /// Deliveries handed to the handler and not settled yet.
    in_flight: usize,
    /// After a crash with several events in the handler's mailbox: how many more deliveries
    /// (one per displaced event) go to the new actor one at a time, so a crash among them
    /// names its event.
    probation: usize,
    /// Deliveries held back during probation (with their channel generation).
    waiting: VecDeque<(u64, Delivery)>,
    /// Tells `Worker::start` whether the first attempt to consume worked.
    ready: Option<oneshot::Sender<Result<()>>>,
    /// Consecutive failed attempts to consume (drives the backoff).
    failures: u32,
    /// Counters since start.
    stats: ConsumerStats,
    /// Callers of `StopConsumer`.
    stop_waiters: Vec<oneshot::Sender<()>>,
}

impl<T: DeserializeOwned + Send + 'static> std::fmt::Debug for ConsumerActor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerActor")
            .field("queue", &self.spec.queue)
            .field("state", &self.state)
            .field("in_flight", &self.in_flight)
            .field("handler", &self.handler)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + Send + 'static> ConsumerActor<T> {
    /// A consumer for `spec`; starts the handler actor of a factory (call inside a System).
    pub(crate) fn new(
        spec: SharedSpec,
        supervisor: Addr<ConnectionSupervisor>,
        source: HandlerSource<T>,
        ready: oneshot::Sender<Result<()>>,
    ) -> Self {
        Self {
            spec,
            supervisor,
            handler: HandlerSlot::new(source),
            link: None,
            generation: 0,
            state: State::Connecting,
            in_flight: 0,
            probation: 0,
            waiting: VecDeque::new(),
            ready: Some(ready),
            failures: 0,
            stats: ConsumerStats::default(),
            stop_waiters: Vec::new(),
        }
    }
}

impl<T: DeserializeOwned + Send + 'static> Actor for ConsumerActor<T> {
    type Context = Context<Self>;

    /// Starts consuming, and checks once a second that the channel is still open (a safety
    /// net for losses that end no stream).
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.connect(ctx);
        ctx.run_interval(std::time::Duration::from_secs(1), |act, ctx| {
            let broken = act
                .link
                .as_ref()
                .is_some_and(|l| !l.channel.status().connected());
            if broken && act.state == State::Consuming {
                act.lost("channel no longer open".to_owned(), ctx);
            }
        });
    }

    /// Releases `Worker::start` and `stop` callers.
    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(Error::Shutdown));
        }
        for waiter in self.stop_waiters.drain(..) {
            let _ = waiter.send(());
        }
        info!(queue = %self.spec.queue, stats = ?self.stats, "consumer stopped");
    }
}

impl<T: DeserializeOwned + Send + 'static> Handler<StopConsumer> for ConsumerActor<T> {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopConsumer, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.stop_waiters.push(tx);
        self.begin_stop(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl<T: DeserializeOwned + Send + 'static> Handler<GetConsumerStats> for ConsumerActor<T> {
    type Result = MessageResult<GetConsumerStats>;

    fn handle(&mut self, _: GetConsumerStats, _: &mut Context<Self>) -> Self::Result {
        let mut stats = self.stats;
        stats.consuming = self.state == State::Consuming;
        stats.in_flight = self.in_flight as u64;
        MessageResult(stats)
    }
}

impl<T: DeserializeOwned + Send + 'static> StreamHandler<Incoming> for ConsumerActor<T> {
    fn handle(&mut self, item: Incoming, ctx: &mut Context<Self>) {
        match item {
            Incoming::Delivery(generation, delivery) => {
                if generation == self.generation && self.state == State::Consuming {
                    self.dispatch(delivery, ctx);
                } else if self.state != State::Connecting {
                    // After a cancel (stop, parked): back to the queue, unhandled.
                    actix::spawn(consumer_delivery::requeue_unhandled(delivery));
                }
            }
            Incoming::Failed(generation, reason) if generation == self.generation => {
                self.lost(reason, ctx);
            }
            Incoming::Ended(generation) if generation == self.generation => {
                self.lost("the broker cancelled the consumer".to_owned(), ctx);
            }
            Incoming::Failed(..) | Incoming::Ended(_) => {}
        }
    }

    /// Streams end on every reconnect; the actor lives on.
    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl<T: DeserializeOwned + Send + 'static> ConsumerActor<T> {
    /// Gets a channel and starts consuming (unless stopping).
    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.state != State::Connecting {
            return;
        }
        let opening = open_link(self.supervisor.clone(), self.spec.clone());
        ctx.spawn(
            opening
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok((channel, consumer)) => act.on_open(channel, consumer, ctx),
                    Err(e) => act.on_open_failed(e, ctx),
                }),
        );
    }

    fn on_open(&mut self, channel: Channel, consumer: Consumer, ctx: &mut Context<Self>) {
        if self.state != State::Connecting {
            actix::spawn(close(channel));
            return;
        }
        self.generation += 1;
        let generation = self.generation;
        let tag = consumer.tag();
        let items = consumer
            .map(move |item| match item {
                Ok(delivery) => Incoming::Delivery(generation, delivery),
                Err(e) => Incoming::Failed(generation, e.to_string()),
            })
            .chain(stream::once(async move { Incoming::Ended(generation) }));
        let stream = ctx.add_stream(items);
        self.link = Some(Link {
            channel,
            tag,
            stream,
        });
        self.state = State::Consuming;
        self.failures = 0;
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Ok(()));
            info!(queue = %self.spec.queue, handler = %self.spec.handler, "consumer started");
        } else {
            self.stats.reconnects += 1;
            info!(queue = %self.spec.queue, "consumer resumed");
        }
    }

    fn on_open_failed(&mut self, e: Error, ctx: &mut Context<Self>) {
        if let Some(ready) = self.ready.take() {
            // The first attempt: `Worker::start` reports it; no retrying in the background.
            let _ = ready.send(Err(e));
            self.state = State::Stopped;
            return ctx.stop();
        }
        if self.state != State::Connecting {
            return;
        }
        if matches!(e, Error::Shutdown) {
            // The connection supervisor was shut down: no channel will ever come.
            warn!(queue = %self.spec.queue, "broker connection shut down; consumer idle until stopped");
            self.state = State::Parked;
            return;
        }
        self.retry_later(&e.to_string(), ctx);
    }

    /// The channel broke while consuming: drop it and get a new one after a pause. (While
    /// stopping, the end of the stream is expected and the channel is closed by
    /// `finish_stop`.)
    fn lost(&mut self, reason: String, ctx: &mut Context<Self>) {
        if self.state != State::Consuming {
            return;
        }
        self.drop_link(ctx);
        self.state = State::Connecting;
        self.retry_later(&reason, ctx);
    }

    fn retry_later(&mut self, reason: &str, ctx: &mut Context<Self>) {
        let delay = self.spec.reconnect.delay_with_jitter(self.failures);
        self.failures = self.failures.saturating_add(1);
        warn!(queue = %self.spec.queue, %reason, retry_in = ?delay, "consumer lost its channel; consuming again after a pause");
        ctx.run_later(delay, |act, ctx| act.connect(ctx));
    }

    /// Hands one delivery to the handler, concurrently with the others — or, during
    /// probation, holds it until the handler has nothing else in flight.
    fn dispatch(&mut self, delivery: Delivery, ctx: &mut Context<Self>) {
        if self.probation > 0 && self.in_flight > 0 {
            self.waiting.push_back((self.generation, delivery));
            return;
        }
        self.start_delivery(delivery, ctx);
    }

    /// Releases held-back deliveries: one while on probation, all once it is over.
    fn release_waiting(&mut self, ctx: &mut Context<Self>) {
        while self.state == State::Consuming && (self.probation == 0 || self.in_flight == 0) {
            let Some((generation, delivery)) = self.waiting.pop_front() else {
                return;
            };
            if generation == self.generation {
                self.start_delivery(delivery, ctx);
            } // else: its channel is gone and the broker has requeued it
        }
    }

    fn start_delivery(&mut self, delivery: Delivery, ctx: &mut Context<Self>) {
        let Some(link) = &self.link else { return };
        let (handler, handler_generation, sends) = self.handler.current();
        let job = Job {
            channel: link.channel.clone(),
            spec: self.spec.clone(),
            handler,
            restartable: self.handler.restartable(),
            sends,
        };
        let generation = self.generation;
        self.in_flight += 1;
        let work = consumer_delivery::run(job, delivery);
        ctx.spawn(work.into_actor(self).map(move |report, act, ctx| {
            act.settled(report, generation, handler_generation, ctx);
        }));
    }

    /// Books one finished delivery and reacts to a dead handler or a broken channel.
    fn settled(&mut self, report: Report, generation: u64, handler: u64, ctx: &mut Context<Self>) {
        self.in_flight -= 1;
        self.stats.book(&report);
        let crashed = matches!(report.outcome, Outcome::Crashed | Outcome::Displaced);
        if crashed && self.handler.restart(handler) {
            self.stats.panics += 1;
            error!(queue = %self.spec.queue, handler = %self.spec.handler, "handler actor died (panic?); started a fresh one from its factory");
        }
        match &report.outcome {
            Outcome::Displaced => {
                // The crash's cause is one of the displaced events: they come back from the
                // queue and go to the fresh actor one at a time, so the next crash names it.
                self.probation += 1;
            }
            Outcome::Handled | Outcome::Failed(_) | Outcome::Crashed if self.probation > 0 => {
                self.probation -= 1;
            }
            Outcome::HandlerGone if self.state == State::Consuming => {
                error!(queue = %self.spec.queue, handler = %self.spec.handler, "handler actor is gone and was registered by address, so it cannot be restarted: stopped consuming; messages stay in the queue (register a factory to get restarts)");
                self.park(ctx);
            }
            _ => {}
        }
        if let Settled::Lost(reason) = report.settled
            && generation == self.generation
        {
            self.lost(reason, ctx);
        }
        if self.state == State::Stopping && self.in_flight == 0 {
            self.finish_stop(ctx);
        }
        self.release_waiting(ctx);
    }

    /// Stops consuming for good (the handler is gone): every unacked message is requeued.
    fn park(&mut self, ctx: &mut Context<Self>) {
        self.state = State::Parked;
        self.drop_link(ctx);
    }

    /// Stops reading the stream and closes the channel in the background (which gives every
    /// unacked delivery, held-back ones included, back to the queue).
    fn drop_link(&mut self, ctx: &mut Context<Self>) {
        self.waiting.clear();
        if let Some(link) = self.link.take() {
            ctx.cancel_future(link.stream);
            actix::spawn(close(link.channel));
        }
    }

    /// Cancels the consumer, then finishes once handlers in flight are done or the grace
    /// period is over.
    fn begin_stop(&mut self, ctx: &mut Context<Self>) {
        match self.state {
            State::Stopping | State::Stopped => return,
            State::Connecting | State::Parked => return self.finish_stop(ctx),
            State::Consuming => {}
        }
        self.state = State::Stopping;
        for (_, delivery) in self.waiting.drain(..) {
            actix::spawn(consumer_delivery::requeue_unhandled(delivery));
        }
        if let Some(link) = &self.link {
            actix::spawn(cancel(link.channel.clone(), link.tag.clone()));
        }
        if self.in_flight == 0 {
            return self.finish_stop(ctx);
        }
        let grace = self.spec.grace_period;
        info!(queue = %self.spec.queue, in_flight = self.in_flight, ?grace, "consumer stopping: waiting for handlers in flight");
        ctx.run_later(grace, |act, ctx| {
            if act.state == State::Stopping {
                warn!(queue = %act.spec.queue, in_flight = act.in_flight, "grace period over: closing the channel; unfinished messages will be redelivered");
                act.finish_stop(ctx);
            }
        });
    }

    /// Closes the channel (bounded), then stops the actor.
    fn finish_stop(&mut self, ctx: &mut Context<Self>) {
        self.state = State::Stopped;
        let link = self.link.take();
        if let Some(link) = &link {
            ctx.cancel_future(link.stream);
        }
        let closing = async move {
            if let Some(link) = link {
                close(link.channel).await;
            }
        };
        ctx.wait(closing.into_actor(self).map(|(), _, ctx| ctx.stop()));
    }
}
