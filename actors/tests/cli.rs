//! The `actix-outbox` command against real PostgreSQL and RabbitMQ (feature `cli`; the
//! services' URLs come from `DATABASE_URL` and `AMQP_URL`, as `scripts/test` sets them). Each
//! test uses a table, exchange and queue of its own.
#![cfg(feature = "cli")]
#![allow(missing_docs)]

mod support;

use actix_outbox::{Outbox, TableName, ddl};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sea_orm::{ConnectionTrait, Database, DbBackend};
use serde_json::Value;
use support::{assert_fails, cli, cli_async, env, stdout_json, unique};

#[test]
fn ddl_prints_what_setup_runs() {
    let table = TableName::new("cli_ddl").expect("name");
    let out = cli(&["ddl", "--backend", "sqlite", "--table", "cli_ddl", "--json"]);
    let printed: Vec<String> = serde_json::from_value(stdout_json(&out)).expect("strings");
    assert_eq!(printed, ddl(DbBackend::Sqlite, &table).expect("ddl"));
}

/// `notify off` switches the table's trigger off (the library reads the same state), `status`
/// reports it, `on` restores it; a table that was never set up is a clear error.
#[actix_rt::test]
async fn notify_switches_the_trigger() {
    let table_name = unique("cli_notify");
    let db = Database::connect(env("DATABASE_URL")).await.expect("db");
    let outbox = Outbox::new(TableName::new(table_name.as_str()).expect("name"));
    let missing = cli_async(vec![
        "notify".into(),
        "status".into(),
        "--table".into(),
        table_name.clone(),
    ])
    .await;
    assert_fails(&missing, 1, "run `setup` first");
    outbox.setup(&db).await.expect("setup");
    let run = |action: &str| {
        let args = ["notify", action, "--table", table_name.as_str(), "--json"].map(String::from);
        cli_async(args.to_vec())
    };
    let off = stdout_json(&run("off").await);
    assert_eq!(off["notify"], false, "{off}");
    assert!(!outbox.notify_enabled(&db).await.expect("state"));
    assert_eq!(stdout_json(&run("status").await)["notify"], false);
    assert_eq!(stdout_json(&run("on").await)["notify"], true);
    assert!(outbox.notify_enabled(&db).await.expect("state"));
    db.execute_unprepared(&format!(
        "DROP TABLE {table_name}; DROP FUNCTION {table_name}_notify()"
    ))
    .await
    .expect("drop");
}

#[actix_rt::test]
async fn status_and_parked_rows() {
    let table_name = unique("cli");
    let (exchange, queue) = (unique("cli_ex"), unique("cli_q"));
    let db = Database::connect(env("DATABASE_URL")).await.expect("db");
    let outbox = Outbox::new(TableName::new(table_name.as_str()).expect("name"));
    outbox.setup(&db).await.expect("setup");
    for key in ["user.created", "order.placed"] {
        outbox.emit(&db, key, &1).await.expect("emit");
    }
    db.execute_unprepared(&format!(
        "UPDATE {table_name} SET parked_at = now(), attempts = 3, last_error = 'unroutable' \
         WHERE routing_key = 'user.created'"
    ))
    .await
    .expect("park one row");
    let conn = Connection::connect(&env("AMQP_URL"), ConnectionProperties::default())
        .await
        .expect("amqp");
    let channel = conn.create_channel().await.expect("channel");
    for q in [queue.clone(), format!("dlq_{queue}")] {
        channel
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare");
    }
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");

    let base = [
        "--table",
        table_name.as_str(),
        "--exchange",
        exchange.as_str(),
        "--json",
    ];
    let status = |extra: &[&str]| {
        let mut args = vec!["status"];
        args.extend(base);
        args.extend(extra);
        cli(&args)
    };
    let report = stdout_json(&status(&["--queue", queue.as_str()]));
    assert_eq!(report["table"]["due"], 1, "{report}");
    assert_eq!(report["table"]["parked"], 1, "{report}");
    assert_eq!(
        report["unroutable"],
        Value::Null,
        "no alternate exchange queue"
    );
    assert_eq!(report["queues"][0]["ready"], 1, "{report}");
    assert_eq!(report["queues"][0]["consumers"], 0);
    assert_eq!(report["queues"][0]["dead_letters"], 0);

    let run = |args: &[&str]| {
        let mut all = vec!["parked"];
        all.extend(args);
        all.extend(base);
        cli(&all)
    };
    let listed = run(&["list", "--key", "user.*"]);
    let line: Value = serde_json::from_slice(&listed.stdout).expect("one JSON line");
    assert_eq!(line["routing_key"], "user.created");
    assert_eq!(line["last_error"], "unroutable");
    let id = line["id"].as_i64().expect("id").to_string();
    assert!(run(&["list", "--key", "order.*"]).stdout.is_empty());
    assert_eq!(stdout_json(&run(&["retry", id.as_str()]))["retried"], 1);
    assert_eq!(stdout_json(&run(&["discard", "--all"]))["discarded"], 0);
    let report = stdout_json(&status(&[]));
    assert_eq!(
        (
            report["table"]["due"].as_u64(),
            report["table"]["parked"].as_u64()
        ),
        (Some(2), Some(0))
    );

    // Bad input: a clear one-line error and a non-zero exit, never a panic.
    assert_fails(
        &status(&["--queue", "no_such_queue_here"]),
        1,
        "no_such_queue_here",
    );
    assert_fails(&run(&["retry", "abc"]), 2, "invalid value");
    assert_fails(&run(&["retry"]), 2, "required");
    assert_fails(&run(&["list", "--key", "user..x"]), 1, "binding key");
    assert_fails(
        &cli(&["status", "--table", "no_such_outbox_here"]),
        1,
        "the table does not exist: run `setup` first",
    );
    assert_fails(
        &cli(&["parked", "list", "--table", "no_such_outbox_here"]),
        1,
        "the table does not exist: run `setup` first",
    );
    let unreachable = cli(&[
        "status",
        "--table",
        table_name.as_str(),
        "--queue",
        queue.as_str(),
        "--amqp-url",
        "amqp://outbox:secretpw@127.0.0.1:1/%2f",
    ]);
    assert_fails(&unreachable, 1, "broker");

    for q in [queue.clone(), format!("dlq_{queue}")] {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
    let _ = db
        .execute_unprepared(&format!("DROP TABLE {table_name}"))
        .await;
}

/// Rejects every event until `fixed`, then records it.
struct Picky {
    fixed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, u32)>>>,
}

impl actix::Actor for Picky {
    type Context = actix::Context<Self>;
}

impl actix::Handler<actix_outbox::Event<Value>> for Picky {
    type Result = actix_outbox::HandlerResult;

    fn handle(&mut self, event: actix_outbox::Event<Value>, _: &mut Self::Context) -> Self::Result {
        if !self.fixed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(actix_outbox::HandlerError::reject("not yet"));
        }
        let seen = (event.message_id().to_string(), event.attempt());
        self.seen.lock().expect("lock").push(seen);
        Ok(())
    }
}

/// After a Reject, `dlq list` shows the dead letters, `dlq replay --limit` moves some back
/// with attempt 1 (the rest stay: an interrupted replay loses nothing), `--message-id` moves
/// one, and the handler gets each event once; `purge` empties the queue; an unknown queue is a
/// one-line error.
#[actix_rt::test]
async fn dead_letters_are_listed_replayed_and_purged() {
    use actix::Actor;
    use actix_outbox_actors::{
        BrokerConfig, ConnectionSupervisor, Listen, StopBroker, Worker, WorkerConfig,
    };
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    let (exchange, queue) = (unique("cli_dlq_ex"), unique("cli_dlq_q"));
    let supervisor = ConnectionSupervisor::start_supervised(
        BrokerConfig::new(env("AMQP_URL").as_str()).expect("url"),
    )
    .expect("supervisor");
    let fixed = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let picky = Picky {
        fixed: fixed.clone(),
        seen: seen.clone(),
    }
    .start();
    let running = Worker::new(
        supervisor.clone(),
        WorkerConfig::default()
            .with_exchange(exchange.as_str())
            .with_retry_delays(["100ms"]),
    )
    .expect("config")
    .listen(
        Listen::new(["job.#"])
            .expect("keys")
            .with_queue(queue.as_str()),
        picky,
    )
    .expect("listen")
    .start()
    .await
    .expect("worker");

    let conn = Connection::connect(&env("AMQP_URL"), ConnectionProperties::default())
        .await
        .expect("amqp");
    let channel = conn.create_channel().await.expect("channel");
    let mut ids = Vec::new();
    for n in 0..3 {
        let id = uuid::Uuid::now_v7().to_string();
        channel
            .basic_publish(
                exchange.as_str().into(),
                "job.run".into(),
                BasicPublishOptions::default(),
                format!("{{\"n\":{n}}}").as_bytes(),
                BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_content_type("application/json".into()),
            )
            .await
            .expect("publish");
        ids.push(id);
    }
    let dlq = format!("dlq_{queue}");
    let depth = |name: String| {
        let channel = channel.clone();
        async move {
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(name.as_str().into(), passive, FieldTable::default())
                .await
                .expect("queue exists")
                .message_count()
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while depth(dlq.clone()).await < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "3 dead letters within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let args = |extra: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        all.push("--json".into());
        all
    };
    let listed = cli_async(args(&["dlq", "list", queue.as_str()])).await;
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let letters: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(letters.len(), 3);
    assert!(
        letters
            .iter()
            .all(|l| l["reason"].as_str().is_some_and(|r| r.contains("not yet")))
    );
    assert_eq!(depth(dlq.clone()).await, 3, "listing leaves them in place");

    fixed.store(true, Ordering::SeqCst);
    let moved =
        stdout_json(&cli_async(args(&["dlq", "replay", queue.as_str(), "--limit", "2"])).await);
    assert_eq!(moved["replayed"], 2);
    assert_eq!(depth(dlq.clone()).await, 1, "the rest stays until replayed");
    let handled_ids = || {
        seen.lock()
            .expect("lock")
            .iter()
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>()
    };
    let left = ids
        .iter()
        .find(|id| !letters[..2].iter().any(|l| l["message_id"] == id.as_str()))
        .expect("the third id")
        .clone();
    let one = stdout_json(
        &cli_async(args(&[
            "dlq",
            "replay",
            queue.as_str(),
            "--message-id",
            left.as_str(),
        ]))
        .await,
    );
    assert_eq!(one["replayed"], 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while handled_ids().len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "3 events handled after the replays"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut handled = handled_ids();
    handled.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(handled, want, "each event handled once");
    assert!(
        seen.lock()
            .expect("lock")
            .iter()
            .all(|(_, attempt)| *attempt == 1),
        "fresh attempts"
    );
    assert_eq!(
        stdout_json(&cli_async(args(&["dlq", "purge", queue.as_str()])).await)["purged"],
        0
    );
    let unknown = cli_async(args(&["dlq", "list", "no_such_queue_here"])).await;
    assert_fails(&unknown, 1, "dlq_no_such_queue_here");

    running.stop().await;
    let _ = supervisor.send(StopBroker).await;
    for q in [queue.clone(), dlq, format!("{exchange}.retry.100ms")] {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for ex in [
        exchange.clone(),
        format!("{exchange}.dlx"),
        format!("{exchange}.retry.100ms"),
        format!("{exchange}.unroutable"),
    ] {
        let _ = channel
            .exchange_delete(
                ex.as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = channel
        .queue_delete(
            format!("{exchange}.unroutable").as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await;
    let _ = conn.close(200, "done".into()).await;
}
