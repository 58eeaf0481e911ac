//! `Event<T>`: what a handler actor receives.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::outcome::HandlerResult;

/// A delivered event with a decoded payload of type `T`: the actix message handler actors
/// implement `Handler<Event<T>>` for.
///
/// Besides the payload it carries what a handler needs to be idempotent and to trace causes:
/// the routing key it was emitted with, the stable message id (the same on every re-send and
/// retry), the attempt number, the tracking chain, the deadline and the user headers.
///
/// # Examples
///
/// ```
/// use actix::prelude::*;
/// use actix_outbox::{Event, HandlerResult};
///
/// #[derive(serde::Deserialize)]
/// struct UserCreated { id: u64 }
///
/// struct WelcomeMailer;
/// impl Actor for WelcomeMailer { type Context = Context<Self>; }
///
/// impl Handler<Event<UserCreated>> for WelcomeMailer {
///     type Result = HandlerResult;
///     fn handle(&mut self, event: Event<UserCreated>, _: &mut Context<Self>) -> HandlerResult {
///         println!("welcome user {} (attempt {})", event.payload().id, event.attempt());
///         Ok(())
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Event<T> {
    /// The decoded payload.
    payload: T,
    /// The routing key the event was emitted with (not the retry queue's).
    routing_key: String,
    /// The outbox row's UUID: stable across re-sends and retries.
    message_id: Uuid,
    /// 1 on first delivery, 2 after one retry, …
    attempt: u32,
    /// Chain of causes, oldest first, ending with this event's id.
    tracking_ids: Vec<String>,
    /// The AMQP `correlation_id`: by default the first id of the chain.
    correlation_id: Option<String>,
    /// Absolute deadline, if the event was emitted with an expiration.
    deadline: Option<DateTime<Utc>>,
    /// User headers (our `x-outbox-*` headers removed).
    headers: Map<String, Value>,
    /// The queue it was consumed from (`""` for an event built by hand).
    queue: String,
    /// The ordering key it was emitted with.
    ordering_key: Option<String>,
}

impl<T: 'static> actix::Message for Event<T> {
    type Result = HandlerResult;
}

impl<T> Event<T> {
    /// A first-attempt event with a fresh message id; mostly for tests of handlers. Use the
    /// `with_*` methods to set the rest.
    #[must_use]
    pub fn new(routing_key: impl Into<String>, payload: T) -> Self {
        let message_id = Uuid::now_v7();
        Self {
            payload,
            routing_key: routing_key.into(),
            message_id,
            attempt: 1,
            tracking_ids: vec![message_id.to_string()],
            correlation_id: None,
            deadline: None,
            headers: Map::new(),
            queue: String::new(),
            ordering_key: None,
        }
    }

    /// The event a consumer hands to its handler, built from what the delivery carried (no
    /// fresh id is drawn: that costs a `getrandom` system call per message).
    pub(crate) fn received(parts: Received, payload: T) -> Self {
        Self {
            payload,
            routing_key: parts.routing_key,
            message_id: parts.message_id,
            attempt: parts.attempt,
            tracking_ids: parts.tracking_ids,
            correlation_id: parts.correlation_id,
            deadline: parts.deadline,
            headers: parts.headers,
            queue: parts.queue,
            ordering_key: parts.ordering_key,
        }
    }

    /// Sets the correlation id. Defaults to the first id of the tracking chain.
    #[must_use]
    pub fn with_correlation_id(mut self, id: Option<String>) -> Self {
        self.correlation_id = id;
        self
    }

    /// The correlation id: what the event was emitted with
    /// ([`OutboxEvent::with_correlation_id`](crate::OutboxEvent::with_correlation_id), or
    /// inherited through [`OutboxEvent::caused_by`](crate::OutboxEvent::caused_by)), else the
    /// id of the event that started the tracking chain. It travels as the AMQP
    /// `correlation_id` property, so other AMQP software sees it too.
    #[must_use]
    pub fn correlation_id(&self) -> &str {
        match (&self.correlation_id, self.tracking_ids.first()) {
            (Some(id), _) => id,
            (None, Some(root)) => root,
            (None, None) => "",
        }
    }

    /// The message id of the event whose handler emitted this one (the second-to-last id of
    /// the tracking chain), if it was emitted with
    /// [`OutboxEvent::caused_by`](crate::OutboxEvent::caused_by) or a chain.
    #[must_use]
    pub fn causation_id(&self) -> Option<&str> {
        let n = self.tracking_ids.len();
        (n >= 2).then(|| self.tracking_ids[n - 2].as_str())
    }

    /// Sets the message id (and the last tracking id). Defaults to a fresh UUID.
    #[must_use]
    pub fn with_message_id(mut self, id: Uuid) -> Self {
        self.message_id = id;
        if let Some(last) = self.tracking_ids.last_mut() {
            *last = id.to_string();
        }
        self
    }

    /// Sets the attempt number (1-based). Defaults to 1.
    #[must_use]
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self
    }

    /// Sets the tracking chain. Defaults to just this event's id.
    #[must_use]
    pub fn with_tracking_ids(mut self, ids: Vec<String>) -> Self {
        self.tracking_ids = ids;
        self
    }

    /// Sets the deadline. Defaults to none.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Option<DateTime<Utc>>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Sets the user headers. Defaults to none.
    #[must_use]
    pub fn with_headers(mut self, headers: Map<String, Value>) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the queue the event came from (the consumer does; for tests of handlers).
    #[must_use]
    pub fn with_queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Sets the ordering key (the consumer does, from the `x-outbox-ordering-key` header).
    #[must_use]
    pub fn with_ordering_key(mut self, key: Option<String>) -> Self {
        self.ordering_key = key;
        self
    }

    /// The ordering key the event was emitted with
    /// ([`OutboxEvent::with_ordering_key`](crate::OutboxEvent::with_ordering_key)), if any.
    pub fn ordering_key(&self) -> Option<&str> {
        self.ordering_key.as_deref()
    }

    /// The queue the event was consumed from: the handler's own queue, which keys its
    /// [`Inbox`](crate::Inbox) entries. Empty for an event built with [`Event::new`].
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The decoded payload.
    pub fn payload(&self) -> &T {
        &self.payload
    }

    /// Takes the payload out of the event.
    pub fn into_payload(self) -> T {
        self.payload
    }

    /// The routing key the event was emitted with.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// The message id: use it to make handlers idempotent (delivery is at-least-once).
    pub fn message_id(&self) -> Uuid {
        self.message_id
    }

    /// The delivery attempt: 1 the first time, 2 after one retry, …
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The chain of message ids that led here, oldest first, ending with this one. Pass it to
    /// [`OutboxEvent::with_tracking_ids`](crate::OutboxEvent::with_tracking_ids) when emitting
    /// follow-up events.
    pub fn tracking_ids(&self) -> &[String] {
        &self.tracking_ids
    }

    /// The absolute deadline, if the event was emitted with an expiration.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        self.deadline
    }

    /// The user headers set at emit.
    pub fn headers(&self) -> &Map<String, Value> {
        &self.headers
    }

    /// Replaces the payload, keeping everything else (for decoding steps).
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Event<U> {
        Event {
            payload: f(self.payload),
            routing_key: self.routing_key,
            message_id: self.message_id,
            attempt: self.attempt,
            tracking_ids: self.tracking_ids,
            correlation_id: self.correlation_id,
            deadline: self.deadline,
            headers: self.headers,
            queue: self.queue,
            ordering_key: self.ordering_key,
        }
    }
}

/// What a consumer read from a delivery, for `Event::received` (through
/// `__private::received_event`; not part of the public API).
#[derive(Debug)]
pub struct Received {
    /// The key the event was emitted with.
    pub routing_key: String,
    /// The AMQP message id as a UUID.
    pub message_id: Uuid,
    /// The attempt number (1-based).
    pub attempt: u32,
    /// The tracking chain, ending in this event's id.
    pub tracking_ids: Vec<String>,
    /// The correlation id, when set.
    pub correlation_id: Option<String>,
    /// The deadline, when set.
    pub deadline: Option<DateTime<Utc>>,
    /// The user headers.
    pub headers: Map<String, Value>,
    /// The queue it was consumed from.
    pub queue: String,
    /// The ordering key, when set.
    pub ordering_key: Option<String>,
}

/// `Event::received`, for `actix-outbox-actors`.
pub fn received_event<T>(parts: Received, payload: T) -> Event<T> {
    Event::received(parts, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_event_tracks_itself() {
        let id = Uuid::now_v7();
        let event = Event::new("user.created", 5_u32)
            .with_message_id(id)
            .with_attempt(0);
        assert_eq!(event.attempt(), 1, "attempts are 1-based");
        assert_eq!(event.tracking_ids(), &[id.to_string()]);
        let mapped = event.map(|n| n * 2);
        assert_eq!(*mapped.payload(), 10);
        assert_eq!(mapped.message_id(), id);
    }
}
