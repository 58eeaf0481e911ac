//! Where a batch's time goes: the stages timed for the `batch done` debug event (see the
//! tuning guide), and how long its oldest row had been due.

use std::time::Instant;

use actix_outbox::outbox_message::Model;
use chrono::Utc;

/// The stages of a batch, timed for the `batch done` debug event.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stage {
    /// `BEGIN` (PostgreSQL: before the claim; SQLite: the settling transaction).
    Begin,
    /// The claiming `SELECT`.
    Claim,
    /// Handing every publish to the channel.
    Publish,
    /// Waiting for the broker's confirms.
    Confirm,
    /// Deleting, marking and recording failures.
    Settle,
    /// `COMMIT`.
    Commit,
}

/// Time spent per [`Stage`]: each lap books the time since the previous one.
#[derive(Debug)]
pub(crate) struct StageTimer {
    started: Instant,
    last: Instant,
    micros: [u64; 6],
}

impl StageTimer {
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            micros: [0; 6],
        }
    }

    /// Books the time since the previous lap to `stage`.
    pub(crate) fn lap(&mut self, stage: Stage) {
        let now = Instant::now();
        self.micros[stage as usize] += micros(now - self.last);
        self.last = now;
    }

    pub(crate) fn micros(&self, stage: Stage) -> u64 {
        self.micros[stage as usize]
    }

    pub(crate) fn total_micros(&self) -> u64 {
        micros(self.started.elapsed())
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// How long the longest-waiting row of a batch had been due when it was claimed, in µs (by
/// this host's clock against the row's `send_after`; meaningful when both share a clock).
pub(crate) fn due_lag(rows: &[Model]) -> u64 {
    rows.iter().map(|r| r.send_after).min().map_or(0, |due| {
        u64::try_from((Utc::now() - due).num_microseconds().unwrap_or(0)).unwrap_or(0)
    })
}
