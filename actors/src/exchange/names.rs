//! Validation of the exchange and queue names users configure.

use actix_outbox::{Error, Result};

/// Longest exchange or queue name accepted: leaves room within AMQP's 255-byte short strings
/// for the names derived from it (`dlq_<queue>`, `<exchange>.unroutable`, `<exchange>.dlx`,
/// `<exchange>.retry.<ms>ms`).
pub(crate) const MAX_NAME_LEN: usize = 200;

/// Checks an exchange or queue name: non-empty, at most [`MAX_NAME_LEN`] bytes, not starting
/// with `amq.` (reserved by RabbitMQ), and only `[A-Za-z0-9_.:-]`.
///
/// # Errors
///
/// [`Error::InvalidConfig`] for `field`, quoting the name and the rule it breaks.
fn check_amqp_name(field: &'static str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > MAX_NAME_LEN {
        "is longer than 200 bytes (names derived from it must fit in 255)"
    } else if name.starts_with("amq.") {
        "starts with `amq.`, which RabbitMQ reserves"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    {
        "may only contain ASCII letters, digits, `_`, `.`, `:` and `-`"
    } else {
        return Ok(());
    };
    Err(Error::InvalidConfig {
        field,
        reason: format!("{field} name {name:?} {reason}"),
    })
}

/// Exchange names: see [`check_amqp_name`].
pub(crate) fn check_exchange_name(name: &str) -> Result<()> {
    check_amqp_name("exchange", name)
}

/// Queue names: see [`check_amqp_name`].
pub(crate) fn check_queue_name(name: &str) -> Result<()> {
    check_amqp_name("queue", name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        for ok in ["outbox", "orders.v2:eu-west_1", &"q".repeat(200)] {
            assert!(check_amqp_name("queue", ok).is_ok(), "{ok}");
        }
        for bad in ["", "amq.topic", "has space", "ümlaut", &"q".repeat(201)] {
            let err = check_amqp_name("exchange", bad).expect_err(bad);
            assert!(
                matches!(
                    err,
                    Error::InvalidConfig {
                        field: "exchange",
                        ..
                    }
                ),
                "{bad:?}"
            );
        }
    }
}
