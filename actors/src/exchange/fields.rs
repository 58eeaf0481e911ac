//! JSON header values ↔ AMQP field values: the relay writes a row's JSON headers as a field
//! table, the consumer reads them back for `Event::headers`.

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value};

/// A string as an AMQP long string value.
pub(crate) fn long(s: &str) -> AMQPValue {
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
pub(crate) fn table_to_json(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), amqp_to_json(v)))
        .collect()
}

/// How many bytes `table` takes on the wire: a 4-byte length, then per field its name as a
/// short string, a type byte and the value.
pub(crate) fn table_len(table: &FieldTable) -> usize {
    4 + table
        .inner()
        .iter()
        .map(|(k, v)| 1 + k.as_str().len() + 1 + value_len(v))
        .sum::<usize>()
}

/// How many bytes one field value takes on the wire, its type byte excluded.
fn value_len(value: &AMQPValue) -> usize {
    match value {
        AMQPValue::Void => 0,
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
        AMQPValue::ByteArray(b) => 4 + b.as_slice().len(),
        AMQPValue::FieldArray(a) => {
            4 + a.as_slice().iter().map(|v| 1 + value_len(v)).sum::<usize>()
        }
        AMQPValue::FieldTable(t) => table_len(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lengths_match_the_encoding() {
        assert_eq!(table_len(&FieldTable::default()), 4);
        let mut t = FieldTable::default();
        t.insert("ab".into(), long("xyz")); // 1+2 name, 1 type, 4+3 value
        t.insert("n".into(), AMQPValue::LongLongInt(1)); // 1+1, 1, 8
        assert_eq!(table_len(&t), 4 + (3 + 1 + 7) + (2 + 1 + 8));
        let nested = json_to_amqp(&json!({"a": [true, null]}));
        // table: 4 + name 2 + type 1 + array (4 + (1+1) + (1+0))
        assert_eq!(value_len(&nested), 4 + 2 + 1 + 4 + 2 + 1);
    }

    #[test]
    fn json_round_trips_through_amqp_values() {
        let value = json!({"s": "x", "i": -4, "f": 1.5, "b": true, "n": null, "a": [1, "two"], "o": {"k": 1}});
        assert_eq!(amqp_to_json(&json_to_amqp(&value)), value);
    }
}
