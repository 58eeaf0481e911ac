//! Payload codecs: how event payloads become bytes in the outbox row and back.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// How a payload is encoded. The content type travels with the message, so the consumer
/// decodes whatever the producer chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Codec {
    /// JSON via serde_json (`application/json`). The default.
    #[default]
    Json,
    /// MessagePack via rmp-serde (`application/msgpack`): smaller and faster than JSON.
    /// Needs the `msgpack` feature on both sides.
    MsgPack,
    /// Raw bytes, not encoded at all (`application/octet-stream`).
    Bytes,
}

/// The content type of JSON payloads.
pub(crate) const JSON: &str = "application/json";
/// The content type of MessagePack payloads.
pub(crate) const MSGPACK: &str = "application/msgpack";
/// The content type of raw byte payloads.
pub(crate) const OCTET_STREAM: &str = "application/octet-stream";

impl Codec {
    /// The MIME content type written with payloads of this codec.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Codec::Json => JSON,
            Codec::MsgPack => MSGPACK,
            Codec::Bytes => OCTET_STREAM,
        }
    }

    /// The codec for a content type; `None` (absent) means JSON, for messages published by
    /// other tools. Parameters such as `; charset=utf-8` are ignored.
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedContentType`] for anything else.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Self> {
        let essence = content_type.map(|ct| ct.split(';').next().unwrap_or("").trim());
        match essence {
            None | Some("") | Some(JSON) => Ok(Codec::Json),
            Some(MSGPACK | "application/x-msgpack") => Ok(Codec::MsgPack),
            Some(OCTET_STREAM) => Ok(Codec::Bytes),
            Some(other) => Err(Error::UnsupportedContentType(other.to_owned())),
        }
    }

    /// Encodes `value` with this codec.
    ///
    /// # Errors
    ///
    /// [`Error::Json`] / `Error::MsgPackEncode` when serialization fails,
    /// [`Error::UnsupportedContentType`] for `Bytes` (use raw bytes directly) or for MessagePack
    /// without the `msgpack` feature.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>> {
        match self {
            Codec::Json => Ok(serde_json::to_vec(value)?),
            #[cfg(feature = "msgpack")]
            Codec::MsgPack => Ok(rmp_serde::to_vec_named(value)?),
            other => Err(Error::UnsupportedContentType(
                other.content_type().to_owned(),
            )),
        }
    }

    /// Decodes `bytes` into `T` with this codec. For `Bytes`, `T` is deserialized from the raw
    /// byte buffer (use [`RawPayload`](crate::RawPayload)).
    ///
    /// # Errors
    ///
    /// [`Error::Json`] / `Error::MsgPackDecode` when the bytes do not hold a `T`.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T> {
        match self {
            Codec::Json => Ok(serde_json::from_slice(bytes)?),
            #[cfg(feature = "msgpack")]
            Codec::MsgPack => Ok(rmp_serde::from_slice(bytes)?),
            #[cfg(not(feature = "msgpack"))]
            Codec::MsgPack => Err(Error::UnsupportedContentType(MSGPACK.to_owned())),
            Codec::Bytes => {
                use serde::de::IntoDeserializer;
                let de: serde::de::value::BytesDeserializer<'_, serde_json::Error> =
                    bytes.into_deserializer();
                Ok(T::deserialize(de)?)
            }
        }
    }
}

/// A payload taken as raw bytes, whatever its content type. Use `Event<RawPayload>` for
/// handlers that decode payloads themselves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawPayload(pub Vec<u8>);

impl<'de> serde::Deserialize<'de> for RawPayload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawPayload;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<RawPayload, E> {
                Ok(RawPayload(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<RawPayload, E> {
                Ok(RawPayload(v))
            }
        }
        d.deserialize_byte_buf(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct User {
        id: u64,
        name: String,
    }

    #[test]
    fn json_round_trip() {
        let user = User {
            id: 7,
            name: "ada".into(),
        };
        let bytes = Codec::Json.encode(&user).expect("encode");
        assert_eq!(bytes, br#"{"id":7,"name":"ada"}"#);
        assert_eq!(Codec::Json.decode::<User>(&bytes).expect("decode"), user);
    }

    #[test]
    fn wrong_shape_is_a_decode_error() {
        let err = Codec::Json
            .decode::<User>(br#"{"id":"seven"}"#)
            .expect_err("wrong shape");
        assert!(matches!(err, Error::Json(_)), "{err}");
        assert!(Codec::Json.decode::<User>(b"not json").is_err());
    }

    #[test]
    fn content_types_map_to_codecs() {
        assert_eq!(Codec::from_content_type(None).ok(), Some(Codec::Json));
        assert_eq!(
            Codec::from_content_type(Some("application/json; charset=utf-8")).ok(),
            Some(Codec::Json)
        );
        assert_eq!(
            Codec::from_content_type(Some(OCTET_STREAM)).ok(),
            Some(Codec::Bytes)
        );
        assert!(matches!(
            Codec::from_content_type(Some("text/xml")),
            Err(Error::UnsupportedContentType(_))
        ));
    }

    #[test]
    fn raw_bytes_pass_through() {
        let raw: RawPayload = Codec::Bytes.decode(&[0, 159, 146, 150]).expect("bytes");
        assert_eq!(raw.0, vec![0, 159, 146, 150]);
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_round_trip() {
        let user = User {
            id: 1,
            name: "bob".into(),
        };
        let bytes = Codec::MsgPack.encode(&user).expect("encode");
        assert_eq!(Codec::MsgPack.decode::<User>(&bytes).expect("decode"), user);
    }
}
