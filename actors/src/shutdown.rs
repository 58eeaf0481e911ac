//! Waiting for the signal that starts a graceful shutdown.

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM — whichever comes first.
///
/// Relay and worker processes await it, then stop in order: consumers and relays first, then
/// the broker connection ([`Shutdown`](crate::Shutdown)), then the database.
///
/// # Examples
///
/// ```no_run
/// # async fn run() {
/// actix_outbox_actors::shutdown_signal().await;
/// // stop the relay, the worker, the broker connection, close the database
/// # }
/// ```
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
