//! The actix-web example end to end: requests go through actix-web's test service while the
//! example's relay and welcome mailer run in the same System, against real PostgreSQL and
//! RabbitMQ, in a schema and under broker names of this test's own.
#![cfg(feature = "service-tests")]

mod common;

/// `examples/actix_web/main.rs` (with its `pipeline.rs`), compiled into this test: the test serves its routes and runs its
/// pipeline; `main` and what only `main` uses stay unused here.
#[allow(dead_code)]
#[path = "../examples/actix_web/main.rs"]
mod app;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use actix_outbox::testing::wait_until_drained;
use actix_outbox::{Outbox, TableName};
use actix_outbox_actors::BrokerConfig;
use actix_web::http::StatusCode;
use actix_web::{App, test};
use common::broker::TestBroker;
use common::worker::{DELAYS, delays};
use common::{TestDb, unique, wait_for};
use lapin::options::ExchangeDeleteOptions;

/// Accepted: a username that is not blank and an email of the form `name@domain`.
const VALID: [(&str, &str); 5] = [
    ("ada", "ada@example.com"),
    ("grace", "grace@example.com"),
    ("linus", "linus@example.org"),
    ("barbara", "barbara@example.net"),
    ("ken", "ken@example.com"),
];

/// Rejected after the insert and the emit, so each one exercises a real rollback.
const INVALID: [(&str, &str); 3] = [
    ("", "nobody@example.com"),
    ("   ", "blank@example.com"),
    ("eve", "eve.example.com"),
];

/// The welcome mailer sees exactly the users whose transactions committed, once each: its
/// user ids equal the ids in `example_users`, rejected users are in neither, nothing more
/// arrives, and the outbox ends empty.
#[actix_rt::test]
async fn mailer_sees_exactly_the_committed_users() {
    let t = TestDb::postgres().await;
    let mut broker = TestBroker::new().await;
    let queue = unique("welcome");
    let metrics = app::install_metrics().expect("the only recorder of this binary");
    let (state, sent, pipeline) = start_pipeline(&t, &broker, &queue).await;
    let ops = app::Ops {
        metrics,
        health: pipeline.health(&t.db),
    };
    let service = test::init_service(
        App::new()
            .configure(app::configure(state.clone()))
            .configure(app::configure_ops(ops)),
    )
    .await;

    let mut accepted = BTreeSet::new();
    for (username, email) in VALID {
        let request = new_user(username, email).to_request();
        let response = test::call_service(&service, request).await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{username:?} {email:?}"
        );
        let user: app::UserCreated = test::read_body_json(response).await;
        assert_eq!(
            (user.username.as_str(), user.email.as_str()),
            (username, email)
        );
        accepted.insert(user.id);
    }
    let mut rolled_back = BTreeSet::new();
    for (username, email) in INVALID {
        let request = new_user(username, email).to_request();
        let response = test::call_service(&service, request).await;
        let status = response.status();
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{username:?} {email:?}"
        );
        let rejected: app::Rejected = test::read_body_json(response).await;
        rolled_back.insert(rejected.rolled_back_user_id);
    }
    assert_eq!(
        accepted.len(),
        VALID.len(),
        "accepted users get distinct ids"
    );
    assert_eq!(
        rolled_back.len(),
        INVALID.len(),
        "each rejection held its own id"
    );
    for (ids, want) in [
        (&accepted, StatusCode::OK),
        (&rolled_back, StatusCode::NOT_FOUND),
    ] {
        for id in ids {
            let response = test::call_service(&service, get_user(*id).to_request()).await;
            assert_eq!(response.status(), want, "GET /users/{id}");
        }
    }
    let in_table: BTreeSet<i64> = t
        .ints("SELECT id FROM example_users")
        .await
        .into_iter()
        .collect();
    assert_eq!(
        in_table, accepted,
        "the table holds exactly the accepted users"
    );

    wait_until_handled(&t, &state, &sent, &pipeline, accepted.len()).await;
    // A bounded observation window, not a synchronisation: a duplicate or a stray event
    // arriving now would show up in `sent` below.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The operator's view over HTTP: the metrics and a ready pipeline.
    let want = accepted.len() as f64;
    let response = test::call_service(
        &service,
        test::TestRequest::get().uri("/metrics").to_request(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = String::from_utf8(test::read_body(response).await.to_vec()).expect("utf-8");
    let published = metric(
        &body,
        "outbox_relay_published_total",
        "table=\"example_outbox\"",
    );
    assert_eq!(published, Some(want), "relay metrics over HTTP:\n{body}");
    let ok = metric(
        &body,
        "outbox_consumer_outcomes_total",
        &format!("outcome=\"ok\",queue=\"{queue}\""),
    )
    .or_else(|| {
        metric(
            &body,
            "outbox_consumer_outcomes_total",
            &format!("queue=\"{queue}\",outcome=\"ok\""),
        )
    });
    assert_eq!(ok, Some(want), "consumer metrics over HTTP:\n{body}");
    let health = test::call_service(
        &service,
        test::TestRequest::get().uri("/health").to_request(),
    )
    .await;
    assert_eq!(health.status(), StatusCode::OK);
    let report: serde_json::Value = test::read_body_json(health).await;
    assert_eq!(report["ready"], true, "{report}");
    let parts: Vec<&str> = report["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        parts,
        [
            "database",
            "worker_broker",
            "relay_broker",
            "relay",
            "worker"
        ]
    );

    let stats = pipeline.stop().await.expect("pipeline stops cleanly");
    // Stopped: the relay and the consumers no longer answer, the connections are closed.
    let health = test::call_service(
        &service,
        test::TestRequest::get().uri("/health").to_request(),
    )
    .await;
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    let live = test::call_service(
        &service,
        test::TestRequest::get().uri("/health/live").to_request(),
    )
    .await;
    assert_eq!(
        live.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a stopped relay is not live"
    );

    let seen = sent.user_ids();
    let seen_once: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(
        seen.len(),
        seen_once.len(),
        "a user was welcomed twice: {seen:?}"
    );
    assert_eq!(
        seen_once, in_table,
        "the mailer saw exactly the committed users"
    );
    assert!(
        seen_once.is_disjoint(&rolled_back),
        "a rolled-back user reached the mailer"
    );
    let want = accepted.len() as u64;
    assert_eq!(stats.relay.published, want, "{:?}", stats.relay);
    let mailer = stats
        .mailer
        .expect("the mailer's consumer ran until stopped");
    assert_eq!(
        (mailer.handled, mailer.retried, mailer.dead_lettered),
        (want, 0, 0),
        "{mailer:?}"
    );
    let rows = t.int("SELECT count(*) FROM example_outbox").await;
    assert_eq!(
        rows, 0,
        "confirmed rows are deleted; rolled-back events never existed"
    );
    assert_eq!(
        broker.depth(&queue).await,
        0,
        "nothing left in the mailer's queue"
    );
    let unroutable = format!("{}.unroutable", broker.exchange);
    assert_eq!(
        broker.depth(&unroutable).await,
        0,
        "nothing went unroutable"
    );

    delete_worker_topology(&mut broker, &queue).await;
    broker.cleanup().await;
    t.cleanup().await;
}

/// Creates the example's tables in the test's schema and starts its pipeline on the test's
/// exchange and `queue` (with short retry delays, so their queues have known names).
async fn start_pipeline(
    t: &TestDb,
    broker: &TestBroker,
    queue: &str,
) -> (app::AppState, Arc<app::SentMail>, app::Pipeline) {
    let state = app::AppState {
        db: t.db.clone(),
        outbox: Outbox::new(TableName::new(app::OUTBOX_TABLE).expect("table name")),
    };
    app::create_tables(&state).await.expect("create tables");
    let broker_config = BrokerConfig::new(broker.url.as_str()).expect("broker config");
    let mut config =
        app::PipelineConfig::new(broker_config, &state.outbox, &broker.exchange, queue);
    config.worker = config.worker.with_retry_delays(DELAYS);
    let sent = Arc::new(app::SentMail::default());
    let pipeline = app::Pipeline::start(&t.db, config, &sent)
        .await
        .expect("relay and worker start");
    (state, sent, pipeline)
}

/// Waits until the mailer saw at least `want` users, the outbox is drained and the consumer
/// acked at least `want` events; the caller checks the exact numbers.
async fn wait_until_handled(
    t: &TestDb,
    state: &app::AppState,
    sent: &app::SentMail,
    pipeline: &app::Pipeline,
    want: usize,
) {
    wait_for(
        &format!("the welcome mailer to see all {want} committed users"),
        Duration::from_secs(20),
        || async { (sent.user_ids().len() >= want).then_some(()) },
    )
    .await;
    wait_until_drained(&t.db, state.outbox.table(), Duration::from_secs(10))
        .await
        .expect("the relay drains the outbox");
    wait_for(
        &format!("the mailer's consumer to ack all {want} events"),
        Duration::from_secs(10),
        || async {
            let handled = pipeline.mailer_stats().await?.handled;
            (handled >= want as u64).then_some(())
        },
    )
    .await;
}

/// The value of the series `name{labels}` (labels as rendered) in a Prometheus exposition.
fn metric(body: &str, name: &str, labels: &str) -> Option<f64> {
    let series = format!("{name}{{{labels}}} ");
    body.lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .and_then(|value| value.trim().parse().ok())
}

/// `POST /users` with a JSON body.
fn new_user(username: &str, email: &str) -> test::TestRequest {
    test::TestRequest::post()
        .uri("/users")
        .set_json(serde_json::json!({ "username": username, "email": email }))
}

/// `GET /users/{id}`.
fn get_user(id: i64) -> test::TestRequest {
    test::TestRequest::get().uri(&format!("/users/{id}"))
}

/// Deletes what the worker declared beyond what `TestBroker::cleanup` removes: the mailer's
/// queue and its dead-letter queue, the dead-letter exchange and the delay queues (best effort).
async fn delete_worker_topology(broker: &mut TestBroker, queue: &str) {
    let exchange = broker.exchange.clone();
    broker.track_queue(queue);
    broker.track_queue(&format!("dlq_{queue}"));
    let mut exchanges = vec![format!("{exchange}.dlx")];
    for delay in delays() {
        let name = format!("{exchange}.retry.{}ms", delay.as_millis());
        broker.track_queue(&name);
        exchanges.push(name);
    }
    for name in &exchanges {
        let _ = broker
            .channel
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}
