//! Probation after a handler crash: which deliveries may go to the handler now, and which
//! wait.
//!
//! When a handler actor dies with several events in its mailbox, the event that killed it is
//! unknown; those events come back from the queue uncharged, and the fresh actor gets the
//! next ones (one per displaced event) strictly one at a time, so a crash among them names
//! its event. Pure bookkeeping; the consumer actor asks it before each dispatch.

use std::collections::VecDeque;

/// Deliveries (of any type `D`, tagged with their channel generation) held back while the
/// handler is on probation.
#[derive(Debug)]
pub(super) struct Probation<D> {
    /// How many more deliveries go to the handler one at a time.
    remaining: usize,
    /// Every delivery goes alone, in arrival order (an ordered listener's partition).
    sequential: bool,
    /// Deliveries waiting for the handler to be free, with their channel generation.
    waiting: VecDeque<(u64, D)>,
}

impl<D> Default for Probation<D> {
    fn default() -> Self {
        Self {
            remaining: 0,
            sequential: false,
            waiting: VecDeque::new(),
        }
    }
}

impl<D> Probation<D> {
    /// For an ordered listener's partition: every delivery waits until the one before it has
    /// been settled, so the handler sees them one at a time, in the order they came.
    pub(super) fn sequential() -> Self {
        Self {
            sequential: true,
            ..Self::default()
        }
    }

    /// Whether deliveries go one at a time now.
    fn one_at_a_time(&self) -> bool {
        self.sequential || self.remaining > 0
    }

    /// Takes `delivery` to hand to the handler now, or holds it (returns `None`) while on
    /// probation (or sequential) with another delivery in flight or waiting before it.
    pub(super) fn admit(&mut self, generation: u64, delivery: D, in_flight: usize) -> Option<D> {
        if self.one_at_a_time() && (in_flight > 0 || !self.waiting.is_empty()) {
            self.waiting.push_back((generation, delivery));
            return None;
        }
        Some(delivery)
    }

    /// The next held delivery that may go to the handler now: one at a time on probation,
    /// any once it is over.
    pub(super) fn release(&mut self, in_flight: usize) -> Option<(u64, D)> {
        if self.one_at_a_time() && in_flight > 0 {
            return None;
        }
        self.waiting.pop_front()
    }

    /// A delivery was displaced by a crash: one more delivery goes alone.
    pub(super) fn displaced(&mut self) {
        self.remaining += 1;
    }

    /// A delivery sent alone has finished (handled, failed or crashed).
    pub(super) fn finished_alone(&mut self) {
        self.remaining = self.remaining.saturating_sub(1);
    }

    /// Gives up every held delivery (to requeue them, or because their channel is gone).
    pub(super) fn drain(&mut self) -> impl Iterator<Item = D> + '_ {
        self.waiting.drain(..).map(|(_, d)| d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_deliveries_wait_for_the_one_before() {
        let mut p = Probation::sequential();
        assert_eq!(p.admit(1, "a", 0), Some("a"));
        assert_eq!(p.admit(1, "b", 1), None);
        assert_eq!(p.admit(1, "c", 1), None);
        assert_eq!(p.release(1), None, "`a` still runs");
        assert_eq!(p.release(0), Some((1, "b")));
        // `b` is in flight; a newcomer waits behind `c`, even if nothing were in flight.
        assert_eq!(p.admit(1, "d", 0), None);
        assert_eq!(p.release(0), Some((1, "c")));
        assert_eq!(p.release(0), Some((1, "d")));
    }

    #[test]
    fn without_a_crash_everything_passes() {
        let mut p = Probation::default();
        assert_eq!(p.admit(1, "a", 5), Some("a"));
        assert_eq!(p.release(5), None);
    }

    #[test]
    fn on_probation_deliveries_go_one_at_a_time() {
        let mut p = Probation::default();
        p.displaced();
        p.displaced();
        assert_eq!(p.admit(1, "a", 0), Some("a"), "nothing in flight: it goes");
        assert_eq!(p.admit(1, "b", 1), None, "held while `a` runs");
        assert_eq!(p.admit(1, "c", 1), None);
        assert_eq!(p.release(1), None, "`a` still runs");
        p.finished_alone();
        assert_eq!(p.release(0), Some((1, "b")));
        p.finished_alone();
        assert_eq!(
            p.release(1),
            Some((1, "c")),
            "probation over: released at once"
        );
        assert_eq!(p.drain().count(), 0);
    }

    #[test]
    fn drain_gives_back_every_held_delivery() {
        let mut p = Probation::default();
        p.displaced();
        assert_eq!(p.admit(3, 1, 1), None);
        assert_eq!(p.admit(3, 2, 1), None);
        assert_eq!(p.drain().collect::<Vec<_>>(), [1, 2]);
        p.finished_alone();
        p.finished_alone();
        assert_eq!(p.admit(3, 4, 9), Some(4), "saturates at zero");
    }
}
