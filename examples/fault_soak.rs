//! The fault soak: N events through separate relay and worker processes while the broker is
//! restarted and a relay and a worker are SIGKILLed at random moments. At the end it prints
//! `emitted / handled distinct / duplicates / lost / max latency` and exits non-zero on any
//! loss (or any other failed end-of-run check).
//!
//! ```text
//! scripts/soak                          # 1,000,000 events (release build, services started)
//! scripts/soak --messages 20000         # a quick run
//! ```
//!
//! Flags (defaults in brackets): `--messages` [1000000], `--rate` events/s [2000],
//! `--per-txn` events per emitting transaction [10], `--tasks` emitting tasks [8],
//! `--relays` [2], `--workers` [2], `--batch` relay batch size [500], `--prefetch` [200],
//! `--fault-every` mean seconds between faults [20, and at most a quarter of the expected
//! emitting time], `--outage` broker outage seconds [4],
//! `--seed` [from the clock], `--drain-timeout` seconds [900].
//!
//! The first three faults are one of each kind in random order (broker `stop_app` /
//! `start_app`, SIGKILL of a random relay, SIGKILL of a random worker, each restarted at
//! once), then kinds are drawn at random; faults go on until every event is emitted and at
//! least those three happened. The default rate is what two workers sustain on a shared
//! 2-core machine (each handled event is one autocommit insert into the ledger); above it the
//! queue grows and latency with it. Needs `DATABASE_URL`, `AMQP_URL`, root (for
//! `rabbitmqctl`) and the `relay` and `fault_worker` examples built next to this one
//! (`scripts/soak` does all that). It shares the fault-matrix harness
//! (`tests/common/process/`), so it counts exactly like the tests do.
#![allow(clippy::print_stdout)]

#[path = "../tests/common/process/mod.rs"]
mod process;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use process::{EmitPlan, Emitter, FaultRig, Tally, WorkerOptions, restart_broker};

/// The command line, parsed.
#[derive(Debug)]
struct Args {
    messages: u64,
    rate: u32,
    per_txn: u32,
    tasks: u32,
    relays: usize,
    workers: usize,
    batch: u32,
    prefetch: u16,
    fault_every: Duration,
    outage: Duration,
    seed: u64,
    drain_timeout: Duration,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = Self {
            messages: 1_000_000,
            rate: 2_000,
            per_txn: 10,
            tasks: 8,
            relays: 2,
            workers: 2,
            batch: 500,
            prefetch: 200,
            fault_every: Duration::from_secs(20),
            outage: Duration::from_secs(4),
            seed: clock_seed(),
            drain_timeout: Duration::from_secs(900),
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
            let secs = |v: &str| v.parse::<u64>().map(Duration::from_secs);
            match flag.as_str() {
                "--messages" => args.messages = value.parse().map_err(|e| bad(&e))?,
                "--rate" => args.rate = value.parse().map_err(|e| bad(&e))?,
                "--per-txn" => args.per_txn = value.parse().map_err(|e| bad(&e))?,
                "--tasks" => args.tasks = value.parse().map_err(|e| bad(&e))?,
                "--relays" => args.relays = value.parse().map_err(|e| bad(&e))?,
                "--workers" => args.workers = value.parse().map_err(|e| bad(&e))?,
                "--batch" => args.batch = value.parse().map_err(|e| bad(&e))?,
                "--prefetch" => args.prefetch = value.parse().map_err(|e| bad(&e))?,
                "--fault-every" => args.fault_every = secs(&value).map_err(|e| bad(&e))?,
                "--outage" => args.outage = secs(&value).map_err(|e| bad(&e))?,
                "--seed" => args.seed = value.parse().map_err(|e| bad(&e))?,
                "--drain-timeout" => args.drain_timeout = secs(&value).map_err(|e| bad(&e))?,
                _ => return Err(format!("unknown flag {flag} (see examples/fault_soak.rs)")),
            }
        }
        if args.relays == 0 || args.workers == 0 || args.messages == 0 {
            return Err("--messages, --relays and --workers must be at least 1".to_owned());
        }
        Ok(args)
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// xorshift64*: enough randomness for fault timing, reproducible from `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A duration between half and one and a half times `mean`.
    fn around(&mut self, mean: Duration) -> Duration {
        let ms = mean.as_millis() as u64;
        Duration::from_millis(ms / 2 + self.below(ms + 1))
    }
}

/// The faults the soak injects.
#[derive(Debug, Clone, Copy)]
enum Fault {
    BrokerRestart,
    KillRelay,
    KillWorker,
}

const KINDS: [Fault; 3] = [Fault::BrokerRestart, Fault::KillRelay, Fault::KillWorker];

/// Picks the `n`-th fault: the first three are a shuffled set of all kinds.
fn pick(n: usize, first: &[Fault; 3], rng: &mut Rng) -> Fault {
    first
        .get(n)
        .copied()
        .unwrap_or_else(|| KINDS[rng.below(3) as usize])
}

async fn inject(fault: Fault, rig: &mut FaultRig, rng: &mut Rng, outage: Duration) -> String {
    match fault {
        Fault::BrokerRestart => {
            let down = rng.around(outage);
            restart_broker(down).await;
            format!("broker stop_app / {down:.1?} / start_app")
        }
        Fault::KillRelay => {
            let i = rng.below(rig.relays.len() as u64) as usize;
            rig.restart_relay(i).await;
            format!("SIGKILL relay{i}, restarted")
        }
        Fault::KillWorker => {
            let i = rng.below(rig.workers.len() as u64) as usize;
            rig.restart_worker(i).await;
            format!("SIGKILL worker{i}, restarted")
        }
    }
}

fn summary(tally: &Tally) -> String {
    let show = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{d:.2?}"));
    format!(
        "emitted {} / handled distinct {} / duplicates {} / lost {} / max latency {} (p99 {}, p50 {})",
        tally.emitted,
        tally.handled,
        tally.duplicates,
        tally.lost,
        show(tally.max_latency),
        show(tally.p99_latency),
        show(tally.p50_latency)
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("fault_soak: {e}");
            return ExitCode::from(2);
        }
    };
    println!("soak: {args:?}");
    let mut rng = Rng(args.seed.max(1));
    let mut first = KINDS;
    for i in (1..first.len()).rev() {
        first.swap(i, rng.below(i as u64 + 1) as usize);
    }

    let mut rig = FaultRig::new("soak").await;
    let options = WorkerOptions::default().with_prefetch(args.prefetch);
    for _ in 0..args.workers {
        rig.start_worker(&options).await;
    }
    for _ in 0..args.relays {
        rig.start_relay(args.batch).await;
    }
    let plan = EmitPlan {
        rate: args.rate,
        tasks: args.tasks,
        per_txn: args.per_txn,
        limit: Some(args.messages),
    };
    let started = Instant::now();
    let emitter = Emitter::start(rig.db.clone(), rig.outbox.clone(), plan);

    let expected = Duration::from_secs_f64(args.messages as f64 / f64::from(args.rate.max(1)));
    let every = args
        .fault_every
        .min(expected / 4)
        .max(Duration::from_secs(1));
    let mut faults = 0;
    let mut next_fault = Instant::now() + rng.around(every);
    let mut next_note = Instant::now();
    while !emitter.is_done() || faults < KINDS.len() {
        // The chaos schedule and progress lines (pacing, not synchronisation).
        tokio::time::sleep(Duration::from_millis(200)).await;
        if Instant::now() >= next_note {
            println!(
                "[{:>5.0}s] committed {:>8}  outbox {:>7}  handled {:>8}  faults {faults}",
                started.elapsed().as_secs_f64(),
                emitter.committed(),
                rig.outbox_rows().await,
                rig.done_rows().await
            );
            next_note += Duration::from_secs(10);
        }
        if Instant::now() >= next_fault {
            let fault = pick(faults, &first, &mut rng);
            let what = inject(fault, &mut rig, &mut rng, args.outage).await;
            faults += 1;
            println!(
                "[{:>5.0}s] fault {faults}: {what}",
                started.elapsed().as_secs_f64()
            );
            next_fault = Instant::now() + rng.around(every);
        }
    }
    let emitted = emitter.join().await;
    println!(
        "emitting done: {} events at {:.0}/s, {} failed emit attempts retried; {faults} faults in {:.0?}",
        emitted.committed.len(),
        emitted.rate,
        emitted.failed_attempts,
        started.elapsed()
    );

    let drained = Instant::now();
    let tally = rig.settle(&emitted.committed, args.drain_timeout).await;
    println!("drained in {:.1?}", drained.elapsed());
    println!("{}", summary(&tally));
    if tally.lost > 0 || tally.unexpected > 0 {
        eprintln!(
            "LOSS: {} events never handled (e.g. {:?}), {} unknown ids; child logs kept",
            tally.lost, tally.lost_sample, tally.unexpected
        );
        return ExitCode::FAILURE;
    }
    // The end-of-run checks of the fault matrix (queues empty, clean exits); panics on failure.
    let finish = rig
        .finish(&emitted.committed, &[], Duration::from_secs(300))
        .await;
    println!("after stopping every process: {}", summary(&finish.tally));
    println!(
        "soak passed: seed {}, {faults} faults, {:.0?} in total",
        args.seed,
        started.elapsed()
    );
    ExitCode::SUCCESS
}
