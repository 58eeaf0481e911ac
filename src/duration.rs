//! Human-friendly durations: `"500ms"`, `"10s"`, `"1m30s"`, `"2h"`.

use std::time::Duration;

use crate::error::{Error, Result};

/// Parses a positive duration written as one or more `<number><unit>` parts.
///
/// Units: `ms`, `s`, `m`, `h`, `d`. Parts may repeat in any order and are added up
/// (`"1m30s"` is 90 seconds). Zero is rejected: every duration in actix-outbox (retry delays,
/// poll intervals, expirations) must be positive.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use actix_outbox::parse_duration;
///
/// assert_eq!(parse_duration("1m30s")?, Duration::from_secs(90));
/// assert_eq!(parse_duration("500ms")?, Duration::from_millis(500));
/// assert!(parse_duration("0s").is_err());
/// # Ok::<(), actix_outbox::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::InvalidDuration`] for empty input, a missing number or unit, an unknown unit,
/// an overflow, or a total of zero.
pub fn parse_duration(input: &str) -> Result<Duration> {
    let err = |reason| Error::InvalidDuration {
        input: input.to_owned(),
        reason,
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(err("must not be empty"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err("expected a number, as in `1m30s`"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| err("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let part = unit(&rest[..unit_len], number)
            .ok_or_else(|| err("unknown or missing unit (use ms, s, m, h or d)"))?;
        total = total.checked_add(part).ok_or_else(|| err("too large"))?;
        rest = &rest[unit_len..];
    }
    if total.is_zero() {
        return Err(err("must be positive"));
    }
    Ok(total)
}

fn unit(unit: &str, n: u64) -> Option<Duration> {
    let secs = |mul: u64| n.checked_mul(mul).map(Duration::from_secs);
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3_600),
        "d" => secs(86_400),
        _ => None,
    }
}

/// Checks that a configured duration is positive.
///
/// # Errors
///
/// [`Error::InvalidConfig`] naming `field` when `value` is zero.
pub fn require_positive(field: &'static str, value: Duration) -> Result<()> {
    if value.is_zero() {
        return Err(Error::InvalidConfig {
            field,
            reason: "must be a positive duration".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_compound_parts() {
        let cases = [
            ("1ms", Duration::from_millis(1)),
            ("500ms", Duration::from_millis(500)),
            ("10s", Duration::from_secs(10)),
            ("1m", Duration::from_secs(60)),
            ("5m", Duration::from_secs(300)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7_200)),
            ("1d", Duration::from_secs(86_400)),
            ("1s500ms", Duration::from_millis(1_500)),
            (" 3s ", Duration::from_secs(3)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).expect(text), want, "{text}");
        }
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in [
            "",
            "10",
            "s",
            "10x",
            "1.5s",
            "-1s",
            "0s",
            "0ms",
            "1m 30s",
            "99999999999999999999s",
        ] {
            assert!(
                matches!(parse_duration(bad), Err(Error::InvalidDuration { .. })),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn zero_config_durations_are_rejected() {
        assert!(require_positive("poll_interval", Duration::ZERO).is_err());
        assert!(require_positive("poll_interval", Duration::from_millis(1)).is_ok());
    }
}
