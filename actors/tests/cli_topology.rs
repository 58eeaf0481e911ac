//! `actix-outbox topology export` and `topology check` against a real RabbitMQ: the exported
//! definitions, imported with `rabbitmqctl import_definitions` into a clean virtual host, are
//! all a worker in check-only mode needs (feature `cli`; needs `rabbitmqctl` and root, as the
//! broker fault tests do).
#![cfg(feature = "cli")]
#![allow(missing_docs)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Actor;
use actix_outbox::{Event, HandlerError, HandlerResult};
use actix_outbox_actors::{
    BrokerConfig, ConnectionSupervisor, Listen, StopBroker, TopologyMode, Worker, WorkerConfig,
};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::Value;
use support::{assert_fails, cli_async, env, rabbitmqctl, unique};

/// Fails each event's first attempt (so it goes through a delay queue), then records it.
struct SecondTime {
    seen: Arc<Mutex<Vec<u32>>>,
}

impl Actor for SecondTime {
    type Context = actix::Context<Self>;
}

impl actix::Handler<Event<Value>> for SecondTime {
    type Result = HandlerResult;

    fn handle(&mut self, event: Event<Value>, _: &mut Self::Context) -> HandlerResult {
        self.seen.lock().expect("lock").push(event.attempt());
        match event.attempt() {
            1 => Err(HandlerError::retry("first time")),
            _ => Ok(()),
        }
    }
}

/// The AMQP URL of the test services, on virtual host `vhost`.
fn url_on(vhost: &str) -> String {
    let base = env("AMQP_URL");
    let cut = base.rfind('/').expect("an AMQP URL has a path");
    format!("{}/{vhost}", &base[..cut])
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[actix_rt::test]
async fn exported_definitions_provision_a_check_only_worker() {
    let (vhost, exchange, queue) = (
        unique("cli_vh"),
        unique("cli_topo_ex"),
        unique("cli_topo_q"),
    );
    let user: lapin::uri::AMQPUri = env("AMQP_URL").parse().expect("AMQP URL");
    rabbitmqctl(&["add_vhost", &vhost]);
    rabbitmqctl(&[
        "set_permissions",
        "-p",
        &vhost,
        &user.authority.userinfo.username,
        ".*",
        ".*",
        ".*",
    ]);
    let url = url_on(&vhost);
    let listen = format!("{queue}=job.*,job.run.#");
    let worker_flags = [
        "--exchange",
        exchange.as_str(),
        "--listen",
        listen.as_str(),
        "--retry-delays",
        "200ms,1s",
        "--amqp-url",
        url.as_str(),
    ];
    let topology = |verb: &str, extra: &[&str]| {
        let mut all = args(&["topology", verb]);
        all.extend(args(&worker_flags));
        all.extend(args(extra));
        cli_async(all)
    };

    // Before the import: every object is missing, and the command says so.
    let before = topology("check", &["--json"]).await;
    assert_fails(&before, 1, "missing or different");
    let missing = String::from_utf8_lossy(&before.stdout)
        .lines()
        .filter(|l| l.contains("\"missing\""))
        .count();
    assert_eq!(
        missing,
        10,
        "5 exchanges and 5 queues: {}",
        String::from_utf8_lossy(&before.stdout)
    );

    // The export is exactly what a worker with these settings declares.
    let exported = topology("export", &["--vhost", vhost.as_str()]).await;
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let definitions: Value = serde_json::from_slice(&exported.stdout).expect("definitions JSON");
    let supervisor =
        ConnectionSupervisor::start_supervised(BrokerConfig::new(url.as_str()).expect("url"))
            .expect("supervisor");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = SecondTime { seen: seen.clone() }.start();
    let config = WorkerConfig::default()
        .with_exchange(exchange.as_str())
        .with_retry_delays(["200ms", "1s"]);
    let keys = Listen::new(["job.*", "job.run.#"])
        .expect("keys")
        .with_queue(queue.as_str());
    let worker = Worker::new(
        supervisor.clone(),
        config.clone().with_topology(TopologyMode::CheckOnly),
    )
    .expect("config")
    .listen(keys, handler)
    .expect("listen");
    assert_eq!(
        definitions,
        worker.topology().to_definitions(&vhost),
        "CLI flags ≙ worker config"
    );

    // Import into the clean virtual host; the import is asynchronous, so await the check.
    let file = std::env::temp_dir().join(format!("{vhost}.json"));
    std::fs::write(&file, &exported.stdout).expect("write definitions");
    rabbitmqctl(&["import_definitions", file.to_str().expect("utf-8 path")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let check = topology("check", &[]).await;
        if check.status.success() {
            let text = String::from_utf8_lossy(&check.stdout);
            assert_eq!(
                text.lines().filter(|l| l.ends_with(" ok")).count(),
                10,
                "{text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the imported topology checks out within 30 s: {}",
            String::from_utf8_lossy(&check.stdout)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A worker that may declare nothing starts on it, and its event takes the retry hop
    // through an imported delay queue (so the bindings were imported too).
    let running = worker
        .start()
        .await
        .expect("a check-only worker starts on the imported topology");
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("amqp");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .basic_publish(
            exchange.as_str().into(),
            "job.run.nightly".into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default()
                .with_message_id(uuid::Uuid::now_v7().to_string().as_str().into())
                .with_content_type("application/json".into()),
        )
        .await
        .expect("publish");
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().expect("lock").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "attempts 1 and 2 within 20 s, saw {:?}",
            seen.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(*seen.lock().expect("lock"), [1, 2]);

    // A worker that wants another queue type is told, object by object.
    let other = topology("check", &["--queue-type", "classic"]).await;
    assert_fails(&other, 1, "missing or different");
    assert!(String::from_utf8_lossy(&other.stdout).contains("DIFFERENT"));

    running.stop().await;
    let _ = supervisor.send(StopBroker).await;
    let _ = conn.close(200, "done".into()).await;
    rabbitmqctl(&["delete_vhost", &vhost]);
    let _ = std::fs::remove_file(file);
}

/// Bad worker flags are one-line errors with exit 1 (usage errors: 2).
#[actix_rt::test]
async fn bad_topology_flags_are_clear_errors() {
    let export = |extra: &[&str]| {
        let mut all = args(&["topology", "export"]);
        all.extend(args(extra));
        cli_async(all)
    };
    assert_fails(
        &export(&["--listen", "no_equals_sign"]).await,
        1,
        "QUEUE=KEY",
    );
    assert_fails(&export(&["--listen", "q=user..x"]).await, 1, "binding key");
    assert_fails(
        &export(&["--listen", "q=a", "--retry-delays", "soon"]).await,
        1,
        "soon",
    );
    assert_fails(
        &export(&["--listen", "q=a", "--listen", "q=b"]).await,
        1,
        "twice",
    );
    assert_fails(&export(&["--listen", "bad name=a"]).await, 1, "queue");
    assert_fails(&export(&[]).await, 2, "--listen");
    assert_fails(
        &export(&["--listen", "q=a", "--ordered", "q=many"]).await,
        1,
        "QUEUE=N",
    );
    assert_fails(
        &export(&["--listen", "q=a", "--ordered", "other=2"]).await,
        1,
        "not among the --listen queues",
    );
    assert_fails(
        &export(&["--listen", "q=a", "--ordered", "q=0"]).await,
        1,
        "1 to 64 partitions",
    );
    // An ordered listener's objects are in the export.
    let ordered = export(&["--listen", "q=a.*", "--ordered", "q=2"]).await;
    assert!(ordered.status.success(), "{ordered:?}");
    let defs: serde_json::Value = serde_json::from_slice(&ordered.stdout).expect("json");
    let queues: Vec<&str> = defs["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    assert!(
        queues.contains(&"q.p0") && queues.contains(&"q.p1"),
        "{queues:?}"
    );
    assert!(!queues.contains(&"q"), "no plain queue: {queues:?}");
    let e2e = defs["bindings"]
        .as_array()
        .expect("bindings")
        .iter()
        .filter(|b| b["destination_type"] == "exchange")
        .count();
    assert_eq!(e2e, 1, "the topic exchange feeds the hash exchange: {defs}");
}
