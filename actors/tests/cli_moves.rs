//! Moving messages with the `actix-outbox` command against a real RabbitMQ: `unroutable
//! replay` once bindings exist, and a `dlq replay` killed mid-way that loses nothing
//! (feature `cli`).
#![cfg(feature = "cli")]
#![allow(missing_docs)]

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Actor;
use actix_outbox::{Event, HandlerResult};
use actix_outbox_actors::admin::{self, Progress, ReplayOptions};
use actix_outbox_actors::{
    BrokerConfig, ConnectionSupervisor, Listen, RunningWorker, StopBroker, Worker, WorkerConfig,
};
use futures_util::future::try_join_all;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;
use support::{assert_fails, cli_async, env, stdout_json, unique};

/// Records the message id and attempt of each event.
struct Recorder {
    seen: Arc<Mutex<Vec<(String, u32)>>>,
}

impl Actor for Recorder {
    type Context = actix::Context<Self>;
}

impl actix::Handler<Event<Value>> for Recorder {
    type Result = HandlerResult;

    fn handle(&mut self, event: Event<Value>, _: &mut Self::Context) -> HandlerResult {
        let seen = (event.message_id().to_string(), event.attempt());
        self.seen.lock().expect("lock").push(seen);
        Ok(())
    }
}

async fn channel() -> (Connection, Channel) {
    let conn = Connection::connect(&env("AMQP_URL"), ConnectionProperties::default())
        .await
        .expect("amqp");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    (conn, channel)
}

/// Publishes `n` JSON messages with fresh ids to `exchange` under `key`, all confirmed.
async fn publish(channel: &Channel, exchange: &str, key: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let mut confirms = Vec::new();
    for id in &ids {
        let props = BasicProperties::default()
            .with_message_id(id.as_str().into())
            .with_content_type("application/json".into());
        let confirm = channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                b"{}",
                props,
            )
            .await
            .expect("publish");
        confirms.push(confirm);
    }
    try_join_all(confirms).await.expect("confirms");
    ids
}

async fn depth(channel: &Channel, queue: &str) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("queue {queue} exists: {e}"))
        .message_count()
}

/// Waits (bounded) until `queue` holds `want` messages.
async fn await_depth(channel: &Channel, queue: &str, want: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = depth(channel, queue).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue}: {want} messages within 20 s, has {now}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_worker(
    supervisor: &actix::Addr<ConnectionSupervisor>,
    exchange: &str,
    queue: &str,
    key: &str,
    seen: &Arc<Mutex<Vec<(String, u32)>>>,
) -> RunningWorker {
    let recorder = Recorder { seen: seen.clone() }.start();
    Worker::new(
        supervisor.clone(),
        WorkerConfig::default()
            .with_exchange(exchange)
            .with_retry_delays(["1s"]),
    )
    .expect("config")
    .listen(Listen::new([key]).expect("key").with_queue(queue), recorder)
    .expect("listen")
    .start()
    .await
    .expect("worker")
}

/// Messages kept in `<exchange>.unroutable` go back to the exchange: while nothing is bound
/// for them they come straight back (and the command says so); once a queue is bound, a
/// replay filtered by key delivers each of them once and leaves the others kept.
#[actix_rt::test]
async fn unroutable_messages_are_replayed_once_bound() {
    let exchange = unique("cli_unr_ex");
    let (qa, qb) = (unique("cli_unr_a"), unique("cli_unr_b"));
    let store = format!("{exchange}.unroutable");
    let supervisor = ConnectionSupervisor::start_supervised(
        BrokerConfig::new(env("AMQP_URL").as_str()).expect("url"),
    )
    .expect("supervisor");
    let seen = Arc::new(Mutex::new(Vec::new()));
    // The first worker declares the exchange with its unroutable store.
    let a = start_worker(&supervisor, &exchange, &qa, "a.#", &seen).await;
    let (conn, channel) = channel().await;
    let mut ids = publish(&channel, &exchange, "b.thing", 3).await;
    publish(&channel, &exchange, "c.other", 1).await;
    await_depth(&channel, &store, 4).await;

    let replay = |extra: &[&str]| {
        let mut all: Vec<String> = [
            "unroutable",
            "replay",
            "--exchange",
            exchange.as_str(),
            "--json",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        all.extend(extra.iter().map(|s| (*s).to_owned()));
        cli_async(all)
    };
    // The copies come straight back (nothing bound for them); the store's count settles
    // shortly after (a quorum queue counts a message given back asynchronously).
    let early = stdout_json(&replay(&["--key", "b.*"]).await);
    assert_eq!(early["replayed"].as_u64(), Some(3), "{early}");
    await_depth(&channel, &store, 4).await;

    let b = start_worker(&supervisor, &exchange, &qb, "b.*", &seen).await;
    let done = stdout_json(&replay(&["--key", "b.*"]).await);
    assert_eq!(done["replayed"].as_u64(), Some(3), "{done}");
    assert!(
        done["waiting_after"].as_u64().is_some_and(|n| n <= 1),
        "{done}"
    );
    await_depth(&channel, &store, 1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().expect("lock").len() < 3 {
        assert!(Instant::now() < deadline, "3 events handled within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // would a stray copy follow?
    let mut handled: Vec<(String, u32)> = seen.lock().expect("lock").clone();
    handled.sort();
    ids.sort();
    assert_eq!(
        handled,
        ids.iter().map(|id| (id.clone(), 1)).collect::<Vec<_>>(),
        "each once, attempt 1"
    );
    assert_eq!(depth(&channel, &store).await, 1, "c.other is still kept");

    assert_fails(
        &cli_async(
            ["unroutable", "replay", "--exchange", "no_such_ex_here"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        )
        .await,
        1,
        "no_such_ex_here.unroutable",
    );

    a.stop().await;
    b.stop().await;
    let _ = supervisor.send(StopBroker).await;
    for q in [
        qa.clone(),
        qb.clone(),
        format!("dlq_{qa}"),
        format!("dlq_{qb}"),
        store.clone(),
        format!("{exchange}.retry.1000ms"),
    ] {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for ex in [
        exchange.clone(),
        store,
        format!("{exchange}.dlx"),
        format!("{exchange}.retry.1000ms"),
    ] {
        let _ = channel
            .exchange_delete(ex.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}

/// A `dlq replay` SIGKILLed mid-way has lost nothing: every message is in the queue or its
/// dead-letter queue, at most one in both. Run again, the replay finishes the move (and
/// reports its progress).
#[actix_rt::test]
async fn an_interrupted_dlq_replay_loses_nothing() {
    const N: u32 = 3000;
    let queue = unique("cli_kill_q");
    let dlq = format!("dlq_{queue}");
    let (conn, channel) = channel().await;
    for q in [&queue, &dlq] {
        channel
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare");
    }
    let ids: BTreeSet<String> = publish(&channel, "", &dlq, N as usize)
        .await
        .into_iter()
        .collect();

    let mut child = Command::new(env!("CARGO_BIN_EXE_actix-outbox"))
        .args(["dlq", "replay", queue.as_str(), "--json"])
        .env("AMQP_URL", env("AMQP_URL"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn actix-outbox");
    let deadline = Instant::now() + Duration::from_secs(60);
    while depth(&channel, &queue).await < 300 {
        assert!(Instant::now() < deadline, "300 replayed within 60 s");
        assert!(
            child.try_wait().expect("child").is_none(),
            "the replay ended before the kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    // Its unacked dead letter (if any) returns once the broker sees the connection gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (moved, left) = loop {
        let (moved, left) = (depth(&channel, &queue).await, depth(&channel, &dlq).await);
        if moved + left >= N {
            break (moved, left);
        }
        assert!(
            Instant::now() < deadline,
            "all {N} back in the two queues within 20 s: {moved} + {left}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        moved + left <= N + 1,
        "at most one in both: {moved} + {left}"
    );
    assert!(left > 0, "killed mid-way: {moved} moved, {left} left");

    let supervisor = ConnectionSupervisor::start_supervised(
        BrokerConfig::new(env("AMQP_URL").as_str()).expect("url"),
    )
    .expect("supervisor");
    let last = Arc::new(Mutex::new(None::<Progress>));
    let calls = Arc::new(AtomicU64::new(0));
    let (l, c) = (last.clone(), calls.clone());
    let options = ReplayOptions::new().with_progress(move |p| {
        c.fetch_add(1, Ordering::SeqCst);
        *l.lock().expect("lock") = Some(p);
    });
    let replayed = admin::dlq_replay(&supervisor, &queue, &options, Duration::from_secs(10))
        .await
        .expect("the second replay");
    assert_eq!(replayed, u64::from(left));
    let last = last.lock().expect("lock").expect("progress reported");
    assert_eq!((last.moved, last.waiting), (replayed, u64::from(left)));
    assert_eq!(calls.load(Ordering::SeqCst), replayed, "once per message");
    assert_eq!(depth(&channel, &dlq).await, 0);

    let mut found = BTreeSet::new();
    let mut copies = 0;
    while let Some(got) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        copies += 1;
        let id = got
            .delivery
            .properties
            .message_id()
            .as_ref()
            .expect("id")
            .to_string();
        found.insert(id);
    }
    assert_eq!(found, ids, "every dead letter replayed");
    assert!(copies <= N + 1, "{copies} copies");
    let _ = supervisor.send(StopBroker).await;
    for q in [&queue, &dlq] {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}
