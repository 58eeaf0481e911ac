//! The paced emitter: [`Emitter`] runs tasks that commit flow events at a fixed rate
//! ([`EmitPlan`]), retrying a failed transaction with the same events until it commits, so
//! the ids of its [`EmitReport`] are exactly the events whose commit succeeded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_outbox::{Outbox, OutboxEvent};
use sea_orm::{DatabaseConnection, TransactionTrait};
use uuid::Uuid;

use super::rig::FaultRig;

/// The shape of an emitter's flow.
#[derive(Debug, Clone, Copy)]
pub struct EmitPlan {
    /// Events per second, all tasks together.
    pub rate: u32,
    /// Concurrent tasks (connections) emitting.
    pub tasks: u32,
    /// Events per transaction.
    pub per_txn: u32,
    /// Stop by themselves after this many events; `None`: until [`Emitter::stop`].
    pub limit: Option<u64>,
}

/// Tasks that commit events at a fixed pace, like an application emitting as it serves
/// requests. A failed begin, insert or commit is retried with the same events (same message
/// ids) until it commits, so every event whose commit succeeded is counted, and a commit that
/// failed on the client but succeeded on the server shows up as a duplicate, never as an
/// unknown id.
pub struct Emitter {
    stop: Arc<AtomicBool>,
    /// Each task's committed ids and when it ended.
    tasks: Vec<tokio::task::JoinHandle<(Vec<Uuid>, Instant)>>,
    committed: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    started: Instant,
}

/// What an [`Emitter`] committed.
#[derive(Debug)]
pub struct EmitReport {
    /// Ids whose transaction committed.
    pub committed: Vec<Uuid>,
    /// Attempts that failed and were retried.
    pub failed_attempts: u64,
    /// Committed events per second.
    pub rate: f64,
}

/// How long one transaction may keep failing before the emitter gives up (a panic).
const EMIT_PATIENCE: Duration = Duration::from_secs(90);

impl Emitter {
    /// Starts emitting `plan.rate` flow events a second ([`FaultRig::flow_event`]).
    pub fn start(db: DatabaseConnection, outbox: Outbox, plan: EmitPlan) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let per_second = f64::from(plan.rate.max(1)) / f64::from(plan.per_txn.max(1));
        let period = Duration::from_secs_f64(f64::from(plan.tasks.max(1)) / per_second);
        let handles = (0..plan.tasks.max(1))
            .map(|_| {
                let task = EmitTask {
                    db: db.clone(),
                    outbox: outbox.clone(),
                    stop: stop.clone(),
                    committed: committed.clone(),
                    failures: failures.clone(),
                    next: next.clone(),
                    per_txn: u64::from(plan.per_txn.max(1)),
                    limit: plan.limit.unwrap_or(u64::MAX),
                };
                tokio::spawn(task.run(period))
            })
            .collect();
        Self {
            stop,
            tasks: handles,
            committed,
            failures,
            started: Instant::now(),
        }
    }

    /// Events committed so far.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Attempts that failed so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Whether every task has ended (a limited plan reached its limit).
    pub fn is_done(&self) -> bool {
        self.tasks.iter().all(tokio::task::JoinHandle::is_finished)
    }

    /// Stops after each task's transaction in progress has committed.
    pub async fn stop(self) -> EmitReport {
        self.stop.store(true, Ordering::SeqCst);
        self.join().await
    }

    /// Waits for the tasks to end by themselves (a limited plan).
    pub async fn join(self) -> EmitReport {
        let mut committed = Vec::new();
        let mut ended = self.started;
        for task in self.tasks {
            let (ids, at) = task.await.expect("an emitter task panicked");
            committed.extend(ids);
            ended = ended.max(at);
        }
        let rate = committed.len() as f64 / (ended - self.started).as_secs_f64().max(0.001);
        EmitReport {
            committed,
            failed_attempts: self.failures.load(Ordering::Relaxed),
            rate,
        }
    }
}

struct EmitTask {
    db: DatabaseConnection,
    outbox: Outbox,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    /// The next event number, shared by the tasks.
    next: Arc<AtomicU64>,
    per_txn: u64,
    limit: u64,
}

impl EmitTask {
    async fn run(self, period: Duration) -> (Vec<Uuid>, Instant) {
        let mut ids = Vec::new();
        // Pacing of the flow (a fixed rate), not synchronisation.
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while !self.stop.load(Ordering::SeqCst) {
            tick.tick().await;
            let first = self.next.fetch_add(self.per_txn, Ordering::Relaxed);
            let last = (first + self.per_txn).min(self.limit);
            if first >= last {
                break;
            }
            let events: Vec<OutboxEvent> = (first..last).map(FaultRig::flow_event).collect();
            ids.extend(self.commit(events).await);
            self.committed.fetch_add(last - first, Ordering::Relaxed);
        }
        (ids, Instant::now())
    }

    /// Commits `events` in one transaction, retrying the same events until it commits.
    async fn commit(&self, events: Vec<OutboxEvent>) -> Vec<Uuid> {
        let first_try = Instant::now();
        loop {
            match self.try_commit(events.clone()).await {
                Ok(ids) => return ids,
                Err(e) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    assert!(
                        first_try.elapsed() < EMIT_PATIENCE,
                        "an emit kept failing for {EMIT_PATIENCE:?}: {e}"
                    );
                    // Backoff while the database is away, not synchronisation.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn try_commit(&self, events: Vec<OutboxEvent>) -> Result<Vec<Uuid>, actix_outbox::Error> {
        let txn = self.db.begin().await?;
        let ids = if let [event] = events.as_slice() {
            vec![self.outbox.emit_event(&txn, event.clone()).await?]
        } else {
            self.outbox.emit_many(&txn, events).await?
        };
        txn.commit().await?;
        Ok(ids)
    }
}
