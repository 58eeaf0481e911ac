//! The `actix-outbox` command against real PostgreSQL and RabbitMQ (feature `cli`; the
//! services' URLs come from `DATABASE_URL` and `AMQP_URL`, as `scripts/test` sets them). Each
//! test uses a table, exchange and queue of its own.
#![cfg(feature = "cli")]
#![allow(missing_docs)]

use std::process::{Command, Output};

use actix_outbox::{Outbox, TableName, ddl};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sea_orm::{ConnectionTrait, Database, DbBackend};
use serde_json::Value;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: the CLI tests need the services (run scripts/test, or scripts/services and export its URLs)")
    })
}

fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}_{}", &id[id.len() - 12..])
}

/// Runs the command with `args` (and the services' URLs in its environment).
fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_actix-outbox"))
        .args(args)
        .env("DATABASE_URL", env("DATABASE_URL"))
        .env("AMQP_URL", env("AMQP_URL"))
        .output()
        .expect("run actix-outbox")
}

fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// A failure: exit code `code`, one line on stderr, no panic, no password.
fn assert_fails(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("secretpw"), "a password in {stderr:?}");
    if code == 1 {
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr:?}");
    }
}

#[test]
fn ddl_prints_what_setup_runs() {
    let table = TableName::new("cli_ddl").expect("name");
    let out = cli(&["ddl", "--backend", "sqlite", "--table", "cli_ddl", "--json"]);
    let printed: Vec<String> = serde_json::from_value(stdout_json(&out)).expect("strings");
    assert_eq!(printed, ddl(DbBackend::Sqlite, &table).expect("ddl"));
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
