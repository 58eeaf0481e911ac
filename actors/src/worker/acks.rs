//! Ack coalescing: one `basic.ack` with `multiple = true` settles a run of handled
//! deliveries, instead of one ack frame (and one hop through lapin's threads) per message.
//!
//! A multiple ack for tag `T` settles **every** unacked delivery of the channel up to `T`,
//! so it may only be sent once every delivery up to `T` is settled: acked by the handler's
//! outcome (owed here), or already nacked on its own (a requeue). A delivery still with its
//! handler, held back by probation, or whose nack has not been written yet stays
//! *outstanding* and keeps the ack below it. Pure bookkeeping for one channel; the consumer
//! actor decides when to send (see `ConsumerActor::send_acks_when_due`). Acks owed above an
//! outstanding delivery wait for it, until half the prefetch is waiting so; then they go as
//! single acks, so a slow handler never holds the prefetch window of the messages handled
//! after it.
//!
//! Delivery tags are per channel and the consumer sees its deliveries in tag order, so every
//! tag below the highest one registered has been registered too.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Owed acks taken from an [`AckWindow`], as frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AckFrames {
    /// A multiple ack up to this tag.
    pub(crate) up_to: Option<u64>,
    /// Single acks.
    pub(crate) singles: Vec<u64>,
    /// How many deliveries the frames settle.
    pub(crate) count: usize,
}

impl AckFrames {
    /// How many frames these are.
    pub(crate) fn frames(&self) -> usize {
        usize::from(self.up_to.is_some()) + self.singles.len()
    }
}

/// The acks of one channel: deliveries not settled yet, and acks owed but not sent.
#[derive(Debug, Default)]
pub(crate) struct AckWindow {
    /// Delivered and not settled (with the handler, held back, or being nacked), and when
    /// each arrived.
    outstanding: BTreeMap<u64, Instant>,
    /// Handled (or copied elsewhere, confirmed) and owed an ack that was not sent yet.
    owed: BTreeSet<u64>,
}

impl AckWindow {
    /// A delivery arrived on the channel.
    pub(crate) fn delivered(&mut self, tag: u64) {
        self.outstanding.insert(tag, Instant::now());
    }

    /// How long the lowest outstanding delivery has been in hand (zero if none is).
    pub(crate) fn oldest_outstanding(&self) -> Duration {
        self.outstanding
            .first_key_value()
            .map_or(Duration::ZERO, |(_, at)| at.elapsed())
    }

    /// The delivery's fate was carried out and its ack is owed.
    pub(crate) fn owe(&mut self, tag: u64) {
        if self.outstanding.remove(&tag).is_some() {
            self.owed.insert(tag);
        }
    }

    /// The delivery was settled on its own (nacked, requeued): nothing is owed for it.
    pub(crate) fn settled(&mut self, tag: u64) {
        self.outstanding.remove(&tag);
    }

    /// How many acks are owed (sendable now or not).
    pub(crate) fn owed(&self) -> usize {
        self.owed.len()
    }

    /// Whether enough owed acks may go to be worth a frame now: at least `batch` in the run
    /// below the lowest outstanding delivery (what one multiple ack would settle), or at
    /// least `singles_from` above it (what [`take`](Self::take) would send one by one).
    /// Counting all owed acks instead would fire on every settlement while a slow delivery
    /// holds the run short, one small ack after another.
    pub(crate) fn due(&self, batch: usize, singles_from: usize) -> bool {
        let below = match self.outstanding.first_key_value() {
            Some((&lowest, _)) => self.owed.range(..lowest).take(batch).count(),
            None => self.owed.len(),
        };
        below >= batch || self.owed.len() - below >= singles_from
    }

    /// Takes the owed acks that go now, as frames: one multiple ack for the owed run below
    /// the lowest outstanding delivery, and, once at least `singles_from` acks are owed
    /// above it, single acks for those (a slow delivery must not hold the prefetch slots of
    /// the messages handled after it forever). Below that they stay owed: the multiple ack
    /// sent once the slow delivery is settled will cover them. `singles_from = 0` takes
    /// everything (the channel is about to close). `None` when no frame goes.
    pub(crate) fn take(&mut self, singles_from: usize) -> Option<AckFrames> {
        let mut above = match self.outstanding.first_key_value() {
            Some((&lowest, _)) => self.owed.split_off(&lowest),
            None => BTreeSet::new(),
        };
        let below = std::mem::take(&mut self.owed);
        if above.len() < singles_from {
            self.owed = std::mem::take(&mut above);
        }
        if below.is_empty() && above.is_empty() {
            return None;
        }
        Some(AckFrames {
            count: below.len() + above.len(),
            up_to: below.last().copied(),
            singles: above.into_iter().collect(),
        })
    }
    /// Forgets everything (the channel is gone: the broker requeues whatever it holds).
    pub(crate) fn clear(&mut self) {
        self.outstanding.clear();
        self.owed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(delivered: impl IntoIterator<Item = u64>) -> AckWindow {
        let mut w = AckWindow::default();
        delivered.into_iter().for_each(|t| w.delivered(t));
        w
    }

    fn frames(up_to: Option<u64>, singles: &[u64], count: usize) -> Option<AckFrames> {
        Some(AckFrames {
            up_to,
            singles: singles.to_vec(),
            count,
        })
    }

    #[test]
    fn a_run_of_handled_deliveries_is_one_ack() {
        let mut w = window(1..=5);
        (1..=5).for_each(|t| w.owe(t));
        let taken = w.take(0);
        assert_eq!(taken, frames(Some(5), &[], 5));
        assert_eq!(taken.map(|f| f.frames()), Some(1));
        assert_eq!(w.owed(), 0);
        assert_eq!(w.take(0), None);
    }

    #[test]
    fn acks_above_an_outstanding_delivery_go_one_by_one() {
        let mut w = window(1..=5);
        for t in [1, 2, 4, 5] {
            w.owe(t);
        }
        // 3 is still with its handler: a multiple ack of 5 would settle it too.
        assert_eq!(w.take(0), frames(Some(2), &[4, 5], 4));
        assert_eq!(w.take(0), None);
        w.owe(3);
        assert_eq!(w.take(0), frames(Some(3), &[], 1));
    }

    #[test]
    fn acks_above_an_outstanding_delivery_wait_until_enough_gathered() {
        let mut w = window(1..=4);
        for t in [1, 3, 4] {
            w.owe(t);
        }
        assert_eq!(w.take(3), frames(Some(1), &[], 1), "3 and 4 wait for 2");
        assert_eq!(w.owed(), 2);
        assert_eq!(w.take(3), None);
        w.delivered(5);
        w.owe(5);
        assert_eq!(
            w.take(3),
            frames(None, &[3, 4, 5], 3),
            "now three wait: singles"
        );
        w.owe(2);
        assert_eq!(w.take(3), frames(Some(2), &[], 1));
    }

    #[test]
    fn due_counts_what_one_frame_would_settle_not_all_owed() {
        let mut w = window(1..=10);
        (2..=10).for_each(|t| w.owe(t));
        // Nine owed, but 1 is outstanding: a multiple ack would settle none of them.
        assert!(!w.due(4, 20), "nothing below the outstanding delivery");
        assert!(w.due(4, 9), "enough above it to go one by one");
        w.owe(1);
        assert!(w.due(4, 20), "now one multiple ack settles all ten");
        let mut w = window(1..=6);
        [1, 2, 3, 5, 6].into_iter().for_each(|t| w.owe(t));
        assert!(w.due(3, 20) && !w.due(4, 20), "three below 4");
    }

    #[test]
    fn nothing_goes_multiple_while_the_lowest_delivery_is_outstanding() {
        let mut w = window(1..=3);
        w.owe(2);
        w.owe(3);
        assert_eq!(w.take(0), frames(None, &[2, 3], 2));
    }

    #[test]
    fn a_nacked_delivery_lets_the_ack_pass_over_it() {
        let mut w = window(1..=4);
        w.owe(1);
        w.settled(2); // requeued on its own, its nack written
        w.owe(3);
        w.owe(4);
        assert_eq!(w.take(0), frames(Some(4), &[], 3));
    }

    #[test]
    fn a_delivery_owed_twice_or_unknown_counts_once() {
        let mut w = window([7]);
        w.owe(7);
        w.owe(7);
        w.owe(8); // never registered: a stale generation's tag
        assert_eq!(w.take(0), frames(Some(7), &[], 1));
    }

    #[test]
    fn clear_forgets_everything() {
        let mut w = window(1..=2);
        w.owe(1);
        w.clear();
        assert_eq!(w.owed(), 0);
        assert_eq!(w.take(0), None);
    }
}
