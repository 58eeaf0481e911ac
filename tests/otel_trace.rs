//! One trace from an HTTP request through emit, the relay and the handler (feature `otel`):
//! the request's span context is stored at emit, the relay publishes under a PRODUCER span
//! and the consumer handles under a CONSUMER span, both children of the request's span.
//! Alone in its binary: the tracing subscriber is global to the process. Needs the `otel`
//! features of both crates: `cargo test --workspace --all-features` (what `scripts/test` runs).
#![cfg(all(feature = "service-tests", feature = "otel"))]

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix_outbox::setup;
use actix_outbox_actors::{Listen, Worker};
use actix_web::{App, HttpResponse, test, web};
use common::relay::{TestRelay, config};
use common::worker::{Log, WorkerEnv, delays, scripted};
use common::{TestDb, wait_for};
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry::{KeyValue, Value as OtelValue};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use sea_orm::{DatabaseConnection, TransactionTrait};
use serde_json::Value;
use tracing::Instrument;
use tracing_subscriber::prelude::*;

/// `POST /orders`: emits `order.placed` in a transaction, inside the request's span.
async fn place_order(db: web::Data<DatabaseConnection>) -> HttpResponse {
    let span = tracing::info_span!("POST /orders", otel.kind = "server");
    async move {
        let txn = db.begin().await.expect("begin");
        let id = actix_outbox::emit(&txn, "order.placed", &serde_json::json!({"order": 1}))
            .await
            .expect("emit");
        txn.commit().await.expect("commit");
        HttpResponse::Created().body(id.to_string())
    }
    .instrument(span)
    .await
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a OtelValue> {
    span.attributes
        .iter()
        .find(|KeyValue { key: k, .. }| k.as_str() == key)
        .map(|kv| &kv.value)
}

#[actix_rt::test]
async fn one_trace_from_the_request_to_the_handler() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("otel_trace test")));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber here");

    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("traced");
    let log = Arc::new(Log::default());
    let running = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            Listen::new(["order.#"])
                .expect("keys")
                .with_queue(queue.as_str()),
            scripted::<Value, _>(&log, |_| Ok(())),
        )
        .expect("listen")
        .start()
        .await
        .expect("worker starts");
    let relay = TestRelay::start(&t.db, &env.broker.url, config(&env.broker.exchange));

    let service = test::init_service(
        App::new()
            .app_data(web::Data::new(t.db.clone()))
            .route("/orders", web::post().to(place_order)),
    )
    .await;
    let response = test::call_service(
        &service,
        test::TestRequest::post().uri("/orders").to_request(),
    )
    .await;
    assert_eq!(response.status(), actix_web::http::StatusCode::CREATED);
    let id = String::from_utf8(test::read_body(response).await.to_vec()).expect("utf-8");
    log.wait_count("the order handled", 1, Duration::from_secs(20))
        .await;

    let has_id = |s: &SpanData| {
        attribute(s, "messaging.message.id").map(|v| v.as_str().into_owned()) == Some(id.clone())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let spans = wait_for(
        "request, producer and consumer spans",
        Duration::from_secs(12),
        || async {
            if std::time::Instant::now() > deadline {
                let spans = exporter.get_finished_spans().expect("spans");
                let named: Vec<String> = spans
                    .iter()
                    .filter(|s| s.span_kind != SpanKind::Internal)
                    .map(|s| format!("{} ({:?})", s.name, s.span_kind))
                    .collect();
                panic!(
                    "no request, PRODUCER and CONSUMER spans for {id} among {named:?}; a missing \
                     PRODUCER span means actix-outbox-actors was built without its `otel` \
                     feature (run with --workspace --all-features, as scripts/test does)"
                );
            }
            let spans = exporter.get_finished_spans().expect("spans");
            let kinds = [SpanKind::Producer, SpanKind::Consumer];
            let found = kinds
                .iter()
                .all(|k| spans.iter().any(|s| &s.span_kind == k && has_id(s)));
            let request = spans.iter().any(|s| s.name == "POST /orders");
            (found && request).then_some(spans)
        },
    )
    .await;
    let request = spans
        .iter()
        .find(|s| s.name == "POST /orders")
        .expect("request span");
    let trace_id = request.span_context.trace_id();
    for (kind, name) in [
        (
            SpanKind::Producer,
            format!("publish {}", env.broker.exchange),
        ),
        (SpanKind::Consumer, format!("process {queue}")),
    ] {
        let span = spans
            .iter()
            .find(|s| s.span_kind == kind && has_id(s))
            .expect("span");
        assert_eq!(
            span.span_context.trace_id(),
            trace_id,
            "{kind:?} span in the request's trace"
        );
        assert_eq!(
            span.parent_span_id,
            request.span_context.span_id(),
            "{kind:?} span a child of the request's span"
        );
        assert_eq!(span.name, name);
        assert_eq!(
            attribute(span, "messaging.system").map(|v| v.as_str().into_owned()),
            Some("rabbitmq".to_owned())
        );
        assert_eq!(
            attribute(span, "messaging.rabbitmq.destination.routing_key")
                .map(|v| v.as_str().into_owned()),
            Some("order.placed".to_owned())
        );
    }
    let handled = log.all();
    assert_eq!(handled.len(), 1, "{handled:?}");

    relay.stop().await;
    env.finish(running, &delays()).await;
    t.cleanup().await;
    let _ = provider.shutdown();
}
