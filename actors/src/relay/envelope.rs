//! The mapping between outbox rows and AMQP messages: properties, our headers, user headers.
//!
//! Pure functions; the consumer's side (message → event) is `worker::envelope`.

use actix_outbox::headers as h;
use actix_outbox::outbox_message::Model;
use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{FieldTable, ShortString};
use serde_json::Value;

use crate::exchange::{json_to_amqp, long, table_len};

/// AMQP delivery mode of messages that survive a broker restart.
const PERSISTENT: u8 = 2;

/// The AMQP properties of the message published for `row`, given the current time.
///
/// `expiration` is the time left until the row's deadline in milliseconds (`"0"` when already
/// past: the broker then dead-letters it from queues that have a dead-letter exchange).
pub(crate) fn properties(row: &Model, now: DateTime<Utc>) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut correlation_id = None;
    if let Value::Object(user) = &row.headers {
        for (name, value) in user {
            if name == h::CORRELATION_ID {
                correlation_id = value.as_str();
                continue;
            }
            headers.insert(ShortString::from(name.as_str()), json_to_amqp(value));
        }
        // By default the event that started the chain (the row's own id for a new chain).
        correlation_id = correlation_id.or_else(|| {
            user.get(h::TRACKING_IDS)
                .and_then(Value::as_array)
                .and_then(|chain| chain.first())
                .and_then(Value::as_str)
        });
    }
    headers.insert(h::ROUTING_KEY.into(), long(&row.routing_key));
    if let Some(key) = &row.ordering_key {
        // The column is the source of truth (the headers column has a copy).
        headers.insert(h::ORDERING_KEY.into(), long(key));
    }
    let mut props = BasicProperties::default()
        .with_message_id(row.message_id.to_string().into())
        .with_content_type(row.content_type.as_str().into())
        .with_delivery_mode(PERSISTENT)
        .with_timestamp(u64::try_from(row.created_at.timestamp()).unwrap_or(0));
    if let Some(id) = correlation_id.filter(|id| id.len() <= MAX_SHORT_STRING) {
        props = props.with_correlation_id(id.into());
    }
    if let Some(deadline) = row.expires_at {
        headers.insert(h::DEADLINE.into(), long(&deadline.to_rfc3339()));
        let left = (deadline - now).num_milliseconds().max(0);
        props = props.with_expiration(left.to_string().into());
    }
    props.with_headers(headers)
}

/// The longest AMQP short string (routing keys, content types, header names), in bytes.
const MAX_SHORT_STRING: usize = 255;

/// Why the broker cannot take `row`, if it cannot: a payload over `max_message_bytes` (the
/// broker's `max_message_size`: it would close the channel under the whole batch), or a
/// routing key, content type or header name (at any depth) longer than an AMQP short string
/// allows (`emit` refuses those, but rows written by other means reach the relay unchecked;
/// publishing one would fail inside lapin).
pub(crate) fn unpublishable(row: &Model, max_message_bytes: usize) -> Option<String> {
    if row.payload.len() > max_message_bytes {
        return Some(format!(
            "the payload is {} bytes; the broker takes at most {max_message_bytes} (max_message_size)",
            row.payload.len()
        ));
    }
    let too_long = |what: &str, len: usize| {
        format!("{what} is {len} bytes; AMQP allows at most {MAX_SHORT_STRING} bytes")
    };
    if row.routing_key.len() > MAX_SHORT_STRING {
        return Some(too_long("the routing key", row.routing_key.len()));
    }
    if row.content_type.len() > MAX_SHORT_STRING {
        return Some(too_long("the content type", row.content_type.len()));
    }
    longest_key(&row.headers)
        .filter(|&len| len > MAX_SHORT_STRING)
        .map(|len| too_long("a header name", len))
}

/// Why the broker cannot take a message with `props`, if it cannot: its content header frame
/// (every property, user headers included) is larger than the connection's `frame_max`.
/// RabbitMQ answers such a frame by closing the whole connection (FRAME_ERROR), under every
/// batch in flight, again on every try; so such a row is parked instead. `frame_max` 0 means
/// no limit.
pub(crate) fn oversize_properties(props: &BasicProperties, frame_max: u32) -> Option<String> {
    let len = header_frame_len(props);
    (frame_max > 0 && len > frame_max as usize).then(|| {
        format!(
            "its AMQP properties (headers included) take {len} bytes; the broker's frame_max \
             is {frame_max} and they must fit in one frame"
        )
    })
}

/// The size of the content header frame carrying `props`: frame header (7), class, weight
/// and body size (12), property flags (2), the properties this crate sets, frame end (1).
fn header_frame_len(props: &BasicProperties) -> usize {
    let short = |s: &Option<ShortString>| s.as_ref().map_or(0, |s| 1 + s.as_str().len());
    let fixed = 7 + 12 + 2 + 1;
    fixed
        + short(props.content_type())
        + props.headers().as_ref().map_or(0, table_len)
        + props.delivery_mode().map_or(0, |_| 1)
        + short(props.message_id())
        + short(props.correlation_id())
        + props.timestamp().map_or(0, |_| 8)
        + short(props.expiration())
}

/// The longest object key anywhere in `value`, in bytes.
fn longest_key(value: &Value) -> Option<usize> {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| longest_key(v).map_or(k.len(), |inner| inner.max(k.len())))
            .max(),
        Value::Array(items) => items.iter().filter_map(longest_key).max(),
        _ => None,
    }
}

/// True when the row's deadline has passed.
pub(crate) fn is_expired(row: &Model, now: DateTime<Utc>) -> bool {
    row.expires_at.is_some_and(|d| d <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::table_to_json;
    use serde_json::json;
    use uuid::Uuid;

    fn row(expires_at: Option<DateTime<Utc>>) -> Model {
        let now = Utc::now();
        Model {
            id: 1,
            message_id: Uuid::now_v7(),
            routing_key: "user.created".into(),
            payload: b"{}".to_vec(),
            content_type: "application/json".into(),
            headers: json!({"tenant": "acme", "x-outbox-tracking-ids": ["a", "b"], "n": 3}),
            created_at: now,
            send_after: now,
            expires_at,
            attempts: 0,
            last_error: None,
            sent_at: None,
            parked_at: None,
            ordering_key: None,
        }
    }

    #[test]
    fn properties_carry_ids_headers_and_persistence() {
        let r = row(None);
        let p = properties(&r, Utc::now());
        assert_eq!(
            p.message_id().as_ref().map(|s| s.to_string()),
            Some(r.message_id.to_string())
        );
        assert_eq!(p.delivery_mode(), &Some(PERSISTENT));
        assert!(p.expiration().is_none());
        let headers = table_to_json(p.headers().as_ref().expect("headers"));
        assert_eq!(headers["tenant"], "acme");
        assert_eq!(headers["n"], 3);
        assert_eq!(headers[h::TRACKING_IDS], json!(["a", "b"]));
        assert_eq!(headers[h::ROUTING_KEY], "user.created");
        let correlation = |p: &BasicProperties| p.correlation_id().as_ref().map(|c| c.to_string());
        assert_eq!(correlation(&p), Some("a".into()), "the chain's root");
        let mut explicit = row(None);
        explicit.headers[h::CORRELATION_ID] = json!("req-7");
        let p = properties(&explicit, Utc::now());
        assert_eq!(correlation(&p), Some("req-7".into()));
        let headers = table_to_json(p.headers().as_ref().expect("headers"));
        assert!(
            headers.get(h::CORRELATION_ID).is_none(),
            "a property, not a header"
        );
    }

    #[test]
    fn deadline_becomes_expiration_and_header() {
        let now = Utc::now();
        let p = properties(&row(Some(now + chrono::TimeDelta::seconds(30))), now);
        assert_eq!(
            p.expiration().as_ref().map(|s| s.to_string()),
            Some("30000".into())
        );
        let past = row(Some(now - chrono::TimeDelta::seconds(1)));
        assert!(is_expired(&past, now));
        let p = properties(&past, now);
        assert_eq!(
            p.expiration().as_ref().map(|s| s.to_string()),
            Some("0".into())
        );
        let headers = table_to_json(p.headers().as_ref().expect("headers"));
        assert!(headers.contains_key(h::DEADLINE));
    }

    #[test]
    fn properties_over_frame_max_are_named() {
        let mut r = row(None);
        let props = properties(&r, Utc::now());
        let len = header_frame_len(&props);
        assert!(len > 100 && len < 400, "{len}");
        assert_eq!(oversize_properties(&props, 131_072), None);
        assert_eq!(oversize_properties(&props, 0), None, "0: no limit");
        r.headers = json!({"big": "x".repeat(200_000)});
        let why = oversize_properties(&properties(&r, Utc::now()), 131_072).expect("too big");
        assert!(why.contains("frame_max"), "{why}");
        assert!(header_frame_len(&properties(&r, Utc::now())) > 200_000);
    }

    #[test]
    fn rows_amqp_cannot_carry_are_named() {
        let long = "x".repeat(256);
        assert_eq!(unpublishable(&row(None), usize::MAX), None);
        let mut r = row(None);
        r.content_type = long.clone();
        let why = unpublishable(&r, usize::MAX).expect("content type");
        assert!(why.contains("content type is 256 bytes"), "{why}");
        let mut r = row(None);
        r.routing_key = long.clone();
        assert!(
            unpublishable(&r, usize::MAX)
                .expect("key")
                .contains("routing key")
        );
        let mut r = row(None);
        r.headers = json!({"a": [{"b": {long.clone(): 1}}]});
        assert!(
            unpublishable(&r, usize::MAX)
                .expect("nested")
                .contains("header name is 256")
        );
        let mut r = row(None);
        r.headers = json!({"ok": {"x".repeat(255): 1}});
        assert_eq!(unpublishable(&r, usize::MAX), None, "255 bytes is allowed");
        let why = unpublishable(&row(None), 1).expect("payload over the limit");
        assert!(why.contains("payload is 2 bytes"), "{why}");
    }
}
