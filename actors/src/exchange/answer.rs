//! The broker's answer to one publish, as relay and worker both read it.
//!
//! Every publish of this crate is made on a channel in confirm mode with `mandatory` set, so
//! the broker either confirms it (routed), returns it before confirming (routed nowhere),
//! refuses it (nack), or the client never hears back (channel failed, deadline passed).

use std::time::Duration;

use lapin::Confirmation;

/// How the broker answered one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Confirmed and routed to at least one queue (or taken by the alternate exchange).
    Confirmed,
    /// Confirmed but routed nowhere: the broker returned it (`mandatory`).
    Returned,
    /// Refused by the broker (a nack: it could not take responsibility for it).
    Nacked,
    /// No answer came: the text says why (the channel failed, the deadline passed, or the
    /// channel was not in confirm mode). The publish may or may not have been taken.
    Unknown(String),
}

impl Answer {
    /// Reads what awaiting a confirm under a deadline of `wait` gave.
    pub(crate) fn of(
        waited: Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>,
        wait: Duration,
    ) -> Self {
        match waited {
            Ok(Ok(Confirmation::Ack(None))) => Answer::Confirmed,
            Ok(Ok(Confirmation::Ack(Some(_)))) => Answer::Returned,
            Ok(Ok(Confirmation::Nack(_))) => Answer::Nacked,
            Ok(Ok(Confirmation::NotRequested)) => {
                Answer::Unknown("the channel is not in confirm mode".to_owned())
            }
            Ok(Err(e)) => Answer::Unknown(e.to_string()),
            Err(_) => Answer::Unknown(format!("no confirm within {wait:?}")),
        }
    }

    /// Whether the channel can no longer be trusted after this answer (anything but a
    /// confirm, a return or a nack).
    pub(crate) fn channel_error(&self) -> Option<&str> {
        match self {
            Answer::Unknown(why) => Some(why),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_map_to_answers() {
        let wait = Duration::from_secs(1);
        assert_eq!(
            Answer::of(Ok(Ok(Confirmation::Ack(None))), wait),
            Answer::Confirmed
        );
        assert_eq!(
            Answer::of(Ok(Ok(Confirmation::Nack(None))), wait),
            Answer::Nacked
        );
        let none = Answer::of(Ok(Ok(Confirmation::NotRequested)), wait);
        assert!(
            none.channel_error()
                .is_some_and(|w| w.contains("confirm mode"))
        );
        assert_eq!(Answer::Returned.channel_error(), None);
    }
}
