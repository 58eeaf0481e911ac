//! Ordered listeners (`Listen::ordered`): the events of one ordering key reach the handler
//! one at a time in emit order, across partitions; a retried event holds its key back; the
//! topology is what the docs say.
#![cfg(feature = "service-tests")]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_outbox::{Event, HandlerError, HandlerResult, OutboxEvent, emit_many, setup};
use actix_outbox_actors::{Listen, Worker};
use common::relay::{TestRelay, config as relay_config};
use common::worker::{WorkerEnv, delays};
use common::{TestDb, wait_for};
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Step {
    key: String,
    seq: u32,
}

/// One handler call: the step, its attempt, and the ordering key the event carried.
#[derive(Debug, Clone)]
struct Call {
    step_key: String,
    seq: u32,
    attempt: u32,
    ordering_key: Option<String>,
}

#[derive(Default)]
struct Calls(Mutex<Vec<Call>>);

/// Records every call; fails `(fail_key, fail_seq)` on its first two attempts.
struct Recorder {
    calls: Arc<Calls>,
    fail: (String, u32),
}

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<Event<Step>> for Recorder {
    type Result = HandlerResult;
    fn handle(&mut self, event: Event<Step>, _: &mut Context<Self>) -> HandlerResult {
        let step = event.payload().clone();
        let mut calls = self.calls.0.lock().expect("lock");
        let first_poison = step.key == "poison" && !calls.iter().any(|c| c.step_key == "poison");
        calls.push(Call {
            step_key: step.key.clone(),
            seq: step.seq,
            attempt: event.attempt(),
            ordering_key: event.ordering_key().map(str::to_owned),
        });
        drop(calls);
        if first_poison {
            return Err(HandlerError::reject("poison: dead-lettered the first time"));
        }
        if (step.key.as_str(), step.seq) == (self.fail.0.as_str(), self.fail.1)
            && event.attempt() < 3
        {
            return Err(HandlerError::failed("not yet"));
        }
        Ok(())
    }
}

#[actix_rt::test]
async fn one_keys_events_are_handled_in_order_and_a_retry_holds_it_back() {
    const KEYS: u32 = 20;
    const PER_KEY: u32 = 30;
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut env = WorkerEnv::new().await;
    let queue = env.queue("ordered");
    let calls = Arc::new(Calls::default());
    let factory = {
        let calls = calls.clone();
        move || Recorder {
            calls: calls.clone(),
            fail: ("k3".to_owned(), 5),
        }
    };
    let running = Worker::new(env.supervisor.clone(), env.config())
        .expect("worker")
        .listen::<Step, _>(
            Listen::new(["order.*"])
                .expect("keys")
                .with_queue(&queue)
                .ordered(4),
            factory,
        )
        .expect("listen")
        .start()
        .await
        .expect("start");
    let partitions: Vec<String> = running.queues().map(str::to_owned).collect();
    assert_eq!(
        partitions,
        (0..4).map(|n| format!("{queue}.p{n}")).collect::<Vec<_>>()
    );
    // Each partition is a single-active-consumer queue with our consumer on it.
    for partition in &partitions {
        let channel = env.broker.conn.create_channel().await.expect("channel");
        let q = channel
            .queue_declare(
                partition.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the partition exists");
        assert_eq!(q.consumer_count(), 1, "{partition}");
    }

    let relay = TestRelay::start(&t.db, &env.broker.url, relay_config(&env.broker.exchange));
    let poison = OutboxEvent::json(
        "order.changed",
        &Step {
            key: "poison".into(),
            seq: 1,
        },
    )
    .expect("event")
    .with_ordering_key("poison");
    actix_outbox::emit_event(&t.db, poison).await.expect("emit");
    for seq in 1..=PER_KEY {
        let events = (0..KEYS).map(|k| {
            let key = format!("k{k}");
            OutboxEvent::json(
                "order.changed",
                &Step {
                    key: key.clone(),
                    seq,
                },
            )
            .expect("event")
            .with_ordering_key(key)
        });
        emit_many(&t.db, events).await.expect("emit");
    }
    let handled = |calls: &[Call]| {
        calls
            .iter()
            .filter(|c| !((c.step_key == "k3" && c.seq == 5) && c.attempt < 3))
            .filter(|c| c.step_key != "poison")
            .count()
    };
    wait_for(
        "every event to be handled",
        Duration::from_secs(60),
        || async {
            (handled(&calls.0.lock().expect("lock")) >= (KEYS * PER_KEY) as usize).then_some(())
        },
    )
    .await;
    let recorded = calls.clone();
    let calls = calls.0.lock().expect("lock").clone();
    let mut by_key: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
    for c in calls.iter().filter(|c| c.step_key != "poison") {
        assert_eq!(
            c.ordering_key.as_deref(),
            Some(c.step_key.as_str()),
            "the key travels"
        );
        by_key
            .entry(c.step_key.clone())
            .or_default()
            .push((c.seq, c.attempt));
    }
    for (key, seen) in &by_key {
        let seqs: Vec<u32> = seen
            .iter()
            .filter(|(_, a)| *a == 1)
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(
            seqs,
            (1..=PER_KEY).collect::<Vec<_>>(),
            "{key}: first attempts in order"
        );
        if key == "k3" {
            let five: Vec<usize> = seen
                .iter()
                .enumerate()
                .filter(|(_, (s, _))| *s == 5)
                .map(|(i, _)| i)
                .collect();
            assert_eq!(five.len(), 3, "k3/5 attempts: {seen:?}");
            assert_eq!(
                five,
                [4, 5, 6],
                "k3/5 is retried in place: nothing of k3 comes between its attempts: {seen:?}"
            );
            assert_eq!(
                seen[4..7].iter().map(|(_, a)| *a).collect::<Vec<_>>(),
                [1, 2, 3]
            );
        } else {
            assert!(
                seen.iter().all(|(_, a)| *a == 1),
                "{key}: no retries: {seen:?}"
            );
        }
    }
    assert_eq!(by_key.len(), KEYS as usize);

    // The rejected event waits in the listener's one dead-letter queue; replayed through the
    // hash exchange, it reaches its partition's handler again.
    let options = actix_outbox_actors::admin::ReplayOptions::default();
    let replayed = wait_for(
        "the poison event to be dead-lettered and replayed",
        Duration::from_secs(15),
        || async {
            let moved = actix_outbox_actors::admin::dlq_replay_ordered(
                &env.supervisor,
                &env.broker.exchange,
                &queue,
                &options,
                Duration::from_secs(5),
            )
            .await
            .expect("replay");
            (moved > 0).then_some(moved)
        },
    )
    .await;
    assert_eq!(replayed, 1);
    wait_for(
        "the replayed event to be handled",
        Duration::from_secs(15),
        || async {
            let calls = recorded.0.lock().expect("lock");
            (calls.iter().filter(|c| c.step_key == "poison").count() == 2).then_some(())
        },
    )
    .await;
    let stats = running.stats().await;
    let busy = stats.values().filter(|s| s.handled > 0).count();
    assert!(busy >= 2, "the keys spread over the partitions: {stats:?}");
    relay.stop().await;
    t.wait_outbox_empty("all sent", Duration::from_secs(5))
        .await;
    let exchange = format!("{}.ordered.{queue}", env.broker.exchange);
    tokio::time::timeout(Duration::from_secs(30), running.stop())
        .await
        .expect("worker stops");
    let _ = env
        .broker
        .channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    for partition in &partitions {
        env.broker.track_queue(partition);
    }
    env.cleanup(&delays()).await;
    t.cleanup().await;
}
