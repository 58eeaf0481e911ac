//! One relay batch: claim due rows, publish them pipelined, await every confirm, settle.
//!
//! The actor only sequences batches; everything that touches the database and the broker
//! for one batch is here, and what each row's answer means is decided in `fate`.

use std::collections::HashSet;
use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use actix::Addr;
use futures_util::future::Either;

use actix_outbox::Result;

use actix_outbox::outbox_message::{Entity, Model};
use chrono::Utc;
use lapin::options::BasicPublishOptions;
use lapin::{Channel, PublisherConfirm};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, IsolationLevel, TransactionTrait,
};
use tracing::{Instrument, debug, info_span, warn};

use super::config::{Cleanup, RelayConfig};
use super::envelope;
use super::fate::{self, BatchReport, Fate};
use super::ordering::{self, Rounds};
use super::sql::RelaySql;
use super::stages::{Stage, StageTimer, due_lag};
use crate::broker::{self, ConnectionSupervisor, GetBrokerState};
use crate::exchange::{self, Answer, Completed, ReturnKey, resolve};

/// Runs one batch on `db` through `channel`.
///
/// PostgreSQL and MySQL: claim, publish and settle happen in one transaction holding the
/// claimed rows' locks (`SKIP LOCKED` keeps other relays off them). SQLite: rows are read outside any
/// transaction (one relay per file) and settled in a short write transaction, so emitting
/// applications are not blocked while the broker confirms.
///
/// # Errors
///
/// Database errors. Broker errors are not errors of the batch: they show up as
/// [`Fate::Unknown`] rows and in the report's `channel_error`.
pub(crate) async fn run_batch(
    db: &DatabaseConnection,
    publisher: &Publisher,
    config: &RelayConfig,
    sql: &RelaySql,
    limit: u32,
) -> Result<BatchReport> {
    let span = info_span!("relay_batch", table = %config.table(), claimed = tracing::field::Empty);
    async move {
        let mut t = StageTimer::new();
        let (report, lag) = match sql.backend() {
            DbBackend::Postgres | DbBackend::MySql => {
                let mysql = sql.backend() == DbBackend::MySql;
                // MySQL: READ COMMITTED, so InnoDB takes no gap locks for the claim's range
                // and applications keep inserting into the outbox while this batch holds its
                // rows across the broker's confirms (REPEATABLE READ would block them).
                let isolation = mysql.then_some(IsolationLevel::ReadCommitted);
                let txn = db.begin_with_config(isolation, None).await?;
                txn.execute_unprepared(&sql.lease(config.claim_lease()))
                    .await?;
                t.lap(Stage::Begin);
                let (rows, held) = claim(&txn, sql, limit).await?;
                t.lap(Stage::Claim);
                let lag = due_lag(&rows);
                let published = publish_in_order(publisher, config, &rows, &mut t).await;
                let mut report = settle(&txn, config, sql, &rows, published).await?;
                report.held_back += held;
                if let Some(end) = sql.lease_end() {
                    txn.execute_unprepared(end).await?;
                }
                t.lap(Stage::Settle);
                txn.commit().await?;
                t.lap(Stage::Commit);
                (report, lag)
            }
            _ => {
                let (rows, held) = claim(db, sql, limit).await?;
                t.lap(Stage::Claim);
                let lag = due_lag(&rows);
                let published = publish_in_order(publisher, config, &rows, &mut t).await;
                let txn = db.begin().await?;
                t.lap(Stage::Begin);
                let mut report = settle(&txn, config, sql, &rows, published).await?;
                report.held_back += held;
                t.lap(Stage::Settle);
                txn.commit().await?;
                t.lap(Stage::Commit);
                (report, lag)
            }
        };
        let (mut report, lag) = (report, lag);
        report.elapsed = Duration::from_micros(t.total_micros());
        report.claim_to_confirm =
            Duration::from_micros(t.micros(Stage::Publish) + t.micros(Stage::Confirm));
        report.due_lag = Duration::from_micros(lag);
        tracing::Span::current().record("claimed", report.claimed);
        if report.claimed > 0 {
            let us = |stage: Stage| t.micros(stage);
            debug!(
                sent = report.sent,
                refused = report.refused,
                released = report.released,
                held_back = report.held_back,
                due_lag_us = lag,
                begin_us = us(Stage::Begin),
                claim_us = us(Stage::Claim),
                publish_us = us(Stage::Publish),
                confirm_us = us(Stage::Confirm),
                settle_us = us(Stage::Settle),
                commit_us = us(Stage::Commit),
                elapsed_us = t.total_micros(),
                "batch done"
            );
        }
        Ok(report)
    }
    .instrument(span)
    .await
}

/// Claims up to `limit` due rows, and holds back those whose ordering key has an older row
/// elsewhere: returns the rows to publish, in the order to publish them, and how many were
/// held back.
async fn claim<C: ConnectionTrait>(
    db: &C,
    sql: &RelaySql,
    limit: u32,
) -> Result<(Vec<Model>, usize)> {
    let stmt = sql.claim(limit, Utc::now());
    let rows = Entity::find().from_raw_sql(stmt).all(db).await?;
    ordering::hold_back(db, sql, rows).await
}

/// Publishes `rows` round by round (see `ordering`): the rows of one ordering key one at a
/// time, each after the previous one's confirm; all other rows at once, as [`publish`] does.
async fn publish_in_order(
    publisher: &Publisher,
    config: &RelayConfig,
    rows: &[Model],
    timer: &mut StageTimer,
) -> PublishedBatch {
    let rounds = Rounds::of(rows);
    if rounds.len() <= 1 {
        return publish(publisher, config, rows, timer).await;
    }
    let mut all = PublishedBatch {
        fates: vec![Fate::Unknown; rows.len()],
        channel_error: None,
        broke: false,
    };
    let mut stopped: HashSet<&str> = HashSet::new();
    for round in rounds {
        let (go, held): (Vec<usize>, Vec<usize>) = round.into_iter().partition(|&i| {
            rows[i]
                .ordering_key
                .as_deref()
                .is_none_or(|k| !stopped.contains(k))
        });
        for i in held {
            all.fates[i] = Fate::HeldBack;
        }
        if go.is_empty() {
            continue;
        }
        let batch: Vec<Model> = go.iter().map(|&i| rows[i].clone()).collect();
        let published = publish(publisher, config, &batch, timer).await;
        for (&i, fate) in go.iter().zip(published.fates) {
            if !matches!(fate, Fate::Sent | Fate::DroppedUnroutable)
                && let Some(key) = rows[i].ordering_key.as_deref()
            {
                stopped.insert(key);
            }
            all.fates[i] = fate;
        }
        all.broke |= published.broke;
        if let Some(why) = published.channel_error {
            // The channel cannot be trusted any more: the rest stay unknown (released).
            all.channel_error = Some(why);
            break;
        }
    }
    all
}

/// The outcome of publishing a batch: one fate per row, plus a channel error if any.
pub(crate) struct PublishedBatch {
    fates: Vec<Fate>,
    channel_error: Option<String>,
    /// The channel failed (not merely a deadline passed) while publishes were in flight.
    broke: bool,
}

/// Publishes every row, pipelined, then awaits the writes and the confirms under one deadline
/// (`confirm_timeout`). Never returns early on a broker error: rows it could not confirm are
/// [`Fate::Unknown`].
pub(crate) async fn publish(
    publisher: &Publisher,
    config: &RelayConfig,
    rows: &[Model],
    timer: &mut StageTimer,
) -> PublishedBatch {
    let mut fates = vec![Fate::Unknown; rows.len()];
    // One PRODUCER span per row (feature `otel`), from its hand-off to the batch's confirms.
    let spans = super::trace::producer_spans(config, rows);
    let queued = queue_publishes(publisher, config, rows, &spans, &mut fates).await;
    // One deadline for the whole exchange with the broker: a broker that blocks publishers
    // (a resource alarm) stops reading, lapin's writes then never finish, and without it the
    // batch would hold its transaction (and its row locks) open for as long as the alarm lasts.
    let deadline = tokio::time::Instant::now() + config.confirm_timeout;
    let (pending, failed_write) = await_writes(queued, deadline, config).await;
    let mut broke = failed_write.as_ref().is_some_and(Answer::broke);
    let mut channel_error = failed_write.and_then(|a| a.channel_error().map(str::to_owned));
    timer.lap(Stage::Publish);
    let (published, completed): (Vec<usize>, Vec<Completed>) =
        await_confirms(pending, deadline, config)
            .await
            .into_iter()
            .unzip();
    // Every confirm of this channel has completed now (the channel is this batch's alone), so
    // the returns they carried are all in: each row's answer is read against that set.
    let key_of = |j: usize| return_key(config, &rows[published[j]]);
    drop(spans); // the confirms are in: the PRODUCER spans end here
    for (&i, answer) in published.iter().zip(resolve(key_of, completed)) {
        if let Some(why) = answer.channel_error() {
            channel_error.get_or_insert_with(|| why.to_owned());
        }
        broke |= answer.broke();
        let fate = Fate::of(&answer, config.unroutable);
        if let Fate::Refused(reason) | Fate::Nacked(reason) = &fate {
            let row = &rows[i];
            warn!(message_id = %row.message_id, routing_key = %row.routing_key, %reason, "publish refused");
        }
        fates[i] = fate;
    }
    timer.lap(Stage::Confirm);
    PublishedBatch {
        fates,
        channel_error,
        broke,
    }
}

/// Queues every publishable row's message, in row order; rows the broker cannot take get
/// [`Fate::Unpublishable`] in `fates`.
///
/// lapin's `basic_publish` queues a message's frames (and takes its delivery tag) as soon as
/// it is first polled, then waits until its I/O thread has written them. Awaiting each in turn
/// would cost one hand-over to that thread per message; instead every publish is polled once,
/// so the frames of the whole batch are queued before the first write is awaited.
async fn queue_publishes<'a>(
    publisher: &'a Publisher,
    config: &'a RelayConfig,
    rows: &'a [Model],
    spans: &[tracing::Span],
    fates: &mut [Fate],
) -> Vec<(
    usize,
    impl Future<Output = lapin::Result<PublisherConfirm>> + Unpin + 'a,
)> {
    let now = Utc::now();
    let mut queued = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        // Short strings first: building the properties of a row that breaks them would panic.
        let props = match envelope::unpublishable(row, config.max_message_bytes) {
            None => envelope::properties(row, now),
            Some(reason) => {
                fates[i] = park(row, reason);
                continue;
            }
        };
        if let Some(reason) = envelope::oversize_properties(&props, publisher.frame_max) {
            fates[i] = park(row, reason);
            continue;
        }
        let mut publish = Box::pin(publisher.channel.basic_publish(
            config.exchange().into(),
            row.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &row.payload,
            props,
        ));
        let first = std::future::poll_fn(|cx| {
            let mut poll = || publish.as_mut().poll(cx);
            Poll::Ready(match spans.get(i) {
                Some(span) => span.in_scope(poll),
                None => poll(),
            })
        })
        .await;
        let failed = matches!(first, Poll::Ready(Err(_)));
        queued.push((
            i,
            match first {
                Poll::Ready(done) => Either::Left(std::future::ready(done)),
                Poll::Pending => Either::Right(publish),
            },
        ));
        if failed {
            break; // the channel is gone: the rest stay unpublished (Unknown)
        }
    }
    queued
}

/// The fate of a row the broker cannot take as it is.
fn park(row: &Model, reason: String) -> Fate {
    warn!(message_id = %row.message_id, %reason, "row cannot be published; parking it");
    Fate::Unpublishable(reason)
}

/// Awaits the writes in order until `deadline`; returns the confirms to wait for and, if a
/// write failed or the deadline passed, that answer (the rest stay [`Fate::Unknown`]).
async fn await_writes(
    queued: Vec<(
        usize,
        impl Future<Output = lapin::Result<PublisherConfirm>> + Unpin,
    )>,
    deadline: tokio::time::Instant,
    config: &RelayConfig,
) -> (Vec<(usize, PublisherConfirm)>, Option<Answer>) {
    let mut pending = Vec::with_capacity(queued.len());
    for (i, written) in queued {
        match tokio::time::timeout_at(deadline, written).await {
            Ok(Ok(confirm)) => pending.push((i, confirm)),
            Ok(Err(e)) => return (pending, Some(Answer::Failed(e.to_string()))),
            Err(_) => {
                let why = format!(
                    "the broker took no publishes for {:?} (is it blocking publishers?)",
                    config.confirm_timeout
                );
                return (pending, Some(Answer::Unknown(why)));
            }
        }
    }
    (pending, None)
}

/// Awaits each confirm until `deadline`, in publish order.
async fn await_confirms(
    pending: Vec<(usize, PublisherConfirm)>,
    deadline: tokio::time::Instant,
    config: &RelayConfig,
) -> Vec<(usize, Completed)> {
    let mut completed = Vec::with_capacity(pending.len());
    for (i, confirm) in pending {
        let waited = tokio::time::timeout_at(deadline, confirm).await;
        completed.push((i, Completed::read(waited, config.confirm_timeout)));
    }
    completed
}

/// How a row's message is recognised among the channel's returns.
fn return_key(config: &RelayConfig, row: &Model) -> ReturnKey {
    ReturnKey::new(
        config.exchange(),
        &row.routing_key,
        &row.message_id.to_string(),
    )
}

/// Applies the fates: finish sent rows in one statement, record each refusal, leave unknown
/// rows untouched.
async fn settle<C: ConnectionTrait>(
    db: &C,
    config: &RelayConfig,
    sql: &RelaySql,
    rows: &[Model],
    published: PublishedBatch,
) -> Result<BatchReport> {
    let now = Utc::now();
    let mut fates = published.fates;
    if published.broke && rows.len() == 1 {
        let why = published
            .channel_error
            .as_deref()
            .unwrap_or("the channel failed");
        fate::charge_break(&mut fates, why);
    }
    let mut plan = fate::plan(rows, &fates, config, now);
    plan.report.channel_error = published.channel_error;
    plan.report.broke = published.broke;
    for f in &plan.failures {
        db.execute_raw(sql.record_failure(f.id, &f.reason, f.retry_in, f.park, now))
            .await?;
    }
    if !plan.finished.is_empty() {
        let keep = matches!(config.cleanup, Cleanup::Keep { .. });
        let finish = sql.finish(&plan.finished, keep, now);
        if finish.values.is_none() {
            db.execute_unprepared(&finish.sql).await?;
        } else {
            db.execute_raw(finish).await?;
        }
    }
    Ok(plan.report)
}

/// How long until the earliest unsent row is due (`None` when there is none).
pub(crate) async fn next_due(
    db: &DatabaseConnection,
    sql: &RelaySql,
) -> Result<Option<std::time::Duration>> {
    let row = db.query_one_raw(sql.next_due(Utc::now())).await?;
    let Some(row) = row else { return Ok(None) };
    let next: Option<chrono::DateTime<Utc>> = row.try_get("", "next")?;
    let now: chrono::DateTime<Utc> = row.try_get("", "db_now")?;
    Ok(next.map(|next| (next - now).to_std().unwrap_or_default()))
}

/// A batch's publishing channel and what the broker allows on it.
#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    /// Confirm mode, topology declared.
    pub(crate) channel: Channel,
    /// The connection's negotiated `frame_max` (0: no limit).
    pub(crate) frame_max: u32,
}

/// Gets a confirm-mode channel from the supervisor (bounded by the confirm timeout),
/// declares (or checks) the exchange, and learns the connection's `frame_max`.
pub(crate) async fn open_channel(
    supervisor: &Addr<ConnectionSupervisor>,
    config: &RelayConfig,
) -> Result<Publisher> {
    let declare = || async {
        let channel = broker::channel(supervisor, config.confirm_timeout).await?;
        let declared = exchange::declare_exchange(
            &channel,
            config.exchange(),
            config.unroutable,
            config.topology,
        )
        .await;
        declared.map(|()| channel)
    };
    let channel = match declare().await {
        // An unroutable store of an earlier version: noted, and declared as it is.
        Err(e) if exchange::note_legacy_store(&e, config.exchange()) => declare().await?,
        other => other?,
    };
    let frame_max = supervisor.send(GetBrokerState).await?.frame_max;
    Ok(Publisher { channel, frame_max })
}
