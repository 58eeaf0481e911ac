//! `OutboxEvent`: an event about to be emitted, with its options (eta, expiration, headers).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::codec::{Codec, OCTET_STREAM};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::headers;

/// The most ids a tracking chain keeps (the first, the most recent ones, this event's own).
pub const MAX_TRACKING_IDS: usize = 64;
use crate::routing_key::RoutingKey;

/// An event to emit: routing key, encoded payload and delivery options.
///
/// Build one with [`OutboxEvent::json`] (or [`bytes`](Self::bytes), [`encoded`](Self::encoded)),
/// refine it with the `with_*` methods, then hand it to [`emit_event`](crate::emit_event) or
/// [`emit_many`](crate::emit_many). The payload is encoded and the routing key validated when
/// the event is built, so a bad event never reaches the database.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use actix_outbox::OutboxEvent;
///
/// let event = OutboxEvent::json("user.created", &serde_json::json!({"id": 123}))?
///     .with_delay(Duration::from_secs(30))
///     .with_expiration(Duration::from_secs(300))
///     .with_header("tenant", "acme");
/// assert_eq!(event.routing_key().as_str(), "user.created");
/// # Ok::<(), actix_outbox::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// Where the relay publishes it (validated).
    pub(crate) routing_key: RoutingKey,
    /// The encoded payload.
    pub(crate) payload: Vec<u8>,
    /// How `payload` is encoded.
    pub(crate) content_type: String,
    /// Stable id: the AMQP message id and the last tracking id.
    pub(crate) message_id: Uuid,
    /// User headers (names checked on insert).
    pub(crate) headers: Map<String, Value>,
    /// Ids of the events that caused this one, oldest first.
    pub(crate) tracking_ids: Vec<String>,
    /// Published as the AMQP `correlation_id`; `None`: the first id of the chain.
    pub(crate) correlation_id: Option<String>,
    /// Publish no earlier than this; `None` means now by the database clock.
    pub(crate) eta: Option<DateTime<Utc>>,
    /// Absolute deadline; past it the event is dead-lettered instead of handled.
    pub(crate) expires_at: Option<DateTime<Utc>>,
    /// Events of one key are published (and, by an ordered listener, handled) in emit order.
    pub(crate) ordering_key: Option<String>,
}

impl OutboxEvent {
    /// An event whose payload is `payload` encoded as JSON.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRoutingKey`] for a bad key, [`Error::Json`] when serialization fails.
    pub fn json<T: Serialize + ?Sized>(routing_key: &str, payload: &T) -> Result<Self> {
        Self::encoded(routing_key, Codec::Json, payload)
    }

    /// An event whose payload is `payload` encoded with `codec`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRoutingKey`] for a bad key, an encoding error from the codec.
    pub fn encoded<T: Serialize + ?Sized>(
        routing_key: &str,
        codec: Codec,
        payload: &T,
    ) -> Result<Self> {
        let key = RoutingKey::new(routing_key)?;
        let bytes = codec.encode(payload)?;
        Ok(Self::raw(key, bytes, codec.content_type().to_owned()))
    }

    /// An event whose payload is `payload` as is (`application/octet-stream`; change it with
    /// [`with_content_type`](Self::with_content_type)). No base64, no copy into JSON.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRoutingKey`] for a bad key.
    pub fn bytes(routing_key: &str, payload: impl Into<Vec<u8>>) -> Result<Self> {
        let key = RoutingKey::new(routing_key)?;
        Ok(Self::raw(key, payload.into(), OCTET_STREAM.to_owned()))
    }

    fn raw(routing_key: RoutingKey, payload: Vec<u8>, content_type: String) -> Self {
        Self {
            routing_key,
            payload,
            content_type,
            message_id: Uuid::now_v7(),
            headers: Map::new(),
            tracking_ids: Vec::new(),
            correlation_id: None,
            eta: None,
            expires_at: None,
            ordering_key: None,
        }
    }

    /// Sets the content type of the payload. Defaults to the codec's type. It travels as an
    /// AMQP short string: emitting an event whose content type is longer than 255 bytes fails
    /// with [`Error::InvalidConfig`].
    #[must_use]
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// Sets the message id, for producers that derive ids from their own data, so that
    /// consumers can recognise a re-emitted event by it. Defaults to a fresh time-ordered
    /// UUID (v7).
    ///
    /// The outbox table has no unique index on the message id: emitting the same id twice
    /// stores two rows and publishes two messages. Consumers that deduplicate by id (as they
    /// must for redeliveries anyway) see the second as a duplicate.
    #[must_use]
    pub fn with_message_id(mut self, id: Uuid) -> Self {
        self.message_id = id;
        self
    }

    /// Publishes the event no earlier than `eta`. Defaults to now, by the database clock on
    /// PostgreSQL.
    #[must_use]
    pub fn with_eta(mut self, eta: DateTime<Utc>) -> Self {
        self.eta = Some(eta);
        self
    }

    /// Publishes the event no earlier than `delay` from now (this host's clock).
    #[must_use]
    pub fn with_delay(self, delay: Duration) -> Self {
        self.with_eta(Utc::now() + to_chrono(delay))
    }

    /// Dead-letters the event instead of handling it once `deadline` has passed, however many
    /// retries it went through. Defaults to no deadline.
    #[must_use]
    pub fn with_expires_at(mut self, deadline: DateTime<Utc>) -> Self {
        self.expires_at = Some(deadline);
        self
    }

    /// Dead-letters the event if it is not handled within `ttl` from now (this host's clock).
    #[must_use]
    pub fn with_expiration(self, ttl: Duration) -> Self {
        self.with_expires_at(Utc::now() + to_chrono(ttl))
    }

    /// Orders this event after every earlier event of the same `key` (an aggregate id such as
    /// `"order-42"`): the relay never publishes an event of a key while an older event of that
    /// key is unsent — in flight in another batch or another relay, waiting for a retry after
    /// a refused publish, delayed by an eta, or parked — and an ordered listener
    /// ([`Listen::ordered`](../actix_outbox_actors/struct.Listen.html#method.ordered)) hands
    /// the events of one key to its handler one at a time, in that order. Events of different
    /// keys, and events without a key, are not held back by each other.
    ///
    /// "Earlier" is the order of the rows' ids, which is commit order for transactions that
    /// serialise on the aggregate (as transactions changing one aggregate do, by locking its
    /// row). Two transactions emitting for one key without any such lock have no defined
    /// order between them.
    ///
    /// The key travels as the `x-outbox-ordering-key` header ([`Event::ordering_key`]). It
    /// must be 1 to 255 bytes; [`validate`](Self::validate) checks it.
    ///
    /// # Examples
    ///
    /// ```
    /// use actix_outbox::OutboxEvent;
    ///
    /// let shipped = OutboxEvent::json("order.shipped", &serde_json::json!({"order": 42}))?
    ///     .with_ordering_key("order-42");
    /// assert_eq!(shipped.ordering_key(), Some("order-42"));
    /// # Ok::<(), actix_outbox::Error>(())
    /// ```
    #[must_use]
    pub fn with_ordering_key(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }

    /// The ordering key, if the event has one.
    #[must_use]
    pub fn ordering_key(&self) -> Option<&str> {
        self.ordering_key.as_deref()
    }

    /// Adds a user header that travels with the message. The name and value are checked by
    /// [`validate`](Self::validate), which every emit runs.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.headers.insert(name.to_owned(), value.into());
        self
    }

    /// Checks what AMQP must be able to carry; `emit_event` and `emit_many` run it before
    /// writing anything.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when the content type or the correlation id is longer than
    /// 255 bytes, the ordering key is empty or longer than 255 bytes, or a header
    /// name is empty, longer than 128 bytes, or reserved (`x-outbox-*`, or a name RabbitMQ
    /// sets such as `x-death`), or an object inside a header value has a field name longer
    /// than 255 bytes.
    pub fn validate(&self) -> Result<()> {
        headers::check_content_type(&self.content_type)?;
        if let Some(id) = &self.correlation_id {
            headers::check_correlation_id(id)?;
        }
        if let Some(key) = &self.ordering_key
            && (key.is_empty() || key.len() > crate::schema::MAX_ORDERING_KEY)
        {
            return Err(Error::InvalidConfig {
                field: "ordering_key",
                reason: format!(
                    "an ordering key must be 1 to {} bytes, not {}",
                    crate::schema::MAX_ORDERING_KEY,
                    key.len()
                ),
            });
        }
        for (name, value) in &self.headers {
            headers::check_user_header(name)?;
            headers::check_user_header_value(name, value)?;
        }
        Ok(())
    }

    /// Continues a tracking chain: pass the tracking ids of the event being handled so the
    /// chain of causes follows the new event. This event's own id is appended on emit. A
    /// chain longer than [`MAX_TRACKING_IDS`] keeps its first id and the most recent ones, so
    /// events that cause each other in a cycle cannot grow their headers without bound.
    #[must_use]
    pub fn with_tracking_ids<I, S>(mut self, ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tracking_ids = ids.into_iter().map(Into::into).collect();
        let keep = MAX_TRACKING_IDS - 1; // room for this event's own id
        if self.tracking_ids.len() > keep {
            let cut = self.tracking_ids.len() - (keep - 1);
            self.tracking_ids.drain(1..cut);
        }
        self
    }

    /// Emits this event as a consequence of `cause`, the event being handled: it continues
    /// `cause`'s tracking chain (so [`Event::tracking_ids`] of the new event ends with
    /// `cause`'s id and then its own, and [`Event::causation_id`] is `cause`'s id) and takes
    /// over its correlation id (published as the AMQP `correlation_id`).
    ///
    /// # Examples
    ///
    /// ```
    /// use actix_outbox::{Event, OutboxEvent};
    ///
    /// let order = Event::new("order.placed", 42);
    /// let invoice = OutboxEvent::json("invoice.created", &42)?.caused_by(&order);
    /// assert_eq!(invoice.correlation_id(), order.correlation_id());
    /// # Ok::<(), actix_outbox::Error>(())
    /// ```
    #[must_use]
    pub fn caused_by<T>(self, cause: &Event<T>) -> Self {
        let correlation_id = cause.correlation_id().to_owned();
        let mut event = self.with_tracking_ids(cause.tracking_ids().iter().cloned());
        event.correlation_id = Some(correlation_id);
        event
    }

    /// Sets the AMQP `correlation_id` the event is published with (at most 255 bytes).
    /// Defaults to the first id of the tracking chain: this event's own id, unless it
    /// continues a chain.
    #[must_use]
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// The correlation id the event will be published with.
    #[must_use]
    pub fn correlation_id(&self) -> String {
        match (&self.correlation_id, self.tracking_ids.first()) {
            (Some(id), _) => id.clone(),
            (None, Some(root)) => root.clone(),
            (None, None) => self.message_id.to_string(),
        }
    }

    /// The routing key.
    #[must_use]
    pub fn routing_key(&self) -> &RoutingKey {
        &self.routing_key
    }

    /// The message id the event will be published with.
    #[must_use]
    pub fn message_id(&self) -> Uuid {
        self.message_id
    }

    /// The encoded payload.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The headers column: user headers plus the tracking chain ending in this event's id.
    pub(crate) fn headers_json(&self) -> Value {
        let mut map = self.headers.clone();
        let mut chain: Vec<Value> = self.tracking_ids.iter().cloned().map(Value::from).collect();
        chain.push(Value::from(self.message_id.to_string()));
        map.insert(headers::TRACKING_IDS.to_owned(), Value::Array(chain));
        if let Some(id) = &self.correlation_id {
            map.insert(headers::CORRELATION_ID.to_owned(), Value::from(id.as_str()));
        }
        if let Some(key) = &self.ordering_key {
            map.insert(headers::ORDERING_KEY.to_owned(), Value::from(key.as_str()));
        }
        #[cfg(feature = "otel")]
        crate::otel::inject_current(&mut map);
        Value::Object(map)
    }
}

/// Converts a std duration, saturating at chrono's range (about 292 million years).
fn to_chrono(d: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX)
}

impl TryFrom<(&str, Value)> for OutboxEvent {
    type Error = Error;
    /// `(routing_key, json)` pairs, for quick `emit_many` calls.
    fn try_from((key, value): (&str, Value)) -> Result<Self> {
        Self::json(key, &value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_keys_fail_before_encoding() {
        assert!(matches!(
            OutboxEvent::json("user.*", &1),
            Err(Error::InvalidRoutingKey { .. })
        ));
        assert!(matches!(
            OutboxEvent::bytes("", vec![1]),
            Err(Error::InvalidRoutingKey { .. })
        ));
    }

    #[test]
    fn headers_carry_the_tracking_chain() {
        let event = OutboxEvent::json("a.b", &1)
            .expect("valid")
            .with_tracking_ids(["root"])
            .with_header("tenant", "acme");
        event.validate().expect("allowed header");
        let headers = event.headers_json();
        assert_eq!(headers["tenant"], "acme");
        let chain = headers[headers::TRACKING_IDS].as_array().expect("array");
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0], "root");
        assert_eq!(chain[1], event.message_id().to_string());
    }

    #[test]
    fn caused_by_continues_the_chain_and_the_correlation() {
        let root = Event::new("order.placed", 1);
        let child = OutboxEvent::json("invoice.created", &1)
            .expect("valid")
            .caused_by(&root);
        assert_eq!(child.correlation_id(), root.message_id().to_string());
        let headers = child.headers_json();
        let chain = headers[headers::TRACKING_IDS].as_array().expect("array");
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0], root.message_id().to_string());
        assert_eq!(headers[headers::CORRELATION_ID], root.correlation_id());
        let plain = OutboxEvent::json("a", &1).expect("valid");
        assert_eq!(plain.correlation_id(), plain.message_id().to_string());
        assert!(plain.headers_json().get(headers::CORRELATION_ID).is_none());
        let long = plain.with_correlation_id("c".repeat(256));
        assert!(long.validate().is_err(), "longer than an AMQP short string");
    }

    #[test]
    fn long_chains_keep_their_root_and_recent_ids() {
        let ids: Vec<String> = (0..200).map(|n| n.to_string()).collect();
        let event = OutboxEvent::json("a", &1)
            .expect("valid")
            .with_tracking_ids(ids);
        let headers = event.headers_json();
        let chain = headers[headers::TRACKING_IDS].as_array().expect("array");
        assert_eq!(chain.len(), MAX_TRACKING_IDS);
        assert_eq!(chain[0], "0", "the root stays");
        assert_eq!(chain[MAX_TRACKING_IDS - 2], "199", "the most recent cause");
        assert_eq!(chain[1], "138");
        assert_eq!(chain[MAX_TRACKING_IDS - 1], event.message_id().to_string());
    }

    #[test]
    fn ordering_keys_travel_as_a_header_and_are_checked() {
        let event = OutboxEvent::json("order.shipped", &1)
            .expect("valid")
            .with_ordering_key("order-42");
        event.validate().expect("a short key");
        assert_eq!(event.headers_json()[headers::ORDERING_KEY], "order-42");
        for bad in [String::new(), "k".repeat(256)] {
            let err = event.clone().with_ordering_key(bad).validate();
            assert!(
                matches!(
                    err,
                    Err(Error::InvalidConfig {
                        field: "ordering_key",
                        ..
                    })
                ),
                "{err:?}"
            );
        }
        let plain = OutboxEvent::json("a", &1).expect("valid");
        assert!(plain.headers_json().get(headers::ORDERING_KEY).is_none());
    }

    #[test]
    fn reserved_headers_are_refused() {
        let event = OutboxEvent::json("a.b", &1).expect("valid");
        assert!(event.with_header("x-outbox-attempt", 3).validate().is_err());
    }

    #[test]
    fn delay_and_expiration_are_absolute() {
        let before = Utc::now();
        let event = OutboxEvent::bytes("a", vec![])
            .expect("valid")
            .with_delay(Duration::from_secs(60))
            .with_expiration(Duration::from_secs(120));
        let eta = event.eta.expect("eta");
        let deadline = event.expires_at.expect("deadline");
        assert!(eta >= before + chrono::TimeDelta::seconds(60));
        assert!(deadline >= before + chrono::TimeDelta::seconds(120));
        assert_eq!(event.content_type, OCTET_STREAM);
    }
}
