//! Where a consumer's events go: the user's handler actor, given as an address (fixed) or as
//! a factory (restartable).
//!
//! actix does not catch panics: a handler that panics kills its actor, and every `send` to
//! it fails with a `MailboxError`. With a factory the consumer starts a fresh actor and goes
//! on. The event the actor died on counts as a failed attempt; when several events were sent
//! to it, which one killed it is unknown, so none is charged ([`SendTracker`]): they go back to
//! the queue and the consumer sends the next ones one at a time until a crash names its event.
//! With a fixed address there is nothing
//! to restart: the consumer requeues the message and stops taking deliveries, so nothing is
//! lost but that queue waits for the process to restart. Register with a factory whenever the
//! handler may panic.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use actix_outbox::Event;

/// Something [`Worker::listen`](crate::Worker::listen) can deliver events to:
///
/// - a factory closure `Fn() -> A` for an actor `A` — the worker starts `A` itself and starts
///   a fresh one whenever it dies (panics), so this is the form to prefer;
/// - an [`Addr<A>`] of an actor you started — not restartable;
/// - a [`Recipient<Event<T>>`] — not restartable either.
///
/// `Marker` only tells these impls apart; it is inferred.
pub trait IntoHandler<T: Send + 'static, Marker> {
    /// Wraps `self` for the worker.
    fn into_handler(self) -> HandlerSource<T>;
}

/// A handler as the worker holds it before starting. Built by [`IntoHandler`].
pub struct HandlerSource<T: Send + 'static> {
    /// How to reach (or make) the handler actor.
    kind: Kind<T>,
    /// The Rust type name the default queue name is derived from.
    type_name: &'static str,
}

enum Kind<T: Send + 'static> {
    /// Starts a new handler actor.
    Factory(std::rc::Rc<dyn Fn() -> Recipient<Event<T>>>),
    /// A running actor that cannot be replaced.
    Fixed(Recipient<Event<T>>),
}

impl<T: Send + 'static> fmt::Debug for HandlerSource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerSource")
            .field("type_name", &self.type_name)
            .field("restartable", &matches!(self.kind, Kind::Factory(_)))
            .finish()
    }
}

/// A copy for another consumer of the same handler (the partitions of an ordered listener):
/// a factory starts an actor per consumer, a fixed address is shared.
impl<T: Send + 'static> Clone for HandlerSource<T> {
    fn clone(&self) -> Self {
        let kind = match &self.kind {
            Kind::Factory(factory) => Kind::Factory(factory.clone()),
            Kind::Fixed(recipient) => Kind::Fixed(recipient.clone()),
        };
        Self {
            kind,
            type_name: self.type_name,
        }
    }
}

impl<T: Send + 'static> HandlerSource<T> {
    /// The handler's Rust type name.
    pub(crate) fn type_name(&self) -> &'static str {
        self.type_name
    }
}

impl<T, A, F> IntoHandler<T, fn() -> A> for F
where
    T: Send + 'static,
    F: Fn() -> A + 'static,
    A: Actor<Context = Context<A>> + Handler<Event<T>>,
{
    fn into_handler(self) -> HandlerSource<T> {
        HandlerSource {
            kind: Kind::Factory(std::rc::Rc::new(move || self().start().recipient())),
            type_name: std::any::type_name::<A>(),
        }
    }
}

impl<T, A> IntoHandler<T, Addr<A>> for Addr<A>
where
    T: Send + 'static,
    A: Actor + Handler<Event<T>>,
    A::Context: ToEnvelope<A, Event<T>>,
{
    fn into_handler(self) -> HandlerSource<T> {
        HandlerSource {
            kind: Kind::Fixed(self.recipient()),
            type_name: std::any::type_name::<A>(),
        }
    }
}

impl<T: Send + 'static> IntoHandler<T, Recipient<Event<T>>> for Recipient<Event<T>> {
    /// The default queue name comes from the payload type `T` here (the actor is unknown).
    fn into_handler(self) -> HandlerSource<T> {
        HandlerSource {
            kind: Kind::Fixed(self),
            type_name: std::any::type_name::<T>(),
        }
    }
}

/// The live handler of one consumer: the current recipient, and a generation that tells a
/// death already dealt with from a new one.
pub(crate) struct HandlerSlot<T: Send + 'static> {
    /// The factory, when restartable.
    factory: Option<std::rc::Rc<dyn Fn() -> Recipient<Event<T>>>>,
    /// Where events go now.
    current: Recipient<Event<T>>,
    /// Bumped on every restart.
    generation: u64,
    /// The sends to the current actor (a fresh tracker per actor).
    sends: Sends,
}

/// The events sent to one handler actor and not answered yet, to tell whether a dead actor
/// died on a known event (it was the only one sent) or on one of several.
pub(crate) type Sends = Rc<RefCell<SendTracker>>;

/// See [`Sends`].
#[derive(Debug, Default)]
pub(crate) struct SendTracker {
    /// Sends not answered yet.
    outstanding: usize,
    /// Once the actor is seen dead: how many sends were outstanding at that moment.
    crashed_with: Option<usize>,
}

impl SendTracker {
    /// A send is about to be made.
    pub(crate) fn begin(&mut self) {
        self.outstanding += 1;
    }

    /// A send found the actor dead: was it the only one outstanding when that was first
    /// noticed (so it caused the crash)?
    pub(crate) fn crash_was_alone(&mut self) -> bool {
        *self.crashed_with.get_or_insert(self.outstanding) == 1
    }

    /// A send got its answer (or its error).
    pub(crate) fn end(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
    }
}

impl<T: Send + 'static> HandlerSlot<T> {
    /// Starts the first handler actor (factories) or takes the given one. Must run inside an
    /// actix System.
    pub(crate) fn new(source: HandlerSource<T>) -> Self {
        match source.kind {
            Kind::Factory(factory) => Self {
                current: factory(),
                factory: Some(factory),
                generation: 1,
                sends: Sends::default(),
            },
            Kind::Fixed(current) => Self {
                factory: None,
                current,
                generation: 1,
                sends: Sends::default(),
            },
        }
    }

    /// The recipient to send the next event to, its generation and its send tracker.
    pub(crate) fn current(&self) -> (Recipient<Event<T>>, u64, Sends) {
        (self.current.clone(), self.generation, self.sends.clone())
    }

    /// Whether a dead handler can be replaced.
    pub(crate) fn restartable(&self) -> bool {
        self.factory.is_some()
    }

    /// Whether a handler registered by address is known to be gone (its actor stopped): it
    /// cannot be restarted, and a delivery sent to it would only come back.
    pub(crate) fn gone_for_good(&self) -> bool {
        self.factory.is_none() && !self.current.connected()
    }

    /// Replaces the handler that generation `seen` referred to, if it is still the current one
    /// and a factory exists. Returns whether a new actor was started.
    pub(crate) fn restart(&mut self, seen: u64) -> bool {
        match &self.factory {
            Some(factory) if seen == self.generation => {
                self.current = factory();
                self.generation += 1;
                self.sends = Sends::default();
                true
            }
            _ => false,
        }
    }
}

impl<T: Send + 'static> fmt::Debug for HandlerSlot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerSlot")
            .field("restartable", &self.restartable())
            .field("generation", &self.generation)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_is_attributed_only_to_a_lone_send() {
        let mut alone = SendTracker::default();
        alone.begin();
        assert!(alone.crash_was_alone());
        let mut crowd = SendTracker::default();
        crowd.begin();
        crowd.begin();
        assert!(!crowd.crash_was_alone());
        crowd.end();
        assert!(
            !crowd.crash_was_alone(),
            "decided at the first failure, not the last"
        );
    }
    use actix_outbox::HandlerResult;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Echo;

    impl Actor for Echo {
        type Context = Context<Self>;
    }

    impl Handler<Event<u32>> for Echo {
        type Result = HandlerResult;
        fn handle(&mut self, event: Event<u32>, _: &mut Context<Self>) -> HandlerResult {
            assert!(*event.payload() != 13, "unlucky");
            Ok(())
        }
    }

    #[actix_rt::test]
    async fn factories_restart_dead_handlers_once_per_death() {
        let made = Arc::new(AtomicUsize::new(0));
        let counter = made.clone();
        let source = (move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Echo
        })
        .into_handler();
        assert!(source.type_name().ends_with("Echo"));
        let mut slot = HandlerSlot::new(source);
        let (handler, generation, _) = slot.current();
        assert_eq!(handler.send(Event::new("k", 1)).await.ok(), Some(Ok(())));
        assert!(handler.send(Event::new("k", 13)).await.is_err(), "panicked");
        assert!(slot.restart(generation), "first report restarts");
        assert!(!slot.restart(generation), "a stale report does not");
        let (handler, _, _) = slot.current();
        assert_eq!(handler.send(Event::new("k", 2)).await.ok(), Some(Ok(())));
        assert_eq!(made.load(Ordering::SeqCst), 2);
    }

    #[actix_rt::test]
    async fn addresses_are_not_restartable() {
        let mut slot = HandlerSlot::new(Echo.start().into_handler());
        assert!(!slot.restartable());
        assert!(!slot.restart(1));
    }
}
