//! The three-node cluster of `scripts/cluster`: its URLs, stopping and starting a node, where
//! a quorum queue's leader is, and a watch of a growing count that measures its longest stall.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::process::Command;
use std::time::{Duration, Instant};

use super::require_env;

/// The AMQP URLs of the nodes, in node order (`AMQP_CLUSTER_URLS`, comma-separated).
pub fn cluster_urls() -> Vec<String> {
    let urls: Vec<String> = require_env("AMQP_CLUSTER_URLS")
        .split(',')
        .map(|u| u.trim().to_owned())
        .collect();
    assert_eq!(
        urls.len(),
        3,
        "AMQP_CLUSTER_URLS names three nodes (scripts/cluster up)"
    );
    urls
}

/// The URLs starting at node `first`, then round robin: a supervisor given them connects to
/// `first`.
pub fn urls_from(first: usize) -> String {
    let urls = cluster_urls();
    let n = urls.len();
    (0..n)
        .map(|i| urls[(first + i) % n].clone())
        .collect::<Vec<_>>()
        .join(",")
}

/// The Erlang node name of node `i` (0-based).
pub fn node_name(i: usize) -> String {
    format!("outbox{}@localhost", i + 1)
}

/// `rabbitmqctl -n <node i> args…` (bounded by 120 s); its stdout.
pub fn ctl(i: usize, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["120", "rabbitmqctl", "-q", "-n", &node_name(i)])
        .args(args)
        .output()
        .expect("run rabbitmqctl (cluster tests need it on PATH, and root)");
    assert!(
        out.status.success(),
        "rabbitmqctl -n {} {} failed: {}{}",
        node_name(i),
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A node stopped (its RabbitMQ application; the Erlang VM stays). Started again on drop, so
/// a failing test leaves the cluster whole for the next one.
pub struct NodeDown {
    node: usize,
    started: bool,
}

impl NodeDown {
    pub fn stop(node: usize) -> Self {
        ctl(node, &["stop_app"]);
        Self {
            node,
            started: false,
        }
    }

    /// Starts the node again and waits until it runs.
    pub fn start(mut self) {
        self.restart();
    }

    fn restart(&mut self) {
        if !self.started {
            self.started = true;
            ctl(self.node, &["start_app"]);
            ctl(self.node, &["await_startup"]);
        }
    }
}

impl Drop for NodeDown {
    fn drop(&mut self) {
        self.restart();
    }
}

/// The node (0-based) leading quorum queue `queue`, as node `ask` (a running one) sees it.
pub fn leader_of(queue: &str, ask: usize) -> usize {
    let listing = ctl(ask, &["list_queues", "name", "leader"]);
    let leader = listing
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(name, _)| *name == queue)
        .map(|(_, leader)| leader.trim().to_owned())
        .unwrap_or_else(|| panic!("queue {queue} in: {listing}"));
    (0..3)
        .find(|&i| node_name(i) == leader)
        .unwrap_or_else(|| panic!("leader {leader:?} is not a cluster node"))
}

/// Waits (bounded by `timeout`) until `count()` reaches `n`, sampling every 20 ms; returns
/// the longest time the count did not move.
pub async fn await_count_measuring_stall(
    what: &str,
    n: usize,
    timeout: Duration,
    count: impl Fn() -> usize,
) -> Duration {
    let deadline = Instant::now() + timeout;
    let (mut last, mut since, mut stall) = (count(), Instant::now(), Duration::ZERO);
    while last < n {
        assert!(
            Instant::now() < deadline,
            "{what}: {n} within {timeout:?}, have {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = count();
        if now != last {
            stall = stall.max(since.elapsed());
            (last, since) = (now, Instant::now());
        }
    }
    stall
}

/// Samples a growing count every 20 ms in the background and keeps the longest time it did
/// not move (for a run whose load never pauses, that is the longest stall).
pub struct StallWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: actix_rt::task::JoinHandle<Duration>,
}

impl StallWatch {
    pub fn start(count: impl Fn() -> usize + 'static) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = actix_rt::spawn(async move {
            let (mut last, mut since, mut stall) = (count(), Instant::now(), Duration::ZERO);
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let now = count();
                if now != last {
                    (last, since) = (now, Instant::now());
                }
                stall = stall.max(since.elapsed());
            }
            stall
        });
        Self { stop, task }
    }

    /// The longest stall seen so far; stops watching.
    pub async fn finish(self) -> Duration {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.expect("stall watch")
    }
}
