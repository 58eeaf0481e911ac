//! The small tokio runtime lapin's I/O runs on, away from the actix thread (a busy or blocked
//! actix thread would otherwise stall heartbeats, publishes and confirms).

use actix_outbox::{Error, Result};

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

    pub(super) fn shut_down(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for LapinRuntime {
    fn drop(&mut self) {
        self.shut_down();
    }
}
