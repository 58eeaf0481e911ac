//! CPU time of the processes a scenario involves, from `/proc` (Linux; `None` elsewhere):
//! where the time per message goes, process by process.

use super::*;

/// Clock ticks per second of `/proc/<pid>/stat`'s `utime`/`stime` (`USER_HZ`, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// User + system CPU time of process `pid` (all its threads) so far, in ms.
pub(super) fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing paren.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1000.0 / TICKS_PER_S)
}

/// The CPU time (ms) of every live process whose command name is `comm`, summed.
pub(super) fn cpu_ms_of(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .filter_map(cpu_ms)
        .sum()
}

/// CPU time of the services (RabbitMQ's `beam.smp`, every `postgres` process) and of this
/// process, at one moment.
#[derive(Debug, Clone, Copy)]
pub(super) struct ServiceCpu {
    broker: f64,
    postgres: f64,
    own: f64,
}

impl ServiceCpu {
    pub(super) fn now() -> Self {
        Self {
            broker: cpu_ms_of("beam.smp"),
            postgres: cpu_ms_of("postgres"),
            own: cpu_ms(std::process::id()).unwrap_or(0.0),
        }
    }

    /// µs of CPU per message since `earlier`, per part, plus the parts given in `extra`
    /// (ms each, e.g. a relay process's own time); `bench` names this process's part.
    pub(super) fn per_message_since(
        &self,
        earlier: &Self,
        n: usize,
        bench: &str,
        extra: &[(&str, f64)],
    ) -> Value {
        let per = |ms: f64| ((ms * 1000.0 / n as f64) * 10.0).round() / 10.0;
        let mut parts = serde_json::Map::new();
        parts.insert("broker".into(), json!(per(self.broker - earlier.broker)));
        parts.insert(
            "postgres".into(),
            json!(per(self.postgres - earlier.postgres)),
        );
        parts.insert(bench.into(), json!(per(self.own - earlier.own)));
        let mut total = self.broker - earlier.broker + self.postgres - earlier.postgres + self.own
            - earlier.own;
        for (name, ms) in extra {
            parts.insert((*name).into(), json!(per(*ms)));
            total += ms;
        }
        parts.insert("total".into(), json!(per(total)));
        Value::Object(parts)
    }
}
