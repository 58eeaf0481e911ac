//! Fault injection for service tests: a cuttable TCP proxy and `rabbitmqctl`.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy on 127.0.0.1 in front of `target`, which a test can cut (existing
/// connections reset, new ones refused) and restore: "the database is unreachable".
pub struct TcpProxy {
    pub port: u16,
    open: Arc<AtomicBool>,
    /// Bumped on every cut; connections end when it changes.
    cuts: watch::Sender<u64>,
}

impl TcpProxy {
    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let open = Arc::new(AtomicBool::new(true));
        let (cuts, _) = watch::channel(0_u64);
        let (open2, cuts2) = (open.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !open2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let mut cut = cuts2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { port, open, cuts }
    }

    /// Resets every open connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// `url` with its host and port replaced by this proxy's.
    pub fn rewrite(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("url with scheme");
        let (userinfo, hostpath) = match rest.rsplit_once('@') {
            Some((u, h)) => (format!("{u}@"), h),
            None => (String::new(), rest),
        };
        let path = hostpath.find('/').map_or("", |i| &hostpath[i..]);
        format!("{scheme}://{userinfo}127.0.0.1:{}{path}", self.port)
    }
}

/// `host:port` of a URL (for the proxy's target).
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").expect("url").1;
    let hostpath = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    hostpath.split(['/', '?']).next().expect("host").to_owned()
}

/// Runs `rabbitmqctl <args>` (bounded at 120 s) and fails the test on error.
pub async fn rabbitmqctl(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let shown = args.join(" ");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .arg("120")
            .arg("rabbitmqctl")
            .args(&args)
            .output()
    })
    .await
    .expect("spawn_blocking")
    .unwrap_or_else(|e| panic!("cannot run rabbitmqctl {shown}: {e} (broker fault tests need rabbitmqctl on PATH and root)"));
    assert!(
        output.status.success(),
        "rabbitmqctl {shown} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The broker's free-disk-space alarm, raised. While it is raised the broker blocks every
/// connection that publishes: their publishes stay unconfirmed, so a fault injected then is
/// sure to find a batch in flight. Cleared by [`DiskAlarm::clear`], or on drop (so a failing
/// test does not leave the broker blocking everyone).
pub struct DiskAlarm {
    raised: bool,
}

/// The broker's default free-disk limit (`scripts/services` does not change it).
const DEFAULT_DISK_FREE_LIMIT: &str = "50MB";

impl DiskAlarm {
    /// Raises the alarm: a free-disk limit no disk meets.
    pub async fn raise() -> Self {
        rabbitmqctl(&["set_disk_free_limit", "1000000000000000"]).await;
        Self { raised: true }
    }

    /// Clears the alarm (back to the default limit).
    pub async fn clear(mut self) {
        rabbitmqctl(&["set_disk_free_limit", DEFAULT_DISK_FREE_LIMIT]).await;
        self.raised = false;
    }
}

impl Drop for DiskAlarm {
    fn drop(&mut self) {
        if self.raised {
            let _ = Command::new("timeout")
                .args([
                    "60",
                    "rabbitmqctl",
                    "set_disk_free_limit",
                    DEFAULT_DISK_FREE_LIMIT,
                ])
                .output();
        }
    }
}

/// A deliberate outage of `d` (the fault itself, not a synchronisation wait).
pub async fn outage(d: Duration) {
    tokio::time::sleep(d).await;
}
