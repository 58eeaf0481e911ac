//! An actix-web service that saves users and announces them through the outbox, with the relay
//! and a worker running in the same actix System.
//!
//! `POST /users` inserts a row into `example_users` and emits `user.created` (the user with its
//! id) in **one** SeaORM transaction. The rules (a non-blank username, an email of the form
//! `name@domain`) are checked after both writes, still inside the transaction: a request that
//! breaks one gets `422`, and the rollback takes the row *and* its event with it. The `422`
//! body names the user id that was rolled back, so you can check it never shows up anywhere.
//! `GET /users/{id}` reads a committed user back. `GET /metrics` serves every metric of the
//! relay, the worker and their broker connections in the Prometheus text format, and
//! `GET /health` answers `200` when the database, both broker connections, the relay and the
//! worker are ready (`503` otherwise), with a JSON body naming each part;
//! `GET /health/live` answers `200` while their actors run.
//!
//! Next to the HTTP server, a `RelayActor` publishes committed events to the `example_events`
//! exchange and a `Worker` hands them to `WelcomeMailer`, a typed `Handler<Event<UserCreated>>`
//! that logs a "welcome mail sent" line per user.
//!
//! ```text
//! scripts/services      # PostgreSQL and RabbitMQ, or: docker compose up -d
//! cargo run --example actix_web
//!
//! # in a second shell
//! curl -i localhost:8080/users -H 'content-type: application/json' \
//!      -d '{"username": "ada", "email": "ada@example.com"}'   # 201; the server logs the mail
//! curl -i localhost:8080/users -H 'content-type: application/json' \
//!      -d '{"username": "eve", "email": "eve.example.com"}'   # 422; no row, no event, no mail
//! curl -i localhost:8080/users/1                              # 200, or 404 for unknown ids
//! curl -s localhost:8080/metrics | grep outbox_relay_published  # what the relay sent
//! curl -i localhost:8080/health                               # 200 and each part's state
//! ```
//!
//! Stop it with Ctrl-C or SIGTERM: the HTTP server stops accepting and finishes the requests
//! in flight (at most 10 s), then the worker (handlers in flight finish and are acked), the
//! relay (its batch in flight is confirmed), the broker connection and the database close, in
//! that order.
//!
//! Environment: `DATABASE_URL` (PostgreSQL; default
//! `postgres://outbox:outbox@127.0.0.1:5432/outbox`), `AMQP_URL` (default
//! `amqp://outbox:outbox@127.0.0.1:5672/%2f`), `BIND` (default `127.0.0.1:8080`), `RUST_LOG`
//! (default `info`). The example keeps to its own names — tables `example_users` and
//! `example_outbox`, exchange `example_events`, queue `example_welcome_mailer` — so it never
//! mixes with the other examples.
//!
//! The relay and worker wiring is in `pipeline.rs` beside this file, `/metrics` and `/health`
//! in `ops.rs`.
//!
//! `tests/actix_web_service.rs` compiles this file as a module: it serves `configure` through
//! actix-web's test service and runs the same `Pipeline`, with its own schema and names.

use std::sync::Arc;

use actix_outbox::{DatabaseConfig, Outbox, TableName, redact_url};
use actix_outbox_actors::BrokerConfig;
use actix_web::{App, HttpResponse, HttpServer, web};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectionTrait, DatabaseConnection, EntityTrait,
    TransactionTrait,
};
use serde::{Deserialize, Serialize};
use tracing::{error, info};

/// The relay and the welcome mailer beside the HTTP server (`#[path]` so the test, which
/// compiles this file as a module of its own, finds it too).
#[path = "pipeline.rs"]
mod pipeline;
pub(crate) use pipeline::{Pipeline, PipelineConfig, SentMail};

/// `/metrics` and `/health` (`#[path]` for the same reason).
#[path = "ops.rs"]
mod ops;
pub(crate) use ops::{Ops, configure_ops, install_metrics};

/// The outbox table of this example.
pub(crate) const OUTBOX_TABLE: &str = "example_outbox";
/// The topic exchange the relay publishes to.
const EXCHANGE: &str = "example_events";
/// The welcome mailer's queue.
const QUEUE: &str = "example_welcome_mailer";
/// The routing key of a new user.
const USER_CREATED: &str = "user.created";
/// The users table; `BIGSERIAL` makes this example PostgreSQL-only.
const CREATE_USERS: &str = "CREATE TABLE IF NOT EXISTS example_users \
     (id BIGSERIAL PRIMARY KEY, username TEXT NOT NULL, email TEXT NOT NULL)";

/// The `example_users` table as a SeaORM entity.
mod user {
    use sea_orm::entity::prelude::*;

    /// One row of `example_users`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "example_users")]
    pub(crate) struct Model {
        /// Assigned by the database (`BIGSERIAL`).
        #[sea_orm(primary_key)]
        pub(crate) id: i64,
        /// As given: the rules are checked after the insert.
        pub(crate) username: String,
        /// As given: the rules are checked after the insert.
        pub(crate) email: String,
    }

    /// A lone table: no relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The body of `POST /users`.
#[derive(Debug, Deserialize)]
pub(crate) struct NewUser {
    /// Must not be blank.
    username: String,
    /// Must look like `name@domain`.
    email: String,
}

/// A committed user: the payload of `user.created` and the body of `201` and `GET` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserCreated {
    /// The row's id; the mailer (and the test) identify users by it.
    pub(crate) id: i64,
    /// The username as stored.
    pub(crate) username: String,
    /// Where the welcome mail goes.
    pub(crate) email: String,
}

impl From<user::Model> for UserCreated {
    fn from(row: user::Model) -> Self {
        Self {
            id: row.id,
            username: row.username,
            email: row.email,
        }
    }
}

/// The body of a `422`: the broken rule, and the id the user held before the rollback.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Rejected {
    /// Which rule was broken.
    pub(crate) error: String,
    /// Inserted, announced, then rolled back: neither the row nor its event exists.
    pub(crate) rolled_back_user_id: i64,
}

/// How a `POST /users` transaction ended.
#[derive(Debug)]
enum Saved {
    /// Row and event committed together.
    Committed(UserCreated),
    /// Row and event rolled back together.
    RolledBack(Rejected),
}

/// What the HTTP handlers share; each actix-web worker thread holds a clone.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    /// The pool every request transaction begins on.
    pub(crate) db: DatabaseConnection,
    /// The outbox table `user.created` is written to.
    pub(crate) outbox: Outbox,
}

/// Creates the outbox table and `example_users` where they are missing.
pub(crate) async fn create_tables(state: &AppState) -> Result<(), actix_outbox::Error> {
    state.outbox.setup(&state.db).await?;
    state.db.execute_unprepared(CREATE_USERS).await?;
    Ok(())
}

/// The routes, with `state` as their app data: `App::new().configure(configure(state))`.
pub(crate) fn configure(state: AppState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(state))
            .route("/users", web::post().to(create_user))
            .route("/users/{id}", web::get().to(get_user));
    }
}

/// `POST /users`: `201` with the user, `422` when a rule is broken (nothing is kept), `500`
/// when the database fails.
async fn create_user(
    state: web::Data<AppState>,
    body: web::Json<NewUser>,
) -> actix_web::Result<HttpResponse> {
    Ok(match save_user(&state, body.into_inner()).await {
        Ok(Saved::Committed(user)) => HttpResponse::Created().json(user),
        Ok(Saved::RolledBack(rejected)) => HttpResponse::UnprocessableEntity().json(rejected),
        Err(e) => return Err(internal(e)),
    })
}

/// `GET /users/{id}`: `200` with the user, `404` when no such user was committed.
async fn get_user(
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> actix_web::Result<HttpResponse> {
    let found = user::Entity::find_by_id(id.into_inner())
        .one(&state.db)
        .await
        .map_err(|e| internal(e.into()))?;
    Ok(match found {
        Some(row) => HttpResponse::Ok().json(UserCreated::from(row)),
        None => HttpResponse::NotFound().finish(),
    })
}

/// Inserts the user and emits `user.created` in one transaction, then checks the rules: a
/// broken rule rolls back both writes. An error on the way drops the transaction, which rolls
/// it back as well.
async fn save_user(state: &AppState, new: NewUser) -> Result<Saved, actix_outbox::Error> {
    let txn = state.db.begin().await?;
    let row = user::ActiveModel {
        username: Set(new.username),
        email: Set(new.email),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    let user = UserCreated::from(row);
    let message_id = state.outbox.emit(&txn, USER_CREATED, &user).await?;
    if let Err(reason) = check_rules(&user) {
        txn.rollback().await?;
        info!(user_id = user.id, %message_id, %reason, "rejected: user row and event rolled back");
        return Ok(Saved::RolledBack(Rejected {
            error: reason,
            rolled_back_user_id: user.id,
        }));
    }
    txn.commit().await?;
    info!(user_id = user.id, %message_id, "user saved and user.created emitted");
    Ok(Saved::Committed(user))
}

/// The rules of a new user: a username that is not blank, an email with text on both sides of
/// its `@`.
fn check_rules(user: &UserCreated) -> Result<(), String> {
    if user.username.trim().is_empty() {
        return Err("username must not be blank".to_owned());
    }
    match user.email.split_once('@') {
        Some((name, domain)) if !name.is_empty() && !domain.is_empty() => Ok(()),
        _ => Err(format!(
            "email {:?} is not of the form name@domain",
            user.email
        )),
    }
}

/// Logs `e` and answers `500` without its details.
fn internal(e: actix_outbox::Error) -> actix_web::Error {
    error!(error = %e, "request failed");
    actix_web::error::ErrorInternalServerError("internal error")
}

/// Why the example stopped with an error.
#[derive(Debug, derive_more::Display, derive_more::Error, derive_more::From)]
enum ExampleError {
    /// The database, the broker or the outbox configuration failed.
    #[display("{_0}")]
    Outbox(actix_outbox::Error),
    /// The HTTP server could not bind, or failed while serving.
    #[display("http server on {bind}: {source}")]
    #[from(ignore)]
    Http {
        /// The address from `BIND`.
        bind: String,
        /// What the server reported.
        source: std::io::Error,
    },
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[actix::main]
async fn main() -> Result<(), ExampleError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    let db_url = env_or(
        "DATABASE_URL",
        "postgres://outbox:outbox@127.0.0.1:5432/outbox",
    );
    let bind = env_or("BIND", "127.0.0.1:8080");
    let broker = BrokerConfig::from_env()?;
    let metrics = install_metrics().map_err(|reason| actix_outbox::Error::InvalidConfig {
        field: "metrics",
        reason,
    })?;

    info!(database = %redact_url(&db_url), broker = %broker.redacted_url(), "connecting");
    // DatabaseConfig keeps the URL (and its password) out of every log, at any level.
    let db = DatabaseConfig::new(db_url).connect().await?;
    let state = AppState {
        db: db.clone(),
        outbox: Outbox::new(TableName::new(OUTBOX_TABLE)?),
    };
    create_tables(&state).await?;

    let sent = Arc::new(SentMail::default());
    let config = PipelineConfig::new(broker, &state.outbox, EXCHANGE, QUEUE);
    let pipeline = Pipeline::start(&db, config, &sent).await?;
    let ops = Ops {
        metrics,
        health: pipeline.health(&db),
    };

    let http_error = |source| ExampleError::Http {
        bind: bind.clone(),
        source,
    };
    let server = HttpServer::new(move || {
        App::new()
            .configure(configure(state.clone()))
            .configure(configure_ops(ops.clone()))
    })
    .disable_signals() // ours below: actix-web's own would stop abruptly on Ctrl-C
    .shutdown_timeout(10) // seconds granted to requests in flight once stopping
    .bind(&bind)
    .map_err(http_error)?
    .run();
    let handle = server.handle();
    actix::spawn(async move {
        actix_outbox_actors::shutdown_signal().await;
        info!("stop signal received: finishing the requests in flight");
        handle.stop(true).await;
    });
    info!(%bind, "serving POST /users, GET /users/<id>, /metrics and /health until Ctrl-C or SIGTERM");
    let served = server.await; // resolves once stopped and the requests in flight are done

    info!("HTTP server stopped; stopping the worker, the relay and the broker connection");
    let stats = pipeline.stop().await?;
    db.close().await.map_err(actix_outbox::Error::from)?;
    served.map_err(http_error)?;
    info!(
        welcome_mails = sent.user_ids().len(),
        published = stats.relay.published,
        handled = stats.mailer.map_or(0, |s| s.handled),
        "stopped cleanly"
    );
    Ok(())
}
