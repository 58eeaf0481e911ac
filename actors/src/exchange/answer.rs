//! The broker's answer to one publish, as relay and worker both read it.
//!
//! Every publish of this crate is made on a channel in confirm mode with `mandatory` set, so
//! the broker either confirms it (routed), returns it before confirming (routed nowhere),
//! refuses it (nack), or the client never hears back (channel failed, deadline passed).
//!
//! **Returns are not tied to their publish.** RabbitMQ sends `basic.return` before the
//! message's `basic.ack`, but lapin hands a return to whichever confirm it completes next, and
//! a multiple-ack completes its delivery tags in no particular order. So the confirm that
//! carries a return may belong to another publish of the same channel. A publish's answer is
//! therefore decided from the *set* of messages returned on its channel ([`resolve`]), by
//! message id, exchange and routing key, never from which confirm carried the return; and
//! that set is complete only once every confirm pending on the channel has completed. The
//! relay gets there by giving each batch in flight a channel of its own, the worker by
//! publishing one copy at a time per channel.

use std::collections::HashSet;
use std::time::Duration;

use lapin::Confirmation;
use lapin::message::BasicReturnMessage;

/// How the broker answered one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Confirmed and routed to at least one queue (or taken by the alternate exchange).
    Confirmed,
    /// Confirmed but routed nowhere: the broker returned it (`mandatory`).
    Returned,
    /// Refused by the broker (a nack: it could not take responsibility for it).
    Nacked,
    /// No answer came in time (or the channel was not in confirm mode): the text says why.
    /// The publish may or may not have been taken.
    Unknown(String),
    /// The channel or its connection failed before the answer came: the text says why. The
    /// publish may or may not have been taken.
    Failed(String),
}

impl Answer {
    /// Whether the channel can no longer be trusted after this answer (anything but a
    /// confirm, a return or a nack).
    pub(crate) fn channel_error(&self) -> Option<&str> {
        match self {
            Answer::Unknown(why) | Answer::Failed(why) => Some(why),
            _ => None,
        }
    }

    /// Whether the channel failed (rather than merely not answering in time).
    pub(crate) fn broke(&self) -> bool {
        matches!(self, Answer::Failed(_))
    }
}

/// What identifies a published message among the returns of its channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ReturnKey {
    /// The exchange it was published to.
    pub(crate) exchange: String,
    /// Its routing key.
    pub(crate) routing_key: String,
    /// Its AMQP message id.
    pub(crate) message_id: String,
}

impl ReturnKey {
    /// The key of a message published to `exchange` with `routing_key` and `message_id`.
    pub(crate) fn new(exchange: &str, routing_key: &str, message_id: &str) -> Self {
        Self {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            message_id: message_id.to_owned(),
        }
    }

    fn of(returned: &BasicReturnMessage) -> Self {
        let d = &returned.delivery;
        let id = d
            .properties
            .message_id()
            .as_ref()
            .map_or("", |s| s.as_str());
        Self::new(d.exchange.as_str(), d.routing_key.as_str(), id)
    }
}

/// One confirm as it completed: the answer to its own publish (a carried return aside), and
/// the return it carried, whoever's that is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Completed {
    /// Confirmed, nacked or unknown: never [`Answer::Returned`] (see [`resolve`]).
    answer: Answer,
    /// The key of the returned message this confirm carried.
    carried: Option<ReturnKey>,
}

impl Completed {
    /// Reads what awaiting a confirm under a deadline of `wait` gave.
    pub(crate) fn read(
        waited: Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>,
        wait: Duration,
    ) -> Self {
        let (answer, carried) = match waited {
            Ok(Ok(Confirmation::Ack(returned))) => (Answer::Confirmed, returned),
            Ok(Ok(Confirmation::Nack(returned))) => (Answer::Nacked, returned),
            Ok(Ok(Confirmation::NotRequested)) => (
                Answer::Unknown("the channel is not in confirm mode".to_owned()),
                None,
            ),
            Ok(Err(e)) => (Answer::Failed(e.to_string()), None),
            Err(_) => (Answer::Unknown(format!("no confirm within {wait:?}")), None),
        };
        Self {
            answer,
            carried: carried.map(|r| ReturnKey::of(&r)),
        }
    }
}

/// The answer to each publish of one channel, given how each confirm completed (in publish
/// order) and the key of publish `i` (`key_of(i)`). A publish whose key is among the returns
/// carried by *any* confirm was returned; every other publish answers with its own confirm.
/// Keys are built only when some confirm carried a return (rarely): a batch of 500 publishes
/// otherwise costs no string copies here.
///
/// Call it only once every confirm pending on the channel has completed (or the channel is
/// given up): before that, a return may still be on its way on another publish's confirm.
pub(crate) fn resolve(
    key_of: impl Fn(usize) -> ReturnKey,
    mut completed: Vec<Completed>,
) -> Vec<Answer> {
    let returned: HashSet<ReturnKey> = completed
        .iter_mut()
        .filter_map(|c| c.carried.take())
        .collect();
    completed
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            if !returned.is_empty() && returned.contains(&key_of(i)) {
                Answer::Returned
            } else {
                c.answer
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, rk: &str) -> ReturnKey {
        ReturnKey::new("outbox", rk, id)
    }

    fn confirmed(carried: Option<ReturnKey>) -> Completed {
        Completed {
            answer: Answer::Confirmed,
            carried,
        }
    }

    #[test]
    fn a_return_carried_by_another_confirm_is_still_ours() {
        let keys = [key("a", "ok.1"), key("b", "lost.1"), key("c", "ok.2")];
        // lapin completed `a`'s confirm with `b`'s return, and `b`'s with nothing.
        let completed = vec![
            confirmed(Some(key("b", "lost.1"))),
            confirmed(None),
            confirmed(None),
        ];
        assert_eq!(
            resolve(|i| keys[i].clone(), completed),
            [Answer::Confirmed, Answer::Returned, Answer::Confirmed]
        );
    }

    #[test]
    fn nacks_and_unknowns_answer_for_themselves() {
        let keys = [key("a", "x"), key("b", "y"), key("c", "z")];
        let completed = vec![
            Completed {
                answer: Answer::Nacked,
                carried: None,
            },
            Completed {
                answer: Answer::Unknown("channel closed".into()),
                carried: None,
            },
            Completed {
                answer: Answer::Nacked,
                carried: Some(key("c", "z")),
            },
        ];
        let answers = resolve(|i| keys[i].clone(), completed);
        assert_eq!(answers[0], Answer::Nacked);
        assert_eq!(answers[1].channel_error(), Some("channel closed"));
        assert_eq!(
            answers[2],
            Answer::Returned,
            "returned, whatever its own confirm said"
        );
    }

    #[test]
    fn the_same_message_id_on_another_key_is_another_message() {
        let keys = [key("dup", "ok.1"), key("dup", "lost.1")];
        let completed = vec![confirmed(None), confirmed(Some(key("dup", "lost.1")))];
        assert_eq!(
            resolve(|i| keys[i].clone(), completed),
            [Answer::Confirmed, Answer::Returned]
        );
    }

    #[test]
    fn no_confirm_mode_is_unknown() {
        let c = Completed::read(Ok(Ok(Confirmation::NotRequested)), Duration::from_secs(1));
        assert!(
            c.answer
                .channel_error()
                .is_some_and(|w| w.contains("confirm mode"))
        );
    }
}
