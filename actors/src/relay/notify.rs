//! The PostgreSQL LISTEN task that wakes a relay when an emitting transaction commits.

use std::time::Duration;

use actix::Recipient;
use sea_orm::DatabaseConnection;
use sea_orm::sqlx::postgres::PgListener;
use tracing::{debug, warn};

use super::WakeUp;

/// Spawns a task (on the current actix/tokio runtime) that listens on `channel` and sends a
/// [`WakeUp`] per notification. It holds one pooled connection for as long as it runs,
/// reconnects by itself after errors (notifications sent meanwhile are lost: the relay's poll
/// covers them) and sends a [`WakeUp`] after every (re)connect for that reason.
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
                            match listener.recv().await {
                                Ok(_) => relay.do_send(WakeUp),
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
