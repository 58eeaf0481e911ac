//! Service faults: [`rabbitmqctl`], [`restart_broker`] (which starts the broker app again
//! if abandoned half-way) and [`restart_postgres`], each bounded and waiting until the
//! service is back before returning, plus the system-tool runner they share.

use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::wait_for;

/// Runs `rabbitmqctl <args>` (bounded at 120 s; `RABBITMQ_NODENAME` picks the node) and
/// panics on failure.
pub async fn rabbitmqctl(args: &[&str]) {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let output = run_tool("rabbitmqctl", args.clone()).await;
    assert!(
        output.status.success(),
        "rabbitmqctl {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Stops the broker app for `outage` and starts it again. Returns the moment `start_app`
/// returned (the broker accepts connections again), after also waiting for
/// `await_startup` so the broker is fully back before the caller goes on.
pub async fn restart_broker(outage: Duration) -> DateTime<Utc> {
    rabbitmqctl(&["stop_app"]).await;
    let guard = StartAppOnDrop;
    // The deliberate outage itself, not a synchronisation wait.
    tokio::time::sleep(outage).await;
    rabbitmqctl(&["start_app"]).await;
    std::mem::forget(guard);
    let back = Utc::now();
    rabbitmqctl(&["await_startup"]).await;
    back
}

/// Starts the broker app again if a broker restart is abandoned half-way (a panic, a
/// cancelled test), so the next test binary does not find the broker stopped.
struct StartAppOnDrop;

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .args(["120", "rabbitmqctl", "start_app"])
            .status();
    }
}

/// Restarts the PostgreSQL cluster that serves `database_url`'s port (found with
/// `pg_lsclusters`), then waits (bounded) until `pg_isready` accepts connections again.
pub async fn restart_postgres(database_url: &str) {
    let port = url_port(database_url, 5432);
    let clusters = run_tool("pg_lsclusters", vec!["-h".to_owned()]).await;
    let listing = String::from_utf8_lossy(&clusters.stdout).into_owned();
    let (version, name) = listing
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.get(2) == Some(&port.to_string().as_str()))
        .map(|cols| (cols[0].to_owned(), cols[1].to_owned()))
        .unwrap_or_else(|| {
            panic!("no PostgreSQL cluster on port {port} in pg_lsclusters: {listing}")
        });
    let output = run_tool(
        "pg_ctlcluster",
        vec![version.clone(), name.clone(), "restart".to_owned()],
    )
    .await;
    assert!(
        output.status.success(),
        "pg_ctlcluster {version} {name} restart failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let args = vec![
        "-q".to_owned(),
        "-h".to_owned(),
        "127.0.0.1".to_owned(),
        "-p".to_owned(),
        port.to_string(),
    ];
    wait_for(
        "PostgreSQL to accept connections again",
        Duration::from_secs(60),
        || {
            let args = args.clone();
            async move {
                run_tool("pg_isready", args)
                    .await
                    .status
                    .success()
                    .then_some(())
            }
        },
    )
    .await;
}

/// Restarts the local MariaDB server (systemd's unit, else the init script, as
/// `scripts/services` starts it), then waits (bounded) until it answers on its socket again.
pub async fn restart_mariadb() {
    let systemd = std::path::Path::new("/run/systemd/system").is_dir();
    let output = if systemd {
        run_tool(
            "systemctl",
            vec!["restart".to_owned(), "mariadb".to_owned()],
        )
        .await
    } else {
        run_tool("/etc/init.d/mariadb", vec!["restart".to_owned()]).await
    };
    assert!(
        output.status.success(),
        "restarting MariaDB failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let args = vec![
        "--protocol=socket".to_owned(),
        "-u".to_owned(),
        "root".to_owned(),
        "-e".to_owned(),
        "SELECT 1".to_owned(),
    ];
    wait_for("MariaDB to answer again", Duration::from_secs(60), || {
        let args = args.clone();
        async move {
            run_tool("mariadb", args)
                .await
                .status
                .success()
                .then_some(())
        }
    })
    .await;
}

/// The port of a `scheme://user:pass@host:port/...` URL.
fn url_port(url: &str, default: u16) -> u16 {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split(['/', '?']).next().unwrap_or(host);
    host.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(default)
}

/// Runs a system tool under `timeout 120` off the async threads.
async fn run_tool(tool: &'static str, args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .arg("120")
            .arg(tool)
            .args(&args)
            .output()
    })
    .await
    .expect("spawn_blocking")
    .unwrap_or_else(|e| {
        panic!("cannot run {tool}: {e} (the fault matrix needs it on PATH, as root)")
    })
}
