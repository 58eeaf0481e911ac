//! The consumer's channel lifecycle: getting consuming (and again after a loss, with
//! backoff), parking for good, and the graceful stop. Deliveries themselves are sequenced in
//! the actor's own file.

use actix::prelude::*;
use actix_outbox::Error;
use lapin::{Channel, Consumer};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::{ConsumerActor, State};
use crate::worker::acks::AckFrames;
use crate::worker::delivery;
use crate::worker::link::{CopyTurn, Link, cancel, close, incoming, open_link};

impl<T: DeserializeOwned + Send + 'static> ConsumerActor<T> {
    /// Gets a channel and starts consuming (unless stopping).
    pub(super) fn connect(&mut self, ctx: &mut Context<Self>) {
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
        let stream = ctx.add_stream(incoming(consumer, generation));
        self.link = Some(Link {
            channel,
            copy_turn: CopyTurn::default(),
            tag,
            stream,
        });
        self.state = State::Consuming;
        self.failures = 0;
        self.read_dlq_depth(ctx);
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Ok(()));
            info!(queue = %self.spec.queue, handler = %self.spec.handler, "consumer started");
        } else {
            self.stats.reconnects += 1;
            self.metrics.reconnects.increment(1);
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
    pub(super) fn lost(&mut self, reason: String, ctx: &mut Context<Self>) {
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

    /// Stops consuming for good (the handler is gone): every unacked message is requeued.
    pub(super) fn park(&mut self, ctx: &mut Context<Self>) {
        self.state = State::Parked;
        self.drop_link(ctx);
    }

    /// Stops reading the stream and closes the channel in the background (which gives every
    /// unacked delivery, held-back ones included, back to the queue). Acks owed are sent
    /// first, where they may be, so handled messages do not come back.
    fn drop_link(&mut self, ctx: &mut Context<Self>) {
        let owed = self.acks.take(0);
        self.acks.clear();
        self.stats.ack_frames += owed.as_ref().map_or(0, |f| f.frames() as u64);
        self.probation.drain().for_each(drop);
        if let Some(link) = self.link.take() {
            ctx.cancel_future(link.stream);
            actix::spawn(ack_and_close(link.channel, owed));
        }
    }

    /// Cancels the consumer, then finishes once handlers in flight are done or the grace
    /// period is over.
    pub(super) fn begin_stop(&mut self, ctx: &mut Context<Self>) {
        match self.state {
            State::Stopping | State::Stopped => return,
            State::Connecting | State::Parked => return self.finish_stop(ctx),
            State::Consuming => {}
        }
        self.state = State::Stopping;
        let held: Vec<_> = self.probation.drain().collect();
        for delivery in held {
            self.requeue_unhandled(self.generation, delivery, ctx);
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

    /// Sends the acks owed, closes the channel (bounded), then stops the actor.
    pub(super) fn finish_stop(&mut self, ctx: &mut Context<Self>) {
        self.state = State::Stopped;
        let owed = self.acks.take(0);
        self.acks.clear();
        self.stats.ack_frames += owed.as_ref().map_or(0, |f| f.frames() as u64);
        let link = self.link.take();
        if let Some(link) = &link {
            ctx.cancel_future(link.stream);
        }
        let closing = async move {
            if let Some(link) = link {
                ack_and_close(link.channel, owed).await;
            }
        };
        ctx.wait(closing.into_actor(self).map(|(), _, ctx| ctx.stop()));
    }
}

/// Sends the acks `owed` if the channel is still open, then closes it: the ack frames go
/// out before the close, so those messages stay settled.
async fn ack_and_close(channel: Channel, owed: Option<AckFrames>) {
    if let Some(frames) = owed
        && channel.status().connected()
        && let Err(why) = delivery::send_acks(&channel, &frames).await
    {
        warn!(%why, count = frames.count, "acks owed before closing the channel did not reach the broker; it redelivers those messages");
    }
    close(channel).await;
}
