//! The relay's start, its stand-by on SQLite, and its graceful stop.
//!
//! On PostgreSQL a relay starts batches at once. On SQLite it first takes the file's relay
//! lock (see `file_lock`): while another relay holds it, this one stands by
//! ([`State::Standby`]) and tries again at each poll, so a second relay on one file is a
//! warm spare instead of a source of duplicates.

use std::time::Duration;

use actix::prelude::*;
use sea_orm::DbBackend;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::super::file_lock::{RelayLock, Taken};
use super::super::{RelayStats, StopRelay};
use super::{RelayActor, State};

impl Actor for RelayActor {
    type Context = Context<Self>;

    /// Starts the LISTEN task (PostgreSQL), the poll timer, and a first batch (on SQLite,
    /// once the relay lock is held).
    fn started(&mut self, ctx: &mut Context<Self>) {
        info!(table = %self.config.table(), exchange = %self.config.exchange(), "relay started");
        if self.config.listen && self.sql.backend() == DbBackend::Postgres {
            self.listener = Some(super::super::notify::spawn(
                &self.db,
                self.config.table().clone(),
                ctx.address().recipient(),
            ));
        }
        if self.sql.backend() == DbBackend::Postgres && self.config.adaptive_poll.is_none() {
            super::super::notify::warn_if_trigger_off(
                &self.db,
                self.config.table().clone(),
                self.config.poll_interval,
            );
        }
        if self.sql.backend() == DbBackend::Sqlite {
            self.state = State::Standby;
        }
        ctx.run_interval(self.config.poll_interval, |act, ctx| act.start_batch(ctx));
        self.start_batch(ctx);
    }

    /// Ends the LISTEN task so no pooled connection outlives the relay.
    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(task) = self.listener.take() {
            task.abort();
        }
        for waiter in self.stop_waiters.drain(..) {
            let _ = waiter.send(self.stats);
        }
        info!(table = %self.config.table(), stats = ?self.stats, "relay stopped");
    }
}

impl Handler<StopRelay> for RelayActor {
    type Result = ResponseFuture<RelayStats>;

    fn handle(&mut self, _: StopRelay, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.stop_waiters.push(tx);
        if matches!(
            self.state,
            State::Active | State::BackingOff | State::Standby
        ) {
            self.state = State::Stopping;
            self.stop_when_idle(ctx);
        }
        let last_known = self.stats;
        Box::pin(async move { rx.await.unwrap_or(last_known) })
    }
}

impl RelayActor {
    /// Standing by (SQLite): takes the relay lock if it is free, and starts batches once it
    /// is held. Finds the lock file first (one query), once.
    pub(super) fn take_lock(&mut self, ctx: &mut Context<Self>) {
        let Some(lock) = &mut self.lock else {
            if !self.locating {
                self.locating = true;
                let (db, table) = (self.db.clone(), self.config.table().clone());
                let locate = async move { RelayLock::locate(&db, &table).await };
                ctx.spawn(locate.into_actor(self).map(|found, act, ctx| {
                    act.locating = false;
                    match found {
                        Ok(Some(lock)) => {
                            act.lock = Some(lock);
                            act.take_lock(ctx);
                        }
                        // In memory: no other process can open it.
                        Ok(None) => act.lock_held(ctx),
                        Err(e) => warn!(error = %e, "cannot find the SQLite file to lock; retrying at the next poll"),
                    }
                }));
            }
            return;
        };
        match lock.try_take() {
            Ok(Taken::Held) => {
                info!(lock = %lock.path().display(), "relay lock taken: this relay drains the SQLite file");
                self.lock_held(ctx);
            }
            Ok(Taken::Busy) => {
                if !self.stats.standby {
                    warn!(lock = %lock.path().display(), "another relay drains this SQLite file: standing by until it stops");
                }
                self.stats.standby = true;
                self.metrics.standby.set(1.0);
            }
            Err(e) => {
                warn!(error = %e, lock = %lock.path().display(), "cannot open the relay lock file; retrying at the next poll");
            }
        }
    }

    fn lock_held(&mut self, ctx: &mut Context<Self>) {
        if self.state == State::Standby {
            self.state = State::Active;
            self.stats.standby = false;
            self.metrics.standby.set(0.0);
            self.start_batch(ctx);
        }
    }

    /// Stops once no batch is in flight.
    pub(super) fn stop_when_idle(&mut self, ctx: &mut Context<Self>) {
        if self.running == 0 && self.state == State::Stopping {
            self.finish_stop(ctx);
        }
    }

    /// Closes the channels (bounded), then stops the actor.
    fn finish_stop(&mut self, ctx: &mut Context<Self>) {
        self.state = State::Stopped;
        if let Some(task) = self.listener.take() {
            task.abort();
        }
        let channels = std::mem::take(&mut self.channels);
        let close = async move {
            for p in channels {
                let closing = p.channel.close(200, "relay stopping".into());
                let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
            }
        };
        ctx.wait(close.into_actor(self).map(|(), _, ctx| ctx.stop()));
    }
}
