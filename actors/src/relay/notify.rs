//! The PostgreSQL LISTEN task that wakes a relay when an emitting transaction commits.

use std::time::Duration;

use actix::Recipient;
use sea_orm::DatabaseConnection;
use sea_orm::sqlx::postgres::PgListener;
use tracing::{debug, warn};

use super::WakeUp;

/// Spawns a task (on the current actix/tokio runtime) that listens on `channel` and sends a
/// [`WakeUp`] per notification. It holds one pooled connection for as long as it runs,
/// reconnects by itself after errors, and sends a [`WakeUp`] after every (re)connect, its own
/// or sqlx's, because notifications sent while the connection was down are lost.
pub(crate) fn spawn(
    db: &DatabaseConnection,
    channel: String,
    relay: Recipient<WakeUp>,
) -> tokio::task::JoinHandle<()> {
    let pool = db.get_postgres_connection_pool().clone();
    actix::spawn(async move {
        loop {
            match PgListener::connect_with(&pool).await {
                Ok(mut listener) => match listener.listen(&channel).await {
                    Ok(()) => {
                        debug!(%channel, "listening for outbox notifications");
                        relay.do_send(WakeUp);
                        loop {
                            // `try_recv` (not `recv`) so a lost connection is seen: sqlx then
                            // reconnects on the next call, and notifications sent meanwhile
                            // are gone, so the relay is woken to look for them itself.
                            match listener.try_recv().await {
                                Ok(Some(_)) => relay.do_send(WakeUp),
                                Ok(None) => {
                                    warn!(%channel, "LISTEN connection lost and re-established; looking for rows notified meanwhile");
                                    relay.do_send(WakeUp);
                                }
                                Err(e) => {
                                    warn!(error = %e, "LISTEN connection lost; polling until it is back");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, %channel, "LISTEN failed"),
                },
                Err(e) => warn!(error = %e, "cannot open the LISTEN connection"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}
