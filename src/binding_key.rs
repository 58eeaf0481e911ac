//! Binding keys (topic patterns with `*` and `#`) and how they match routing keys.

use std::fmt;

use crate::error::{Error, Result};
use crate::routing_key::check_words;

/// A validated topic binding key such as `user.*` or `order.#`.
///
/// Same words as a [`RoutingKey`](crate::RoutingKey), plus two whole-word wildcards with
/// RabbitMQ's topic semantics: `*` matches exactly one word, `#` matches zero or more words.
///
/// # Examples
///
/// ```
/// use actix_outbox::BindingKey;
///
/// let key = BindingKey::new("user.*")?;
/// assert!(key.matches("user.created"));
/// assert!(!key.matches("user.profile.updated"));
/// assert!(BindingKey::new("#")?.matches("anything.at.all"));
/// # Ok::<(), actix_outbox::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BindingKey(String);

impl BindingKey {
    /// Validates `key` and wraps it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBindingKey`] when the key is empty, longer than 255 bytes, has an empty
    /// word, a wildcard that is not a whole word (`user.cre*`), or a character outside
    /// `[A-Za-z0-9_-]`.
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        match check_words(&key, true) {
            Ok(()) => Ok(Self(key)),
            Err(reason) => Err(Error::InvalidBindingKey { key, reason }),
        }
    }

    /// The key as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when a message published with `routing_key` would be routed through this binding.
    #[must_use]
    pub fn matches(&self, routing_key: &str) -> bool {
        let pattern: Vec<&str> = self.0.split('.').collect();
        let words: Vec<&str> = routing_key.split('.').collect();
        topic_match(&pattern, &words)
    }
}

impl fmt::Display for BindingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<&str> for BindingKey {
    type Error = Error;
    fn try_from(value: &str) -> Result<Self> {
        Self::new(value)
    }
}

/// Word-by-word topic matching; `#` tries every split (patterns are short, so this is cheap).
fn topic_match(pattern: &[&str], words: &[&str]) -> bool {
    match pattern.split_first() {
        None => words.is_empty(),
        Some((&"#", rest)) => (0..=words.len()).any(|skip| topic_match(rest, &words[skip..])),
        Some((&"*", rest)) => !words.is_empty() && topic_match(rest, &words[1..]),
        Some((word, rest)) => words.first() == Some(word) && topic_match(rest, &words[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, key: &str) -> bool {
        BindingKey::new(pattern)
            .expect("valid pattern")
            .matches(key)
    }

    #[test]
    fn star_matches_exactly_one_word() {
        assert!(m("user.*", "user.created"));
        assert!(m("user.*", "user.deleted"));
        assert!(!m("user.*", "user.profile.updated"));
        assert!(!m("user.*", "user"));
        assert!(m("*.created", "order.created"));
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        assert!(m("#", "user.created"));
        assert!(m("#", "x"));
        assert!(m("order.#", "order"));
        assert!(m("order.#", "order.created"));
        assert!(m("order.#", "order.line.added"));
        assert!(!m("order.#", "user.created"));
        assert!(m("#.deleted", "user.deleted"));
        assert!(m("a.#.z", "a.z"));
        assert!(m("a.#.z", "a.b.c.z"));
        assert!(!m("a.#.z", "a.b.c"));
    }

    #[test]
    fn exact_keys_match_only_themselves() {
        assert!(m("user.created", "user.created"));
        assert!(!m("user.created", "user.created.v2"));
        assert!(!m("user.created", "user"));
    }

    #[test]
    fn rejects_malformed_patterns() {
        for bad in ["", "user.", "user..x", "us*r.created", "user.#x", "a b"] {
            assert!(
                matches!(BindingKey::new(bad), Err(Error::InvalidBindingKey { .. })),
                "{bad:?} should be rejected"
            );
        }
    }
}
