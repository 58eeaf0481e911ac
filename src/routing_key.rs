//! Validation of the routing keys that events are emitted with.

use std::fmt;

use crate::error::{Error, Result};

/// The longest routing key AMQP 0-9-1 can carry (a short string).
pub const MAX_KEY_LEN: usize = 255;

/// A validated routing key such as `user.created`.
///
/// Routing keys are dot-separated words. Each word is non-empty and made of ASCII letters,
/// digits, `-` and `_`; the whole key is at most 255 bytes. The wildcards `*` and `#` belong in
/// binding keys ([`BindingKey`](crate::BindingKey)), never in the key an event is sent with.
///
/// # Examples
///
/// ```
/// use actix_outbox::RoutingKey;
///
/// assert!(RoutingKey::new("user.created").is_ok());
/// assert!(RoutingKey::new("user.*").is_err());
/// assert!(RoutingKey::new("user..created").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoutingKey(String);

impl RoutingKey {
    /// Validates `key` and wraps it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRoutingKey`] when the key is empty, longer than 255 bytes, has an empty
    /// word, a wildcard, or a character outside `[A-Za-z0-9_-]`.
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        match check_words(&key, false) {
            Ok(()) => Ok(Self(key)),
            Err(reason) => Err(Error::InvalidRoutingKey { key, reason }),
        }
    }

    /// The key as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as an owned string.
    #[must_use]
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for RoutingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RoutingKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for RoutingKey {
    type Error = Error;
    fn try_from(value: &str) -> Result<Self> {
        Self::new(value)
    }
}

impl TryFrom<String> for RoutingKey {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        Self::new(value)
    }
}

/// Shared word checker for routing keys and binding keys (`wildcards` allows `*` and `#` as
/// whole words).
pub(crate) fn check_words(key: &str, wildcards: bool) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("must not be empty");
    }
    if key.len() > MAX_KEY_LEN {
        return Err("longer than 255 bytes");
    }
    for word in key.split('.') {
        if word.is_empty() {
            return Err("empty word (leading, trailing or double dot)");
        }
        if word == "*" || word == "#" {
            if wildcards {
                continue;
            }
            return Err("wildcards (`*`, `#`) are only allowed in binding keys");
        }
        if word.contains(['*', '#']) {
            return Err("a wildcard must be a whole word, as in `user.*`");
        }
        if !word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err("words may only contain ASCII letters, digits, `_` and `-`");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_keys() {
        for key in ["user", "user.created", "a-b.c_d.E9", &"x".repeat(255)] {
            assert!(RoutingKey::new(key).is_ok(), "{key} should be valid");
        }
    }

    #[test]
    fn rejects_bad_keys_with_reasons() {
        let cases = [
            ("", "must not be empty"),
            (".user", "empty word"),
            ("user.", "empty word"),
            ("user..created", "empty word"),
            ("user.*", "wildcards"),
            ("order.#", "wildcards"),
            ("user.cre*", "whole word"),
            ("user created", "ASCII letters"),
            ("usér.created", "ASCII letters"),
        ];
        for (key, reason) in cases {
            let err = RoutingKey::new(key).expect_err(key);
            assert!(err.to_string().contains(reason), "{key}: {err}");
        }
        let long = "x".repeat(256);
        assert!(
            RoutingKey::new(long)
                .expect_err("oversize")
                .to_string()
                .contains("255")
        );
    }
}
