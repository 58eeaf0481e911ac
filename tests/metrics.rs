//! Every metric of `actix_outbox_actors::metrics`, recorded by a relay and a worker against
//! real PostgreSQL and RabbitMQ and read back from a Prometheus exposition. Alone in its
//! binary: the recorder is global to the process, and every test's table is `outbox`.
#![cfg(feature = "service-tests")]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use actix_outbox::{Event, HandlerError, HandlerResult, OutboxEvent, setup};
use actix_outbox_actors::{Cleanup, Listen, Worker};
use chrono::Utc;
use common::TestDb;
use common::faults::rabbitmqctl;
use common::relay::{TestRelay, config};
use common::worker::{Extra, WorkerEnv, delays};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::{Value, json};

/// A scraped exposition: series (name and sorted labels) → value.
#[derive(Debug)]
struct Scrape(BTreeMap<(String, BTreeMap<String, String>), f64>);

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut series = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (key, value) = line.rsplit_once(' ').expect("`series value`");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("value in {line:?}"));
            let (name, labels) = match key.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (key, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once('=').expect("label=value");
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            series.insert((name.to_owned(), labels), value);
        }
        Self(series)
    }

    /// The value of `name` with (at least) `labels`, summed over the other labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .0
            .iter()
            .filter(|((n, l), _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| *v)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name} {labels:?} in the exposition"))
    }
}

/// Waits (30 s at most) until `check` holds on a fresh scrape; on timeout fails showing the
/// last one (histogram buckets left out).
async fn wait_metric(
    handle: &PrometheusHandle,
    what: &str,
    check: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = handle.render();
        let s = Scrape::parse(&text);
        if check(&s) {
            return s;
        }
        if std::time::Instant::now() > deadline {
            let shown: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
                .collect();
            panic!(
                "timed out after 30 s waiting for {what}; last scrape:\n{}",
                shown.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Behaves by the payload's `kind`.
struct Scripted;

impl Actor for Scripted {
    type Context = Context<Self>;
}

impl Handler<Event<Value>> for Scripted {
    type Result = ResponseFuture<HandlerResult>;

    fn handle(&mut self, event: Event<Value>, _: &mut Context<Self>) -> Self::Result {
        let kind = event.payload()["kind"].as_str().unwrap_or("ok").to_owned();
        if kind == "panic" && event.attempt() == 1 {
            panic!("scripted panic");
        }
        let attempt = event.attempt();
        Box::pin(async move {
            match kind.as_str() {
                "retry_once" if attempt == 1 => Err(HandlerError::failed("first try fails")),
                "reject" => Err(HandlerError::reject("never valid")),
                "abort" => Err(HandlerError::abort("meaningless now")),
                "slow" if attempt == 1 => {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    Ok(())
                }
                _ => Ok(()),
            }
        })
    }
}

#[actix_rt::test]
async fn every_metric_is_recorded() {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1, 1.0, 10.0])
        .expect("buckets")
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder of this binary");

    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("metrics");
    // Timeouts on a queue of their own: a panic on the main queue must not touch them.
    let slow_queue = env.queue("metrics_slow");
    let running = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            Listen::new(["m.#"])
                .expect("keys")
                .with_queue(queue.as_str()),
            || Scripted,
        )
        .expect("listen")
        .listen(
            Listen::new(["t.#"])
                .expect("keys")
                .with_queue(slow_queue.as_str())
                .with_handler_timeout(Duration::from_millis(500)),
            || Scripted,
        )
        .expect("listen slow")
        .start()
        .await
        .expect("worker starts");
    let relay = TestRelay::start(
        &t.db,
        &env.broker.url,
        config(&env.broker.exchange)
            .with_max_message_bytes(4_096)
            .with_cleanup(Cleanup::Keep {
                retention: Duration::from_millis(200),
            }),
    );
    let q = queue.as_str();
    let tq = [("table", "outbox")];

    // Due rows held by another transaction: the backlog and its age show.
    let locked: Vec<OutboxEvent> = (0..3)
        .map(|_| {
            OutboxEvent::json("m.locked", &json!({"kind": "ok"}))
                .expect("event")
                .with_delay(Duration::from_millis(300))
        })
        .collect();
    actix_outbox::emit_many(&t.db, locked).await.expect("emit");
    let holder = t.db.begin().await.expect("begin");
    holder
        .execute_unprepared("SELECT id FROM outbox WHERE routing_key = 'm.locked' FOR UPDATE")
        .await
        .expect("lock the rows");
    let s = wait_metric(&handle, "backlog 3, oldest due > 0", |s| {
        s.get("outbox_backlog_rows", &tq) == Some(3.0)
            && s.get("outbox_oldest_due_age_seconds", &tq).unwrap_or(0.0) > 0.0
    })
    .await;
    assert!(s.must("outbox_oldest_due_age_seconds", &tq) < 60.0);
    holder.commit().await.expect("release the rows");

    for kind in ["ok", "ok", "retry_once", "reject", "abort", "panic"] {
        actix_outbox::emit(&t.db, &format!("m.{kind}"), &json!({ "kind": kind }))
            .await
            .expect("emit");
    }
    actix_outbox::emit(&t.db, "t.slow", &json!({ "kind": "slow" }))
        .await
        .expect("emit");
    let past = OutboxEvent::json("m.late", &json!({}))
        .expect("event")
        .with_expires_at(Utc::now() - chrono::TimeDelta::seconds(1));
    actix_outbox::emit_event(&t.db, past).await.expect("emit");
    actix_outbox::emit(&t.db, "nobody.listens", &1)
        .await
        .expect("emit");
    let huge = OutboxEvent::bytes("m.huge", vec![b'x'; 8_192]).expect("event");
    actix_outbox::emit_event(&t.db, huge).await.expect("emit");
    env.publish("m.bad", b"not json").await;
    let deadline = Extra {
        deadline: Some(Utc::now() - chrono::TimeDelta::seconds(1)),
        ..Extra::default()
    };
    env.publish_with("m.expired", b"{}", deadline).await;

    let outcome = |s: &Scrape, o: &str| {
        s.get("outbox_consumer_outcomes_total", &[("outcome", o)])
            .unwrap_or(0.0)
    };
    let s = wait_metric(&handle, "every outcome and relay count", |s| {
        [
            "ok",
            "retry",
            "dead_letter",
            "abort",
            "undecodable",
            "expired",
            "panic",
            "timeout",
        ]
        .iter()
        .all(|o| outcome(s, o) >= 1.0)
            && s.get("outbox_relay_parked_total", &tq) == Some(1.0)
            && s.get("outbox_parked_rows", &tq) == Some(1.0)
            && s.get("outbox_relay_expired_total", &tq) == Some(1.0)
            && s.get("outbox_relay_unroutable_queued", &tq) == Some(1.0)
            && s.get("outbox_relay_purged_total", &tq).unwrap_or(0.0) >= 1.0
            && s.get("outbox_consumer_dlq_depth", &[("queue", q)])
                .unwrap_or(0.0)
                >= 4.0
    })
    .await;
    // Relay: 3 locked + 7 scripted + the late one + the unroutable one were confirmed.
    assert!(s.must("outbox_relay_published_total", &tq) >= 12.0);
    assert_eq!(
        s.must("outbox_relay_refused_total", &tq),
        1.0,
        "the oversized row: refused, then parked"
    );
    for zero in [
        "outbox_relay_unroutable_total",
        "outbox_relay_released_total",
        "outbox_relay_errors_total",
    ] {
        assert_eq!(s.must(zero, &tq), 0.0, "{zero}");
    }
    for histogram in [
        "outbox_relay_batch_duration_seconds_count",
        "outbox_relay_claim_to_confirm_seconds_count",
        "outbox_relay_due_lag_seconds_count",
    ] {
        assert!(s.must(histogram, &tq) >= 1.0, "{histogram}");
    }
    assert!(s.get("outbox_kept_rows", &tq).is_some());
    assert_eq!(s.must("outbox_relay_standby", &tq), 0.0);
    assert_eq!(s.must("outbox_backlog_rows", &tq), 0.0, "drained");
    // Consumer.
    assert!(s.must("outbox_consumer_delivered_total", &[("queue", q)]) >= 12.0);
    assert!(
        s.must(
            "outbox_consumer_handler_duration_seconds_count",
            &[("queue", q)]
        ) >= 7.0
    );
    assert!(
        s.get("outbox_consumer_in_flight", &[("queue", q)])
            .is_some()
    );
    assert_eq!(
        outcome(&s, "ok"),
        8.0,
        "3 locked, 2 ok, and the second tries of retry_once, panic and slow"
    );
    // Broker: both connections up.
    assert_eq!(
        s.must("outbox_broker_connected", &[]),
        2.0,
        "relay's and worker's"
    );

    // A forced close: every connection comes back, and the consumer consumes again.
    rabbitmqctl(&["close_all_connections", "metrics test"]).await;
    let s = wait_metric(&handle, "reconnects counted", |s| {
        s.get("outbox_broker_reconnects_total", &[]).unwrap_or(0.0) >= 2.0
            && s.get("outbox_consumer_reconnects_total", &[("queue", q)])
                .unwrap_or(0.0)
                >= 1.0
            && s.get("outbox_broker_connected", &[]) == Some(2.0)
    })
    .await;
    eprintln!("{}", handle.render());
    drop(s);

    relay.stop().await;
    env.finish(running, &delays()).await;
    t.cleanup().await;
}
