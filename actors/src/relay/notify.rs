//! The PostgreSQL LISTEN task that wakes a relay when an emitting transaction commits.

use std::time::Duration;

use actix::Recipient;
use actix_outbox::__private::notify_channel_query;
use actix_outbox::{Error, Result, TableName};
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use tracing::{debug, warn};

use super::WakeUp;

/// Spawns a task (on the current actix/tokio runtime) that listens on the NOTIFY channel of
/// `table` and sends a [`WakeUp`] per notification. It holds one pooled connection for as
/// long as it runs, reconnects by itself after errors, and sends a [`WakeUp`] after every
/// (re)connect, its own or sqlx's, because notifications sent while the connection was down
/// are lost.
///
/// The channel is `<schema>.<table>`, the schema being where the relay's `search_path` finds
/// the table (the trigger names the same), so relays of other schemas do not wake this one.
pub(crate) fn spawn(
    db: &DatabaseConnection,
    table: TableName,
    relay: Recipient<WakeUp>,
) -> tokio::task::JoinHandle<()> {
    let pool = db.get_postgres_connection_pool().clone();
    let db = db.clone();
    actix::spawn(async move {
        loop {
            let channel = match channel_of(&db, &table).await {
                Ok(channel) => channel,
                Err(e) => {
                    warn!(error = %e, %table, "cannot resolve the NOTIFY channel; polling until it can");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
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

/// The NOTIFY channel of `table` as this connection's `search_path` resolves it.
async fn channel_of(db: &DatabaseConnection, table: &TableName) -> Result<String> {
    let query = Statement::from_string(DbBackend::Postgres, notify_channel_query(table));
    let row = db.query_one_raw(query).await?;
    let channel: Option<String> = match row {
        Some(row) => row.try_get("", "channel")?,
        None => None,
    };
    channel.ok_or_else(|| Error::SchemaMismatch {
        table: table.to_string(),
        detail: "the table is not on the search path: run `setup` first".into(),
    })
}

/// Warns once, at start, when the table's NOTIFY trigger is off (`Outbox::set_notify`) and
/// this relay has no adaptive polling: new rows then wait up to `poll` for it.
pub(crate) fn warn_if_trigger_off(db: &DatabaseConnection, table: TableName, poll: Duration) {
    let db = db.clone();
    actix::spawn(async move {
        let outbox = actix_outbox::Outbox::new(table.clone());
        match outbox.notify_enabled(&db).await {
            Ok(false) => warn!(
                %table,
                ?poll,
                "the table's NOTIFY trigger is off and this relay does not poll adaptively: \
                 new rows wait up to the poll interval (set RelayConfig::with_adaptive_poll)"
            ),
            Ok(true) => {}
            Err(e) => debug!(error = %e, %table, "cannot read the NOTIFY trigger's state"),
        }
    });
}
