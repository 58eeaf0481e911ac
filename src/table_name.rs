//! The validated name of the outbox table.

use std::fmt;

use crate::error::{Error, Result};

/// The longest table name accepted. PostgreSQL truncates identifiers at 63 bytes; the names
/// `setup` derives from the table (index, trigger, function) add up to 15 bytes.
pub const MAX_TABLE_NAME_LEN: usize = 48;

/// A validated outbox table name: a plain, unquoted SQL identifier.
///
/// It starts with a lowercase ASCII letter or `_`, continues with lowercase letters, digits or
/// `_`, and is at most 48 bytes. Lowercase only, so the name means the same thing quoted and
/// unquoted on every backend. The name is checked before any SQL runs, which also rules out SQL
/// injection through configuration.
///
/// # Examples
///
/// ```
/// use actix_outbox::TableName;
///
/// assert_eq!(TableName::new("outbox")?.as_str(), "outbox");
/// assert!(TableName::new("outbox; drop table users").is_err());
/// # Ok::<(), actix_outbox::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName(String);

impl TableName {
    /// Validates `name` as an outbox table name.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTableName`] naming the rule that was broken.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        match check(&name) {
            Ok(()) => Ok(Self(name)),
            Err(reason) => Err(Error::InvalidTableName { name, reason }),
        }
    }

    /// The name as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TableName {
    /// The table `outbox`.
    fn default() -> Self {
        Self("outbox".to_owned())
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check(name: &str) -> Result<(), &'static str> {
    let Some(first) = name.bytes().next() else {
        return Err("must not be empty");
    };
    if name.len() > MAX_TABLE_NAME_LEN {
        return Err("longer than 48 bytes");
    }
    if !(first.is_ascii_lowercase() || first == b'_') {
        return Err("must start with a lowercase ASCII letter or `_`");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err("may only contain lowercase ASCII letters, digits and `_`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_identifiers() {
        for ok in ["outbox", "_outbox", "app_outbox_2", &"a".repeat(48)] {
            assert!(TableName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "1outbox",
            "Outbox",
            "out-box",
            "out box",
            "outbox;drop table x",
            "public.outbox",
            "\"outbox\"",
            &"a".repeat(49),
        ] {
            assert!(
                matches!(TableName::new(bad), Err(Error::InvalidTableName { .. })),
                "{bad:?} should be rejected"
            );
        }
    }
}
