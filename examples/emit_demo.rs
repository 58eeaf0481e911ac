//! Emit events inside SeaORM transactions, with no broker: the emit side on its own.
//!
//! Creates (via `setup`) an outbox table in an embedded SQLite file, saves three users and
//! emits a `user.created` event for each in the same transaction, then rolls back a fourth
//! transaction to show its event never exists, and prints the outbox rows.
//!
//! ```text
//! cargo run --example emit_demo                       # SQLite file in the temp directory
//! DATABASE_URL=postgres://outbox:outbox@127.0.0.1:5432/outbox cargo run --example emit_demo
//! ```
#![allow(clippy::print_stdout)]

use actix_outbox::outbox_message::Entity;
use actix_outbox::{DatabaseConfig, Outbox, OutboxEvent, TableName};
use sea_orm::{ConnectionTrait, EntityTrait, TransactionTrait};
use serde::Serialize;

#[derive(Serialize)]
struct UserCreated {
    id: i64,
    username: String,
}

#[tokio::main]
async fn main() -> Result<(), actix_outbox::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        let path = std::env::temp_dir().join("actix_outbox_emit_demo.sqlite");
        format!("sqlite://{}?mode=rwc", path.display())
    });
    let db = DatabaseConfig::new(url).connect().await?;
    let outbox = Outbox::new(TableName::new("emit_demo_outbox")?);
    outbox.setup(&db).await?;
    db.execute_unprepared("DROP TABLE IF EXISTS demo_users")
        .await?;
    db.execute_unprepared("CREATE TABLE demo_users (id BIGINT PRIMARY KEY, username TEXT)")
        .await?;
    db.execute_unprepared("DELETE FROM emit_demo_outbox")
        .await?;

    for (id, name) in [(1, "ada"), (2, "grace"), (3, "linus")] {
        let txn = db.begin().await?;
        txn.execute_unprepared(&format!("INSERT INTO demo_users VALUES ({id}, '{name}')"))
            .await?;
        let event = UserCreated {
            id,
            username: name.into(),
        };
        let message_id = outbox.emit(&txn, "user.created", &event).await?;
        txn.commit().await?;
        println!("committed user {id} and event {message_id}");
    }

    let txn = db.begin().await?;
    txn.execute_unprepared("INSERT INTO demo_users VALUES (4, 'mallory')")
        .await?;
    let event = OutboxEvent::json("user.created", &serde_json::json!({"id": 4}))?
        .with_header("source", "emit_demo");
    outbox.emit_event(&txn, event).await?;
    txn.rollback().await?;
    println!("rolled back user 4: its event must not appear below");

    let rows = Entity::find()
        .from_raw_sql(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT * FROM emit_demo_outbox ORDER BY id",
        ))
        .all(&db)
        .await?;
    for row in &rows {
        println!(
            "row {}: {} {} {} due {}",
            row.id,
            row.message_id,
            row.routing_key,
            String::from_utf8_lossy(&row.payload),
            row.send_after
        );
    }
    println!("{} events in the outbox (expected 3)", rows.len());
    db.close().await?;
    Ok(())
}
