//! The mapping between outbox rows and AMQP messages: properties, our headers, user headers.
//!
//! Pure functions, used by the relay (row → message) and the consumers (message → event).

use actix_outbox::headers as h;
use actix_outbox::outbox_message::Model;
use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value};

/// AMQP delivery mode of messages that survive a broker restart.
const PERSISTENT: u8 = 2;

/// The AMQP properties of the message published for `row`, given the current time.
///
/// `expiration` is the time left until the row's deadline in milliseconds (`"0"` when already
/// past: the broker then dead-letters it from queues that have a dead-letter exchange).
pub(crate) fn properties(row: &Model, now: DateTime<Utc>) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Value::Object(user) = &row.headers {
        for (name, value) in user {
            headers.insert(ShortString::from(name.as_str()), json_to_amqp(value));
        }
    }
    headers.insert(h::ROUTING_KEY.into(), long(&row.routing_key));
    let mut props = BasicProperties::default()
        .with_message_id(row.message_id.to_string().into())
        .with_content_type(row.content_type.as_str().into())
        .with_delivery_mode(PERSISTENT)
        .with_timestamp(u64::try_from(row.created_at.timestamp()).unwrap_or(0));
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

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// JSON header values as AMQP field values (objects become nested tables).
pub(crate) fn json_to_amqp(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            (None, None) => long(&n.to_string()),
        },
        Value::String(s) => long(s),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(json_to_amqp).collect::<Vec<_>>(),
        )),
        Value::Object(map) => {
            let mut table = FieldTable::default();
            for (k, v) in map {
                table.insert(ShortString::from(k.as_str()), json_to_amqp(v));
            }
            AMQPValue::FieldTable(table)
        }
    }
}

/// AMQP field values as JSON (byte arrays and decimals become strings).
#[allow(dead_code)] // the consumer side decodes headers with it
pub(crate) fn amqp_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => Value::from(*i),
        AMQPValue::ShortShortUInt(i) => Value::from(*i),
        AMQPValue::ShortInt(i) => Value::from(*i),
        AMQPValue::ShortUInt(i) => Value::from(*i),
        AMQPValue::LongInt(i) => Value::from(*i),
        AMQPValue::LongUInt(i) => Value::from(*i),
        AMQPValue::LongLongInt(i) => Value::from(*i),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::Float(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        AMQPValue::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::ShortString(s) => Value::from(s.as_str()),
        AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_to_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(table_to_json(t)),
        AMQPValue::ByteArray(b) => Value::from(format!("{:?}", b.as_slice())),
        AMQPValue::DecimalValue(d) => Value::from(format!("{d:?}")),
        AMQPValue::Void => Value::Null,
    }
}

/// A field table as a JSON object.
#[allow(dead_code)] // the consumer side decodes headers with it
pub(crate) fn table_to_json(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), amqp_to_json(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn json_round_trips_through_amqp_values() {
        let value = json!({"s": "x", "i": -4, "f": 1.5, "b": true, "n": null, "a": [1, "two"], "o": {"k": 1}});
        assert_eq!(amqp_to_json(&json_to_amqp(&value)), value);
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
