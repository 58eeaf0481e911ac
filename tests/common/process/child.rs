//! Child processes of a fault case: [`example_binary`] finds a built example (`relay`,
//! `fault_worker`) next to the running test or soak and warns when it is older than its
//! sources; [`ChildProcess`] starts, SIGKILLs, SIGTERMs and restarts one, with a log file per
//! generation, kills it when dropped and prints its log tail when the test is panicking.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The path of example `name` built in the same profile as the running program: tests run
/// from `target/<profile>/deps/`, examples live in `target/<profile>/examples/`.
///
/// Panics with the build command when it is missing; warns when a source is newer.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running program");
    let dir = exe.parent().expect("directory of the running program");
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("deps" | "examples") => dir.parent().expect("target/<profile>"),
        _ => dir,
    };
    let path = profile.join("examples").join(name);
    let release = if profile.ends_with("release") {
        " --release"
    } else {
        ""
    };
    assert!(
        path.is_file(),
        "{} is missing. Build the fault-matrix programs first:\n    cargo build --all-features{release} \
         --example relay --example fault_worker\n(a plain `cargo test --all-features` builds every example)",
        path.display()
    );
    warn_if_stale(&path, name, release);
    path
}

/// Prints a warning when a source the example is built from is newer than the binary (a
/// `cargo test --test fault_x` run does not rebuild examples).
fn warn_if_stale(binary: &Path, name: &str, release: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = modified(binary);
    let sources = [
        root.join("src"),
        root.join("actors").join("src"),
        root.join("examples").join(format!("{name}.rs")),
    ];
    if sources.iter().filter_map(|p| newest(p)).max() > built {
        eprintln!(
            "WARNING: {} is older than its sources; rebuild it: cargo build --all-features{release} --example {name}",
            binary.display()
        );
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn newest(path: &Path) -> Option<SystemTime> {
    let Ok(entries) = std::fs::read_dir(path) else {
        return modified(path);
    };
    entries.flatten().filter_map(|e| newest(&e.path())).max()
}

/// A child process that can be killed and started again; every generation writes stdout
/// and stderr to its own log file `<log_dir>/<name>.<generation>.log`.
///
/// Each generation gets `FAULT_WORKER_NAME=<name>.<generation>` in its environment, which
/// `fault_worker` writes into its records: the ledger tells which process handled what.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    program: PathBuf,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    child: Option<Child>,
    generation: u32,
}

impl ChildProcess {
    /// Starts `program` with `env` (added to this process's environment).
    pub fn start(name: &str, program: &Path, env: Vec<(String, String)>, log_dir: &Path) -> Self {
        let mut process = Self {
            name: name.to_owned(),
            program: program.to_owned(),
            env,
            log_dir: log_dir.to_owned(),
            child: None,
            generation: 0,
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        self.generation += 1;
        let path = self.log_path();
        let out = File::create(&path)
            .unwrap_or_else(|e| panic!("cannot create log {}: {e}", path.display()));
        let err = out.try_clone().expect("clone log file handle");
        let child = Command::new(&self.program)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("FAULT_WORKER_NAME", self.instance())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// `<name>.<generation>`: this generation's worker name and log file stem.
    pub fn instance(&self) -> String {
        format!("{}.{}", self.name, self.generation)
    }

    /// How many times the process was started.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The current generation's log file.
    pub fn log_path(&self) -> PathBuf {
        self.log_dir.join(format!("{}.log", self.instance()))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, then reap. No-op when not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM (a graceful stop); see [`wait_exit`](Self::wait_exit).
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends SIGSTOP: the process freezes as a hung host would (its sockets stay open).
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Sends SIGCONT after [`freeze`](Self::freeze).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = self.pid().expect("signal: the process is not running");
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("run kill -{name}: {e}"));
        assert!(status.success(), "kill -{name} {pid} failed: {status}");
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut().expect("wait_exit: not running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "{} did not exit within {timeout:?}; log tail:\n{}",
                self.instance(),
                self.tail(30)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM and wait for the exit: returns the status and how long the stop took.
    pub async fn stop(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        self.terminate();
        let status = self.wait_exit(timeout).await;
        (status, start.elapsed())
    }

    /// Kills the process if it runs, then starts the next generation.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether the current generation still runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Panics, with the log tail, when the current generation is no longer running.
    pub fn assert_running(&mut self) {
        assert!(
            self.is_running(),
            "{} is no longer running; log tail:\n{}",
            self.instance(),
            self.tail(40)
        );
    }

    /// Waits (bounded) until the current generation's log contains `needle`.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if log.contains(needle) {
                return;
            }
            assert!(
                self.is_running(),
                "{} exited before logging {needle:?}; log tail:\n{}",
                self.instance(),
                self.tail(40)
            );
            assert!(
                start.elapsed() < timeout,
                "{} did not log {needle:?} within {timeout:?}; log tail:\n{}",
                self.instance(),
                self.tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How often `needle` occurs in the logs of every generation.
    pub fn count_in_logs(&self, needle: &str) -> usize {
        (1..=self.generation)
            .map(|g| self.log_dir.join(format!("{}.{g}.log", self.name)))
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .map(|log| log.matches(needle).count())
            .sum()
    }

    /// The last `lines` lines of the current generation's log.
    pub fn tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ChildProcess {
    /// Never leaves a stray process; shows the log tail when a test fails.
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() && self.generation > 0 {
            eprintln!(
                "----- {} ({}), last lines -----\n{}",
                self.instance(),
                self.log_path().display(),
                self.tail(25)
            );
        }
    }
}
