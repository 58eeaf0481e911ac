//! What a handler returns: success, or one of four kinds of failure.

use std::fmt;

/// The result type of `Handler<Event<T>>`: `Ok(())` acks the message.
pub type HandlerResult = Result<(), HandlerError>;

/// Why a handler did not finish an event, and so what happens to the message.
///
/// | variant | outcome |
/// |---|---|
/// | [`Failed`](Self::Failed) (any `?`-propagated error) | delayed retry by the handler's tiers, then dead-letter; dead-letter at once when `retry_on_error` is off |
/// | [`Retry`](Self::Retry) | delayed retry even when `retry_on_error` is off; dead-letter when tiers are exhausted |
/// | [`Abort`](Self::Abort) | ack and drop (logged at warn): no retry, no dead letter |
/// | [`Reject`](Self::Reject) | dead-letter to `dlq_<queue>` at once |
///
/// Any `std::error::Error` converts into `Failed` with `?`, so handlers can propagate their own
/// errors. `HandlerError` itself deliberately does not implement `std::error::Error` (that
/// keeps the blanket conversion coherent, as in `anyhow`).
///
/// # Examples
///
/// ```
/// use actix_outbox::{HandlerError, HandlerResult};
///
/// fn check(id: u64) -> HandlerResult {
///     let parsed: u64 = "42".parse()?; // a ParseIntError becomes HandlerError::Failed
///     match id {
///         0 => Err(HandlerError::reject("id 0 can never be processed")),
///         1 => Err(HandlerError::retry("the mail server is warming up")),
///         2 => Err(HandlerError::abort("user already deleted")),
///         _ => Ok(()),
///     }
/// }
/// assert!(matches!(check(0), Err(HandlerError::Reject(_))));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerError {
    /// An ordinary failure: retried per `retry_on_error` and the delay tiers.
    Failed(String),
    /// Retry later, even when `retry_on_error` is off.
    Retry(String),
    /// Give up quietly: ack, log at warn, no dead letter.
    Abort(String),
    /// Dead-letter now, without retrying.
    Reject(String),
}

impl HandlerError {
    /// An ordinary failure with this reason.
    pub fn failed(reason: impl Into<String>) -> Self {
        Self::Failed(reason.into())
    }

    /// Forces a delayed retry.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry(reason.into())
    }

    /// Acks and drops the message.
    pub fn abort(reason: impl Into<String>) -> Self {
        Self::Abort(reason.into())
    }

    /// Dead-letters the message at once.
    pub fn reject(reason: impl Into<String>) -> Self {
        Self::Reject(reason.into())
    }

    /// The reason text.
    #[must_use]
    pub fn reason(&self) -> &str {
        match self {
            Self::Failed(r) | Self::Retry(r) | Self::Abort(r) | Self::Reject(r) => r,
        }
    }

    /// The variant's name in lowercase (`failed`, `retry`, `abort`, `reject`), for logs and
    /// headers.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Failed(_) => "failed",
            Self::Retry(_) => "retry",
            Self::Abort(_) => "abort",
            Self::Reject(_) => "reject",
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.reason())
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(e: E) -> Self {
        Self::Failed(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_convert_to_failed() {
        fn parse() -> HandlerResult {
            let _: u8 = "300".parse()?;
            Ok(())
        }
        let err = parse().expect_err("300 overflows u8");
        assert_eq!(err.kind(), "failed");
        assert!(err.reason().contains("too large"), "{err}");
    }

    #[test]
    fn display_names_kind_and_reason() {
        assert_eq!(HandlerError::reject("bad").to_string(), "reject: bad");
    }
}
