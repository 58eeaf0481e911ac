//! Waiting for the signal that starts a graceful shutdown.

use std::future::Future;

/// Returns a future that resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM — whichever comes
/// first.
///
/// The signal handlers are installed when this function is **called**, not when the future is
/// first polled: call it first thing in `main`, so a SIGTERM that arrives while the process is
/// still connecting stops it gracefully instead of killing it. Relay and worker processes then
/// stop in order: consumers and relays first, then the broker connection
/// ([`StopBroker`](crate::StopBroker)), then the database.
///
/// # Examples
///
/// ```no_run
/// # async fn run() {
/// let stop = actix_outbox_actors::shutdown_signal(); // handlers installed now
/// // ... connect, start the relay or the worker ...
/// stop.await;
/// // stop the relay, the worker, the broker connection, close the database
/// # }
/// ```
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut term), Some(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                (Some(mut term), None) => {
                    term.recv().await;
                }
                (None, Some(mut int)) => {
                    int.recv().await;
                }
                (None, None) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
