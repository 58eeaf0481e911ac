//! The small tokio runtime lapin's I/O runs on, away from the actix thread (a busy or blocked
//! actix thread would otherwise stall heartbeats, publishes and confirms).

use std::time::Duration;

use actix_outbox::{Error, Result};

/// How long lapin's I/O loop gets to finish before its runtime shuts down.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// lapin's runtime, shut down without blocking whenever it goes away: dropping a tokio runtime
/// the ordinary way from inside the actix runtime would panic.
pub(super) struct LapinRuntime(Option<tokio::runtime::Runtime>);

impl LapinRuntime {
    /// Starts the one-thread runtime lapin's connection I/O runs on.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the thread cannot be created.
    pub(super) fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("actix-outbox-amqp")
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                what: "start the AMQP I/O thread",
                source,
            })?;
        Ok(Self(Some(runtime)))
    }

    /// The runtime, unless it was shut down.
    pub(super) fn get(&self) -> Option<&tokio::runtime::Runtime> {
        self.0.as_ref()
    }

    /// Shuts the runtime down a moment later, on a thread of its own. lapin's I/O loop runs on
    /// a thread of lapin's and awaits tasks on this runtime; it finishes shortly *after* the
    /// connection's close resolves, and a task of it cancelled by an immediate shutdown makes
    /// that thread panic ("task was cancelled") on its way out. The grace lets it finish; a
    /// process that exits sooner ends both threads anyway.
    pub(super) fn shut_down(&mut self) {
        if let Some(runtime) = self.0.take() {
            let delayed = std::thread::Builder::new()
                .name("actix-outbox-amqp-shutdown".to_owned())
                .spawn(move || {
                    std::thread::sleep(SHUTDOWN_GRACE);
                    runtime.shutdown_background();
                });
            if let Err(e) = delayed {
                tracing::debug!(error = %e, "cannot start the AMQP runtime's shutdown thread");
            }
        }
    }
}

impl Drop for LapinRuntime {
    fn drop(&mut self) {
        self.shut_down();
    }
}
