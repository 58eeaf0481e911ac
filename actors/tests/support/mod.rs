//! Helpers of the `actix-outbox` command's tests: run it with the services' URLs, read its
//! JSON, check its failures.
#![allow(dead_code)] // each test binary uses its own part

use std::process::{Command, Output};

use serde_json::Value;

pub(crate) fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: the CLI tests need the services (run scripts/test, or scripts/services and export its URLs)")
    })
}

pub(crate) fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}_{}", &id[id.len() - 12..])
}

/// Runs the command with `args` (and the services' URLs in its environment).
pub(crate) fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_actix-outbox"))
        .args(args)
        .env("DATABASE_URL", env("DATABASE_URL"))
        .env("AMQP_URL", env("AMQP_URL"))
        .output()
        .expect("run actix-outbox")
}

pub(crate) fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// A failure: exit code `code`, one line on stderr, no panic, no password.
pub(crate) fn assert_fails(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("secretpw"), "a password in {stderr:?}");
    if code == 1 {
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr:?}");
    }
}

/// Runs the command off the actix thread, so the worker keeps running meanwhile.
pub(crate) async fn cli_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&args)
    })
    .await
    .expect("blocking task")
}

/// `rabbitmqctl` with `args` (bounded by 120 s), its stdout; panics with its output on failure.
pub(crate) fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("120")
        .arg("rabbitmqctl")
        .args(args)
        .output()
        .expect("run rabbitmqctl (these tests need it on PATH, and root)");
    assert!(
        out.status.success(),
        "rabbitmqctl {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
