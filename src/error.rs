//! The one error type of actix-outbox.

use derive_more::{Display, From};
use sea_orm::DbErr;

/// Everything that can go wrong in actix-outbox, from invalid configuration to a lost broker.
///
/// Messages are lowercase and name the failing thing (table, key, queue). Use
/// [`Error::is_retryable`] to tell transient failures (database or broker unreachable) from
/// mistakes that retrying will not fix (bad input, bad configuration).
///
/// Handler outcomes (retry, abort, reject) are not errors of the library: see
/// [`HandlerError`](crate::HandlerError).
#[derive(Debug, Display, derive_more::Error, From)]
#[non_exhaustive]
pub enum Error {
    /// A table name is not a plain SQL identifier.
    #[display("invalid outbox table name {name:?}: {reason}")]
    #[from(ignore)]
    InvalidTableName {
        /// The rejected name.
        #[error(not(source))]
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A routing key given to `emit` is not a valid AMQP topic routing key.
    #[display("invalid routing key {key:?}: {reason}")]
    #[from(ignore)]
    InvalidRoutingKey {
        /// The rejected key.
        #[error(not(source))]
        key: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A binding key given to a consumer is not a valid topic pattern.
    #[display("invalid binding key {key:?}: {reason}")]
    #[from(ignore)]
    InvalidBindingKey {
        /// The rejected key.
        #[error(not(source))]
        key: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A duration string such as `"1m30s"` could not be parsed, or is not positive.
    #[display("invalid duration {input:?}: {reason}")]
    #[from(ignore)]
    InvalidDuration {
        /// The rejected text.
        #[error(not(source))]
        input: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A configuration value is out of range or malformed.
    #[display("invalid configuration `{field}`: {reason}")]
    #[from(ignore)]
    InvalidConfig {
        /// The setting that is wrong (for example `batch_size`).
        #[error(not(source))]
        field: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A payload could not be encoded to, or decoded from, JSON.
    #[display("json payload: {_0}")]
    Json(serde_json::Error),
    /// A payload could not be encoded to MessagePack.
    #[cfg(feature = "msgpack")]
    #[display("msgpack payload encoding: {_0}")]
    MsgPackEncode(rmp_serde::encode::Error),
    /// A payload could not be decoded from MessagePack.
    #[cfg(feature = "msgpack")]
    #[display("msgpack payload decoding: {_0}")]
    MsgPackDecode(rmp_serde::decode::Error),
    /// A message has a content type this build cannot decode.
    #[display("unsupported content type {_0:?} (enable the matching codec feature)")]
    #[from(ignore)]
    UnsupportedContentType(#[error(not(source))] String),
    /// The outbox table exists but does not have the columns this version needs.
    #[display("outbox table {table:?} does not match the expected schema: {detail}")]
    #[from(ignore)]
    SchemaMismatch {
        /// The table that was checked.
        #[error(not(source))]
        table: String,
        /// What is missing or different.
        detail: String,
    },
    /// The database backend is not supported for this operation.
    #[display("unsupported database backend {_0} (PostgreSQL and SQLite are supported)")]
    #[from(ignore)]
    UnsupportedBackend(#[error(not(source))] String),
    /// A database operation failed.
    #[display("database: {_0}")]
    Db(DbErr),
    /// A message to an actor could not be delivered (the actor stopped or its mailbox is closed).
    #[display("actor mailbox: {_0}")]
    Mailbox(actix::MailboxError),
    /// A broker (AMQP) operation failed.
    #[cfg(feature = "amqp")]
    #[display("broker: {_0}")]
    Amqp(lapin::Error),
    /// A broker operation did not finish in time.
    #[display("timed out after {after:?} while {what}")]
    #[from(ignore)]
    Timeout {
        /// What was being waited for.
        #[error(not(source))]
        what: &'static str,
        /// How long we waited.
        after: std::time::Duration,
    },
    /// The broker refused an operation on one of its objects: a declaration with other
    /// arguments, a missing exchange or queue (check-only mode), a binding.
    #[display("broker refused {object} {name:?}: {reason}")]
    #[from(ignore)]
    BrokerRefused {
        /// The kind of object: `exchange`, `queue` or `binding`.
        #[error(not(source))]
        object: &'static str,
        /// Its name (for a binding: `queue <- exchange` with the key).
        name: String,
        /// What the broker said, and what to do about it.
        reason: String,
    },
    /// An operating-system resource could not be had, such as the thread lapin's I/O runs on.
    #[display("cannot {what}: {source}")]
    #[from(ignore)]
    Io {
        /// What was being done (`start the AMQP I/O thread`).
        what: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The component was shut down while the operation was pending.
    #[display("shut down")]
    #[from(ignore)]
    Shutdown,
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True when retrying the same operation later may succeed: the database or the broker was
    /// unreachable, a connection dropped, or an operation timed out.
    ///
    /// Invalid input and configuration are never retryable, and neither is a closed actor
    /// mailbox (the actor has stopped: asking it again finds it stopped again; a full mailbox
    /// is retryable).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Db(e) => is_retryable_db(e),
            Error::Mailbox(e) => matches!(e, actix::MailboxError::Timeout),
            Error::Timeout { .. } => true,
            #[cfg(feature = "amqp")]
            Error::Amqp(_) => true,
            _ => false,
        }
    }
}

impl Error {
    /// True when the error is a mistake in what the caller gave or configured: a table name,
    /// routing or binding key, duration or setting that is invalid, a backend or content type
    /// this build does not support, a table or broker object that does not match what this
    /// version expects. Fix the input or the deployment; retrying will not help.
    #[must_use]
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::InvalidTableName { .. }
                | Error::InvalidRoutingKey { .. }
                | Error::InvalidBindingKey { .. }
                | Error::InvalidDuration { .. }
                | Error::InvalidConfig { .. }
                | Error::UnsupportedContentType(_)
                | Error::UnsupportedBackend(_)
                | Error::SchemaMismatch { .. }
                | Error::BrokerRefused { .. }
        )
    }
}

/// Connection-level database failures are transient; constraint violations and SQL errors are not.
fn is_retryable_db(e: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    match e {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            is_retryable_sqlx(e)
        }
        _ => false,
    }
}

/// I/O, pool and protocol failures, plus SQLSTATE classes that mean "try again": connection
/// exceptions (08), operator intervention such as a server shutdown (57), serialization
/// failures and deadlocks (40), and a busy SQLite file.
fn is_retryable_sqlx(e: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error as E;
    match e {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => true,
        E::Protocol(_) => true,
        E::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("57")
                || code.starts_with("40")
                || code == "5"
                || code == "6"
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_failing_thing() {
        let e = Error::InvalidRoutingKey {
            key: "user.*".into(),
            reason: "wildcards are not allowed in routing keys",
        };
        assert_eq!(
            e.to_string(),
            "invalid routing key \"user.*\": wildcards are not allowed in routing keys"
        );
        assert!(!e.is_retryable());
    }

    #[test]
    fn connection_errors_are_retryable() {
        let e = Error::from(DbErr::Conn(sea_orm::RuntimeErr::Internal("down".into())));
        assert!(e.is_retryable());
        let e = Error::from(DbErr::Custom("syntax".into()));
        assert!(!e.is_retryable());
    }

    #[test]
    fn a_closed_mailbox_is_not_retryable_but_a_timeout_is() {
        assert!(!Error::from(actix::MailboxError::Closed).is_retryable());
        assert!(Error::from(actix::MailboxError::Timeout).is_retryable());
    }

    #[test]
    fn config_errors_are_classified() {
        let refused = Error::BrokerRefused {
            object: "queue",
            name: "mailer".into(),
            reason: "declared with other arguments".into(),
        };
        assert!(refused.is_config() && !refused.is_retryable());
        assert_eq!(
            refused.to_string(),
            "broker refused queue \"mailer\": declared with other arguments"
        );
        let invalid = Error::InvalidConfig {
            field: "batch_size",
            reason: "must be between 1 and 10000".into(),
        };
        assert!(invalid.is_config());
        let timeout = Error::Timeout {
            what: "connecting to the broker",
            after: std::time::Duration::from_secs(1),
        };
        assert!(!timeout.is_config() && timeout.is_retryable());
        let io = Error::Io {
            what: "start the AMQP I/O thread",
            source: std::io::Error::other("no threads left"),
        };
        assert!(!io.is_config());
        assert_eq!(
            io.to_string(),
            "cannot start the AMQP I/O thread: no threads left"
        );
    }
}
