//! The consumer's side of the envelope: AMQP delivery → [`Event<T>`], and the properties of
//! the copies a consumer publishes (retries and dead letters).
//!
//! Pure functions; the relay's side (row → properties) is `relay::envelope`.

use std::any::TypeId;

use actix_outbox::__private::{Received, received_event};
use actix_outbox::headers as h;
use actix_outbox::{Codec, Event, RawPayload};
use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::exchange::amqp_to_json;

/// Headers RabbitMQ sets itself: never shown to handlers as user headers, and never copied
/// onto our retry and dead-letter copies (on a quorum queue, a copied `x-delivery-count`
/// would be mistaken for the broker's own).
const BROKER_HEADERS: [&str; 4] = [
    "x-death",
    "x-delivery-count",
    "x-first-death-",
    "x-last-death-",
];

/// Sender-selected extra routing keys: RabbitMQ would route a dead-lettered retry copy to
/// them as well, so they are never copied.
const SENDER_ROUTING: [&str; 2] = ["CC", "BCC"];

/// What a consumer needs to know about a delivery before decoding its payload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeliveryMeta {
    /// The key the event was emitted with (`x-outbox-routing-key`, else the delivery's).
    pub(crate) routing_key: String,
    /// The AMQP message id as a UUID. A message id that is not a UUID (published by other
    /// software) is mapped to a name-based UUID of it, and a message without one gets a
    /// UUID derived from its routing key and body: either way the same on every redelivery,
    /// so handlers can deduplicate by it.
    pub(crate) message_id: Uuid,
    /// `x-outbox-attempt`, 1 when absent.
    pub(crate) attempt: u32,
    /// How often this message was delivered before without being settled (a requeue, a
    /// closed channel, a crashed process): `x-delivery-count`, set by quorum queues, else
    /// `x-outbox-redeliveries`, set by our consumers on classic queues; 0 when absent.
    pub(crate) redeliveries: u32,
    /// `x-outbox-deadline`, when present and valid RFC 3339.
    pub(crate) deadline: Option<DateTime<Utc>>,
    /// `x-outbox-tracking-ids`, else just the message id.
    pub(crate) tracking_ids: Vec<String>,
    /// The AMQP `correlation_id`, when set.
    pub(crate) correlation_id: Option<String>,
    /// `x-outbox-ordering-key`, when set.
    pub(crate) ordering_key: Option<String>,
    /// All headers as JSON (ours and the broker's removed).
    pub(crate) user_headers: Map<String, Value>,
}

/// The namespace of the name-based UUIDs below (a fixed, arbitrary UUID of this crate's).
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a57_93d4_4e0b_a8c1_35d2_7e90_b4f6);

/// A message id as a UUID: itself when it is one, else a name-based (v5) UUID of it.
fn stable_id(id: &str) -> Uuid {
    Uuid::parse_str(id).unwrap_or_else(|_| Uuid::new_v5(&ID_NAMESPACE, id.as_bytes()))
}

/// The id of a message that has none: a name-based UUID of its routing key and body.
fn content_id(routing_key: &str, body: &[u8]) -> Uuid {
    let mut name = Vec::with_capacity(routing_key.len() + 1 + body.len());
    name.extend_from_slice(routing_key.as_bytes());
    name.push(0);
    name.extend_from_slice(body);
    Uuid::new_v5(&ID_NAMESPACE, &name)
}

impl DeliveryMeta {
    /// Reads the metadata of a delivery published with `delivery_key` and carrying `body`.
    pub(crate) fn read(delivery_key: &str, props: &BasicProperties, body: &[u8]) -> Self {
        let headers = props.headers().as_ref();
        let get = |name: &str| headers.and_then(|t| t.inner().get(name));
        let message_id = props
            .message_id()
            .as_ref()
            .map(|id| stable_id(id.as_str()))
            .unwrap_or_else(|| content_id(delivery_key, body));
        let routing_key = get(h::ROUTING_KEY)
            .and_then(as_text)
            .unwrap_or_else(|| delivery_key.to_owned());
        let deadline = get(h::DEADLINE)
            .and_then(as_text)
            .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
            .map(|d| d.with_timezone(&Utc));
        let tracking_ids = match get(h::TRACKING_IDS) {
            Some(AMQPValue::FieldArray(ids)) => ids.as_slice().iter().filter_map(as_text).collect(),
            _ => vec![message_id.to_string()],
        };
        // Only what is left once ours and the broker's are set aside is converted.
        let user_headers = headers.map_or_else(Map::new, |t| {
            t.inner()
                .iter()
                .filter(|(name, _)| !is_reserved(name.as_str()))
                .map(|(name, value)| (name.as_str().to_owned(), amqp_to_json(value)))
                .collect()
        });
        Self {
            routing_key,
            message_id,
            attempt: get(h::ATTEMPT).and_then(as_attempt).unwrap_or(1).max(1),
            redeliveries: get("x-delivery-count")
                .or_else(|| get(h::REDELIVERIES))
                .and_then(as_attempt)
                .unwrap_or(0),
            deadline,
            tracking_ids,
            correlation_id: props.correlation_id().as_ref().map(|c| c.to_string()),
            ordering_key: get(h::ORDERING_KEY).and_then(as_text),
            user_headers,
        }
    }

    /// True when the deadline has passed at `now`.
    pub(crate) fn expired_at(&self, now: DateTime<Utc>) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }

    /// The event handed to the handler.
    pub(crate) fn into_event<T>(self, payload: T, queue: &str) -> Event<T> {
        let parts = Received {
            routing_key: self.routing_key,
            message_id: self.message_id,
            attempt: self.attempt,
            tracking_ids: self.tracking_ids,
            correlation_id: self.correlation_id,
            deadline: self.deadline,
            headers: self.user_headers,
            queue: queue.to_owned(),
            ordering_key: self.ordering_key,
        };
        received_event(parts, payload)
    }
}

/// Decodes a payload into `T` by its content type; `Event<RawPayload>` handlers get the raw
/// bytes whatever the content type.
///
/// # Errors
///
/// The decode error's text (bad JSON, wrong shape, unsupported content type).
pub(crate) fn decode_payload<T: DeserializeOwned + 'static>(
    content_type: Option<&str>,
    data: &[u8],
) -> Result<T, String> {
    let codec = if TypeId::of::<T>() == TypeId::of::<RawPayload>() {
        Codec::Bytes
    } else {
        Codec::from_content_type(content_type).map_err(|e| e.to_string())?
    };
    codec.decode(data).map_err(|e| e.to_string())
}

/// The properties of a copy of `props` published by the consumer: `attempt` and the original
/// routing key set in our headers, `extra` headers added, the broker's own headers and the
/// redelivery count stripped (a copy starts a count of its own),
/// persistent, and `expiration` only as given (retry copies carry the time left until the
/// deadline; dead letters never expire). `user_id` is dropped: RabbitMQ refuses a publish
/// whose `user_id` is not the connection's user.
pub(crate) fn copy_properties(
    props: &BasicProperties,
    routing_key: &str,
    attempt: u32,
    expiration_ms: Option<i64>,
    extra: &[(&str, String)],
) -> BasicProperties {
    let mut table = props
        .headers()
        .as_ref()
        .map(|t| t.inner().clone())
        .unwrap_or_default();
    table.retain(|name, _| {
        let name = name.as_str();
        !BROKER_HEADERS.iter().any(|p| name.starts_with(p))
            && !SENDER_ROUTING.contains(&name)
            && name != h::REDELIVERIES
    });
    table.insert(
        h::ATTEMPT.into(),
        AMQPValue::LongLongInt(i64::from(attempt)),
    );
    table.insert(h::ROUTING_KEY.into(), long(routing_key));
    for (name, value) in extra {
        table.insert(ShortString::from(*name), long(value));
    }
    let mut out = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(FieldTable::from(table));
    out = copy(out, props.message_id(), BasicProperties::with_message_id);
    out = copy(
        out,
        props.content_type(),
        BasicProperties::with_content_type,
    );
    out = copy(
        out,
        props.content_encoding(),
        BasicProperties::with_content_encoding,
    );
    out = copy(
        out,
        props.correlation_id(),
        BasicProperties::with_correlation_id,
    );
    out = copy(out, props.reply_to(), BasicProperties::with_reply_to);
    out = copy(out, props.kind(), BasicProperties::with_type);
    out = copy(out, props.app_id(), BasicProperties::with_app_id);
    if let Some(t) = props.timestamp() {
        out = out.with_timestamp(*t);
    }
    if let Some(p) = props.priority() {
        out = out.with_priority(*p);
    }
    match expiration_ms {
        Some(ms) => out.with_expiration(ms.max(0).to_string().into()),
        None => out,
    }
}

/// Milliseconds left until `deadline` at `now` (never negative).
pub(crate) fn time_left_ms(deadline: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    (deadline - now).num_milliseconds().max(0)
}

/// Sets a short-string property on `out` when the original had it.
fn copy(
    out: BasicProperties,
    value: &Option<ShortString>,
    set: fn(BasicProperties, ShortString) -> BasicProperties,
) -> BasicProperties {
    match value {
        Some(v) => set(out, v.clone()),
        None => out,
    }
}

fn is_reserved(name: &str) -> bool {
    name.starts_with("x-outbox-") || BROKER_HEADERS.iter().any(|p| name.starts_with(p))
}

fn as_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn as_attempt(value: &AMQPValue) -> Option<u32> {
    let n: i64 = match value {
        AMQPValue::ShortShortInt(i) => (*i).into(),
        AMQPValue::ShortShortUInt(i) => (*i).into(),
        AMQPValue::ShortInt(i) => (*i).into(),
        AMQPValue::ShortUInt(i) => (*i).into(),
        AMQPValue::LongInt(i) => (*i).into(),
        AMQPValue::LongUInt(i) => (*i).into(),
        AMQPValue::LongLongInt(i) => *i,
        other => as_text(other)?.trim().parse().ok()?,
    };
    u32::try_from(n).ok()
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::table_to_json;
    use lapin::types::FieldArray;

    fn props(headers: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert((*k).into(), v.clone());
        }
        BasicProperties::default()
            .with_message_id("0190f5c2-7a1e-7cc4-b1e3-3a1d2b3c4d5e".into())
            .with_content_type("application/json".into())
            .with_user_id("someone-else".into())
            .with_expiration("5000".into())
            .with_headers(table)
    }

    #[test]
    fn meta_reads_our_headers_and_hides_reserved_ones() {
        let p = props(&[
            (h::ATTEMPT, AMQPValue::LongLongInt(3)),
            (h::ROUTING_KEY, long("user.created")),
            (h::DEADLINE, long("2030-01-02T03:04:05+00:00")),
            (
                h::TRACKING_IDS,
                AMQPValue::FieldArray(FieldArray::from(vec![long("a"), long("b")])),
            ),
            ("x-delivery-count", AMQPValue::LongLongInt(2)),
            ("tenant", long("acme")),
        ]);
        let meta = DeliveryMeta::read("dlq_ignored", &p, b"");
        assert_eq!(meta.attempt, 3);
        assert_eq!(meta.routing_key, "user.created");
        assert_eq!(
            meta.message_id.to_string(),
            "0190f5c2-7a1e-7cc4-b1e3-3a1d2b3c4d5e"
        );
        assert_eq!(meta.tracking_ids, ["a", "b"]);
        assert_eq!(
            meta.deadline.map(|d| d.to_rfc3339()).as_deref(),
            Some("2030-01-02T03:04:05+00:00")
        );
        assert_eq!(meta.user_headers.keys().collect::<Vec<_>>(), ["tenant"]);
        assert!(!meta.expired_at(Utc::now()));
    }

    #[test]
    fn foreign_ids_stay_the_same_on_every_redelivery() {
        let foreign = BasicProperties::default().with_message_id("order-42".into());
        let a = DeliveryMeta::read("k", &foreign, b"{}").message_id;
        assert_eq!(
            a,
            DeliveryMeta::read("k", &foreign, b"other body").message_id
        );
        assert_ne!(
            a,
            DeliveryMeta::read(
                "k",
                &BasicProperties::default().with_message_id("order-43".into()),
                b"{}"
            )
            .message_id
        );
        let none = BasicProperties::default();
        let b = DeliveryMeta::read("k", &none, b"{\"n\":1}").message_id;
        assert_eq!(
            b,
            DeliveryMeta::read("k", &none, b"{\"n\":1}").message_id,
            "same content, same id"
        );
        assert_ne!(b, DeliveryMeta::read("k", &none, b"{\"n\":2}").message_id);
        let uuid = Uuid::now_v7();
        let own = BasicProperties::default().with_message_id(uuid.to_string().into());
        assert_eq!(
            DeliveryMeta::read("k", &own, b"").message_id,
            uuid,
            "UUIDs are kept"
        );
    }

    #[test]
    fn meta_defaults_for_foreign_messages() {
        let meta = DeliveryMeta::read("user.created", &BasicProperties::default(), b"");
        assert_eq!(meta.attempt, 1);
        assert_eq!(meta.routing_key, "user.created");
        assert_eq!(meta.tracking_ids, [meta.message_id.to_string()]);
        assert!(meta.deadline.is_none());
        let text_attempt = props(&[(h::ATTEMPT, long("4")), (h::DEADLINE, long("garbage"))]);
        let meta = DeliveryMeta::read("k", &text_attempt, b"");
        assert_eq!(meta.attempt, 4);
        assert_eq!(meta.redeliveries, 0);
        let quorum = props(&[("x-delivery-count", AMQPValue::LongLongInt(7))]);
        assert_eq!(DeliveryMeta::read("k", &quorum, b"").redeliveries, 7);
        let classic = props(&[(h::REDELIVERIES, long("2"))]);
        assert_eq!(DeliveryMeta::read("k", &classic, b"").redeliveries, 2);
        let both = props(&[
            ("x-delivery-count", AMQPValue::LongLongInt(1)),
            (h::REDELIVERIES, long("5")),
        ]);
        assert_eq!(
            DeliveryMeta::read("k", &both, b"").redeliveries,
            1,
            "the broker's count wins"
        );
        assert!(meta.deadline.is_none(), "an invalid deadline is ignored");
    }

    #[test]
    fn payloads_decode_by_content_type_or_raw() {
        let ok: Value = decode_payload(Some("application/json"), br#"{"a":1}"#).expect("json");
        assert_eq!(ok["a"], 1);
        let err = decode_payload::<u32>(Some("application/json"), b"{nope").expect_err("bad json");
        assert!(err.contains("json"), "{err}");
        assert!(decode_payload::<Value>(Some("text/xml"), b"<a/>").is_err());
        let raw: RawPayload = decode_payload(Some("application/json"), br#"{"a":1}"#).expect("raw");
        assert_eq!(raw.0, br#"{"a":1}"#);
    }

    #[test]
    fn copies_bump_the_attempt_and_keep_the_rest() {
        let p = props(&[
            (h::ROUTING_KEY, long("user.created")),
            ("x-delivery-count", AMQPValue::LongLongInt(1)),
            (h::REDELIVERIES, long("1")),
            (
                "CC",
                AMQPValue::FieldArray(FieldArray::from(vec![long("other_queue")])),
            ),
            ("tenant", long("acme")),
        ]);
        let meta = DeliveryMeta::read("user.created", &p, b"");
        let copy = copy_properties(
            &p,
            &meta.routing_key,
            2,
            Some(1_500),
            &[(h::REASON, "boom".into())],
        );
        let headers = table_to_json(copy.headers().as_ref().expect("headers"));
        assert_eq!(headers[h::ATTEMPT], 2);
        assert_eq!(headers[h::ROUTING_KEY], "user.created");
        assert_eq!(headers[h::REASON], "boom");
        assert_eq!(headers["tenant"], "acme");
        assert!(!headers.contains_key("x-delivery-count"));
        assert!(
            !headers.contains_key(h::REDELIVERIES),
            "a copy counts afresh"
        );
        assert!(!headers.contains_key("CC"), "no extra routing on retries");
        assert_eq!(copy.message_id(), p.message_id());
        assert_eq!(copy.content_type(), p.content_type());
        assert!(copy.user_id().is_none());
        assert_eq!(
            copy.expiration().as_ref().map(ShortString::as_str),
            Some("1500")
        );
        let dead = copy_properties(&p, &meta.routing_key, 1, None, &[]);
        assert!(dead.expiration().is_none(), "dead letters never expire");
    }

    #[test]
    fn time_left_is_never_negative() {
        let now = Utc::now();
        assert_eq!(time_left_ms(now - chrono::TimeDelta::seconds(1), now), 0);
        assert_eq!(
            time_left_ms(now + chrono::TimeDelta::seconds(2), now),
            2_000
        );
    }
}
