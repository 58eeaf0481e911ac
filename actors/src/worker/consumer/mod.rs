//! `ConsumerActor`: one queue's consumer — from the broker to the user's handler actor.
//! Its channel lifecycle (consuming, reconnecting, stopping) is in `lifecycle`.
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
//! and is settled by `worker::delivery`. When the stream fails or ends, or the channel is no
//! longer open (broker restart, force-closed connection), the actor drops the channel and
//! starts over with backoff: unacked messages are redelivered by the broker, none is lost.
//!
//! **Stop**: cancel the consumer, let handlers in flight finish within the grace period and
//! settle them, then close the channel. Deliveries that arrive after the cancel are requeued
//! without reaching the handler.
//!
//! **Handler restarts**: a handler actor that panics is replaced from its factory (see
//! `worker::handler` and `worker::probation`); the delivery it died on counts as a failed attempt, the deliveries
//! waiting in its mailbox are requeued uncharged, and the next deliveries go to the fresh actor
//! one at a time ("probation") until a crash can be attributed. A handler
//! registered by address cannot be replaced: the consumer requeues and stops consuming.
//! The consumer itself is not supervised; the broker's unacked deliveries, not its state, are
//! the source of truth.

mod lifecycle;

use actix::prelude::*;
use actix_outbox::{Error, Result};
use lapin::message::Delivery;

use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tracing::{error, info};

use super::acks::AckWindow;
use super::delivery::{self, Job, Report, Settled};
use super::handler::{HandlerSlot, HandlerSource};
use super::link::{Incoming, Link};
use super::listen::SharedSpec;
use super::probation::Probation;
use super::retry::Outcome;
use super::stats::{ConsumerStats, outcome_label};
use crate::broker::{self, ConnectionSupervisor};
use crate::exchange::dead_letter_queue;
use crate::metrics::ConsumerMetrics;

/// How often the consumer reads its dead-letter queue's depth for the metrics.
const DLQ_DEPTH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the lowest delivery in hand may hold back the acks owed above it before, with
/// half the prefetch owed so, they go one by one.
const SLOW_DELIVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// The most acks one coalesced ack carries. It is also at most a quarter of the prefetch,
/// so the broker keeps room to deliver while acks gather; with a prefetch under 8 every ack
/// goes out at once.
const ACK_BATCH_MAX: usize = 128;

/// Stops the consumer gracefully; resolves once it has stopped.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub(crate) struct StopConsumer;

/// Sends the owed acks (queued by the consumer to itself, so the deliveries settled in the
/// same turn are all booked before the acks are cut: they complete out of tag order).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
struct SendAcks;

/// Asks for the consumer's counters.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "ConsumerStats")]
pub(crate) struct GetConsumerStats;

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

/// The consumer of one queue. See the module docs for its lifecycle.
pub(crate) struct ConsumerActor<T: DeserializeOwned + Send + 'static> {
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
    /// After a crash with several events in the handler's mailbox: the deliveries that go to
    /// the new actor one at a time, and those held back meanwhile.
    probation: Probation<Delivery>,
    /// Tells `Worker::start` whether the first attempt to consume worked.
    ready: Option<oneshot::Sender<Result<()>>>,
    /// Consecutive failed attempts to consume (drives the backoff).
    failures: u32,
    /// The current channel's deliveries not settled yet and the acks owed (coalesced).
    acks: AckWindow,
    /// Whether a send of the owed acks is scheduled (after the spec's `ack_linger`).
    ack_timer: bool,
    /// Whether a [`SendAcks`] is queued.
    ack_queued: bool,
    /// Counters since start.
    stats: ConsumerStats,
    /// The same, and more, as metrics.
    metrics: ConsumerMetrics,
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
        let metrics = ConsumerMetrics::new(&spec.consume);
        let probation = match spec.partitions {
            0 => Probation::default(),
            _ => Probation::sequential(),
        };
        Self {
            metrics,
            spec,
            supervisor,
            handler: HandlerSlot::new(source),
            link: None,
            generation: 0,
            state: State::Connecting,
            in_flight: 0,
            probation,
            acks: AckWindow::default(),
            ack_timer: false,
            ack_queued: false,
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
        ctx.run_interval(DLQ_DEPTH_EVERY, |act, ctx| act.read_dlq_depth(ctx));
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

impl<T: DeserializeOwned + Send + 'static> Handler<SendAcks> for ConsumerActor<T> {
    type Result = ();

    fn handle(&mut self, _: SendAcks, ctx: &mut Context<Self>) {
        self.ack_queued = false;
        self.send_acks(ctx);
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
                let current = generation == self.generation && self.link.is_some();
                if current {
                    self.acks.delivered(delivery.delivery_tag);
                }
                if current && self.state == State::Consuming {
                    self.dispatch(delivery, ctx);
                } else if self.state != State::Connecting {
                    // After a cancel (stop, parked): back to the queue, unhandled.
                    self.requeue_unhandled(generation, delivery, ctx);
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
    /// Hands one delivery to the handler, concurrently with the others — or, during
    /// probation, holds it until the handler has nothing else in flight.
    fn dispatch(&mut self, delivery: Delivery, ctx: &mut Context<Self>) {
        if self.handler.gone_for_good() {
            // Its first failed send parks the consumer once settled; until then (a requeued
            // message may already be back) nothing more goes to it: parking closes the
            // channel, which returns this delivery to the queue unhandled.
            error!(queue = %self.spec.queue, handler = %self.spec.handler, "handler actor registered by address is gone: stopped consuming; messages stay in the queue");
            self.park(ctx);
            return;
        }
        if let Some(delivery) = self
            .probation
            .admit(self.generation, delivery, self.in_flight)
        {
            self.start_delivery(delivery, ctx);
        }
    }

    /// Releases held-back deliveries: one while on probation, all once it is over.
    fn release_waiting(&mut self, ctx: &mut Context<Self>) {
        while self.state == State::Consuming {
            let Some((generation, delivery)) = self.probation.release(self.in_flight) else {
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
            copy_turn: link.copy_turn.clone(),
            spec: self.spec.clone(),
            handler,
            restartable: self.handler.restartable(),
            sends,
        };
        let generation = self.generation;
        self.in_flight += 1;
        self.metrics.delivered.increment(1);
        self.metrics.in_flight.set(self.in_flight as f64);
        let work = delivery::run(job, delivery);
        ctx.spawn(work.into_actor(self).map(move |report, act, ctx| {
            act.settled(report, generation, handler_generation, ctx);
        }));
    }

    /// Gives a delivery back to the queue without handling it; it stays outstanding (no
    /// coalesced ack may pass over it) until its nack is written.
    pub(super) fn requeue_unhandled(
        &mut self,
        generation: u64,
        delivery: Delivery,
        ctx: &mut Context<Self>,
    ) {
        let tag = delivery.delivery_tag;
        let requeue = delivery::requeue_unhandled(delivery);
        ctx.spawn(requeue.into_actor(self).map(move |(), act, ctx| {
            if generation == act.generation && act.link.is_some() {
                act.acks.settled(tag);
                act.send_acks_when_due(ctx);
            }
        }));
    }

    /// Books the delivery's settlement in the ack window: an owed ack waits there, anything
    /// else was settled on its own. Stale channels' reports are ignored (their channel is
    /// gone and the broker redelivers what it did not settle).
    fn settle_ack(&mut self, report: &mut Report, generation: u64, ctx: &mut Context<Self>) {
        let current = generation == self.generation && self.link.is_some();
        match report.settled {
            Settled::AckOwed => {
                report.settled = Settled::Done;
                if current {
                    self.acks.owe(report.tag);
                }
            }
            _ if current => self.acks.settled(report.tag),
            _ => {}
        }
        if current {
            self.send_acks_when_due(ctx);
        }
    }

    /// Sends the owed acks once this turn's settlements are booked when enough have
    /// gathered (or the prefetch is small, or the linger zero), otherwise within the spec's
    /// `ack_linger`. Messages waiting for their ack hold prefetch slots, nothing else: a
    /// crash meanwhile means they are delivered again. Waiting also while the consumer is
    /// idle is what coalesces acks of a steady stream, where the handler is often done
    /// before the next message arrives.
    pub(super) fn send_acks_when_due(&mut self, ctx: &mut Context<Self>) {
        if self.acks.owed() == 0 {
            return;
        }
        let batch = (usize::from(self.spec.prefetch) / 4).clamp(1, ACK_BATCH_MAX);
        let linger = self.spec.ack_linger;
        if linger.is_zero() || self.acks.due(batch, self.singles_from()) {
            if !self.ack_queued {
                self.ack_queued = true;
                ctx.notify(SendAcks);
            }
            return;
        }
        self.send_acks_after(linger, ctx);
    }

    /// Sends the owed acks that may go after `delay`, unless a send is already scheduled.
    fn send_acks_after(&mut self, delay: std::time::Duration, ctx: &mut Context<Self>) {
        if !self.ack_timer {
            self.ack_timer = true;
            ctx.run_later(delay, |act, ctx| {
                act.ack_timer = false;
                act.send_acks(ctx);
            });
        }
    }

    /// How many acks owed above the lowest delivery in hand make them go one by one: half
    /// the prefetch, once that delivery has been in hand for `SLOW_DELIVERY`. Before that
    /// they wait for it: deliveries often finish a little out of order (handlers answer
    /// through the actor's mailbox), and a short wait then saves a hundred single frames.
    fn singles_from(&self) -> usize {
        if self.acks.oldest_outstanding() < SLOW_DELIVERY {
            usize::MAX
        } else {
            (usize::from(self.spec.prefetch) / 2).max(1)
        }
    }

    /// Sends the owed acks that may go: one multiple ack, and single ones once half the
    /// prefetch waits above a delivery in hand for `SLOW_DELIVERY`. A failed ack means the channel is
    /// gone: the broker redelivers those messages.
    pub(super) fn send_acks(&mut self, ctx: &mut Context<Self>) {
        let Some(channel) = self.link.as_ref().map(|link| link.channel.clone()) else {
            return;
        };
        let frames = self.acks.take(self.singles_from());
        let wait = SLOW_DELIVERY.saturating_sub(self.acks.oldest_outstanding());
        if self.acks.owed() > 0 && !wait.is_zero() {
            // Held above a delivery in hand that is not slow yet: look again once it is.
            self.send_acks_after(wait.max(self.spec.ack_linger), ctx);
        }
        let Some(frames) = frames else {
            return;
        };
        let generation = self.generation;
        self.stats.ack_frames += frames.frames() as u64;
        let count = frames.count as u64;
        let ack = delivery::send_acks(&channel, &frames);
        ctx.spawn(ack.into_actor(self).map(move |result, act, ctx| {
            if let Err(why) = result
                && generation == act.generation
            {
                act.stats.unsettled += count;
                act.lost(why, ctx);
            }
        }));
    }

    /// Books one finished delivery and reacts to a dead handler or a broken channel.
    fn settled(
        &mut self,
        mut report: Report,
        generation: u64,
        handler: u64,
        ctx: &mut Context<Self>,
    ) {
        self.in_flight -= 1;
        self.settle_ack(&mut report, generation, ctx);
        self.stats.book(&report);
        self.metrics.in_flight.set(self.in_flight as f64);
        self.metrics
            .outcome(outcome_label(&report), report.handler_time);
        let crashed = matches!(report.outcome, Outcome::Crashed | Outcome::Displaced);
        if crashed && self.handler.restart(handler) {
            self.stats.panics += 1;
            error!(queue = %self.spec.queue, handler = %self.spec.handler, "handler actor died (panic?); started a fresh one from its factory");
        }
        match &report.outcome {
            Outcome::Displaced => {
                // The crash's cause is one of the displaced events: they come back from the
                // queue and go to the fresh actor one at a time, so the next crash names it.
                self.probation.displaced();
            }
            Outcome::Handled | Outcome::Failed(_) | Outcome::Crashed => {
                self.probation.finished_alone();
            }
            Outcome::HandlerGone if self.state == State::Consuming => {
                error!(queue = %self.spec.queue, handler = %self.spec.handler, "handler actor is gone and was registered by address, so it cannot be restarted: stopped consuming; messages stay in the queue (register a factory to get restarts)");
                self.park(ctx);
            }
            _ => {}
        }
        if let Settled::Lost(reason) = &report.settled
            && generation == self.generation
        {
            self.lost(reason.clone(), ctx);
        }
        if let Settled::Requeued(why) = &report.settled
            && self.spec.partitions > 0
            && generation == self.generation
        {
            // An ordered partition: the requeued message goes back to the queue, and the
            // deliveries prefetched after it must not pass it. Closing the channel returns
            // them all, behind it, and the broker redelivers them in that order.
            self.lost(
                format!("ordered partition: a message was requeued ({why})"),
                ctx,
            );
        }
        if self.state == State::Stopping && self.in_flight == 0 {
            self.finish_stop(ctx);
        }
        self.release_waiting(ctx);
    }

    /// Reads the depth of `dlq_<queue>` on a throwaway channel into the metrics (while
    /// consuming; a failed read leaves the last value).
    fn read_dlq_depth(&mut self, ctx: &mut Context<Self>) {
        if self.state != State::Consuming {
            return;
        }
        let (supervisor, wait) = (self.supervisor.clone(), self.spec.channel_timeout);
        let dlq = dead_letter_queue(&self.spec.queue);
        let read = async move { broker::queue_depth(&supervisor, wait, &dlq).await };
        ctx.spawn(read.into_actor(self).map(|depth, act, _| {
            if let Some(depth) = depth {
                act.metrics.dlq_depth.set(f64::from(depth));
            }
        }));
    }
}
