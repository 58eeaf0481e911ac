//! One relay batch: claim due rows, publish them pipelined, await every confirm, settle.
//!
//! The actor only sequences batches; everything that touches the database and the broker
//! for one batch is here.

use std::future::Future;
use std::task::Poll;
use std::time::Instant;

use futures_util::future::Either;

use actix_outbox::Result;
use actix_outbox::outbox_message::{Entity, Model};
use chrono::Utc;
use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use lapin::{Channel, PublisherConfirm};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, TransactionTrait};
use tracing::{Instrument, debug, info_span, warn};

use crate::envelope;
use crate::relay_config::{Cleanup, RelayConfig, Unroutable};
use crate::relay_sql::RelaySql;

/// What happened to one published row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Confirmed by the broker: delete or mark sent.
    Sent,
    /// Returned as unroutable in drop mode: counted, then treated as sent.
    DroppedUnroutable,
    /// The broker refused it (nack, or unroutable with no alternate route): one more attempt.
    Refused(String),
    /// The broker cannot take the row as it is (see [`envelope::unpublishable`]): parked at once,
    /// with the reason, for an operator to fix.
    Unpublishable(String),
    /// Unknown (channel broke, confirm timed out, never published): the row is released
    /// untouched and goes out again later.
    Unknown,
}

/// Counts of one batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct BatchReport {
    pub(crate) claimed: usize,
    pub(crate) sent: usize,
    pub(crate) dropped_unroutable: usize,
    pub(crate) refused: usize,
    pub(crate) parked: usize,
    pub(crate) expired: usize,
    pub(crate) released: usize,
    /// Why the channel can no longer be used, if it broke during the batch.
    pub(crate) channel_error: Option<String>,
}

/// Runs one batch on `db` through `channel`.
///
/// PostgreSQL: claim, publish and settle happen in one transaction holding the claimed rows'
/// locks (`SKIP LOCKED` keeps other relays off them). SQLite: rows are read outside any
/// transaction (one relay per file) and settled in a short write transaction, so emitting
/// applications are not blocked while the broker confirms.
///
/// # Errors
///
/// Database errors. Broker errors are not errors of the batch: they show up as
/// [`Fate::Unknown`] rows and [`BatchReport::channel_error`].
pub(crate) async fn run_batch(
    db: &DatabaseConnection,
    channel: &Channel,
    config: &RelayConfig,
    sql: &RelaySql,
) -> Result<BatchReport> {
    let span = info_span!("relay_batch", table = %config.table(), claimed = tracing::field::Empty);
    async move {
        let mut t = StageTimer::new();
        let (report, lag) = match sql.backend() {
            DbBackend::Postgres => {
                let txn = db.begin().await?;
                t.lap(Stage::Begin);
                let rows = claim(&txn, config, sql).await?;
                t.lap(Stage::Claim);
                let lag = due_lag(&rows);
                let published = publish(channel, config, &rows, &mut t).await;
                let report = settle(&txn, config, sql, &rows, published).await?;
                t.lap(Stage::Settle);
                txn.commit().await?;
                t.lap(Stage::Commit);
                (report, lag)
            }
            _ => {
                let rows = claim(db, config, sql).await?;
                t.lap(Stage::Claim);
                let lag = due_lag(&rows);
                let published = publish(channel, config, &rows, &mut t).await;
                let txn = db.begin().await?;
                t.lap(Stage::Begin);
                let report = settle(&txn, config, sql, &rows, published).await?;
                t.lap(Stage::Settle);
                txn.commit().await?;
                t.lap(Stage::Commit);
                (report, lag)
            }
        };
        tracing::Span::current().record("claimed", report.claimed);
        if report.claimed > 0 {
            let us = |stage: Stage| t.micros(stage);
            debug!(
                sent = report.sent,
                refused = report.refused,
                released = report.released,
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

async fn claim<C: ConnectionTrait>(
    db: &C,
    config: &RelayConfig,
    sql: &RelaySql,
) -> Result<Vec<Model>> {
    let stmt = sql.claim(config.batch_size, Utc::now());
    Ok(Entity::find().from_raw_sql(stmt).all(db).await?)
}

/// The stages of a batch, timed for the `batch done` debug event.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stage {
    /// `BEGIN` (PostgreSQL: before the claim; SQLite: the settling transaction).
    Begin,
    /// The claiming `SELECT`.
    Claim,
    /// Handing every publish to the channel.
    Publish,
    /// Waiting for the broker's confirms.
    Confirm,
    /// Deleting, marking and recording failures.
    Settle,
    /// `COMMIT`.
    Commit,
}

/// Time spent per [`Stage`]: each lap books the time since the previous one.
#[derive(Debug)]
pub(crate) struct StageTimer {
    started: Instant,
    last: Instant,
    micros: [u64; 6],
}

impl StageTimer {
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            micros: [0; 6],
        }
    }

    /// Books the time since the previous lap to `stage`.
    pub(crate) fn lap(&mut self, stage: Stage) {
        let now = Instant::now();
        self.micros[stage as usize] += micros(now - self.last);
        self.last = now;
    }

    fn micros(&self, stage: Stage) -> u64 {
        self.micros[stage as usize]
    }

    fn total_micros(&self) -> u64 {
        micros(self.started.elapsed())
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// How long the longest-waiting row of a batch had been due when it was claimed, in µs (by
/// this host's clock against the row's `send_after`; meaningful when both share a clock).
fn due_lag(rows: &[Model]) -> u64 {
    rows.iter().map(|r| r.send_after).min().map_or(0, |due| {
        u64::try_from((Utc::now() - due).num_microseconds().unwrap_or(0)).unwrap_or(0)
    })
}

/// The outcome of publishing a batch: one fate per row, plus a channel error if any.
pub(crate) struct Published {
    fates: Vec<Fate>,
    channel_error: Option<String>,
}

/// Publishes every row (pipelined: all frames first), then awaits the writes and the confirms
/// in order under one deadline (`confirm_timeout`). Never returns early on a broker error:
/// rows it could not confirm are [`Fate::Unknown`].
///
/// lapin's `basic_publish` queues a message's frames (and takes its delivery tag) as soon as it
/// is first polled, then waits until its I/O thread has written them. Awaiting each in turn
/// would cost one hand-over to that thread per message; instead every publish is polled once,
/// in row order, so the frames of the whole batch are queued before the first write is awaited.
pub(crate) async fn publish(
    channel: &Channel,
    config: &RelayConfig,
    rows: &[Model],
    timer: &mut StageTimer,
) -> Published {
    let now = Utc::now();
    let exchange = config.exchange();
    let mut fates = vec![Fate::Unknown; rows.len()];
    // (row index, the publish being written)
    let mut queued = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        if let Some(reason) = envelope::unpublishable(row, config.max_message_bytes) {
            warn!(message_id = %row.message_id, %reason, "row cannot be published; parking it");
            fates[i] = Fate::Unpublishable(reason);
            continue;
        }
        let mut publish = Box::pin(channel.basic_publish(
            exchange.into(),
            row.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &row.payload,
            envelope::properties(row, now),
        ));
        let first = std::future::poll_fn(|cx| Poll::Ready(publish.as_mut().poll(cx))).await;
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
    // One deadline for the whole exchange with the broker: a broker that blocks publishers
    // (a resource alarm) stops reading, lapin's writes then never finish, and without it the
    // batch would hold its transaction (and its row locks) open for as long as the alarm lasts.
    let deadline = tokio::time::Instant::now() + config.confirm_timeout;
    let mut pending: Vec<(usize, PublisherConfirm)> = Vec::with_capacity(queued.len());
    let mut channel_error = None;
    for (i, written) in queued {
        match tokio::time::timeout_at(deadline, written).await {
            Ok(Ok(confirm)) => pending.push((i, confirm)),
            Ok(Err(e)) => {
                channel_error = Some(e.to_string());
                break;
            }
            Err(_) => {
                channel_error = Some(format!(
                    "the broker took no publishes for {:?} (is it blocking publishers?)",
                    config.confirm_timeout
                ));
                break;
            }
        }
    }
    timer.lap(Stage::Publish);
    for (i, confirm) in pending {
        let row = &rows[i];
        let fate = match tokio::time::timeout_at(deadline, confirm).await {
            Ok(Ok(confirmation)) => fate_of(confirmation, config),
            Ok(Err(e)) => {
                channel_error.get_or_insert_with(|| e.to_string());
                Fate::Unknown
            }
            Err(_) => {
                channel_error.get_or_insert_with(|| {
                    format!("no confirm within {:?}", config.confirm_timeout)
                });
                Fate::Unknown
            }
        };
        if let Fate::Refused(reason) = &fate {
            warn!(message_id = %row.message_id, routing_key = %row.routing_key, %reason, "publish refused");
        }
        fates[i] = fate;
    }
    timer.lap(Stage::Confirm);
    Published {
        fates,
        channel_error,
    }
}

fn fate_of(confirmation: Confirmation, config: &RelayConfig) -> Fate {
    match confirmation {
        Confirmation::Ack(None) => Fate::Sent,
        Confirmation::Ack(Some(_)) if config.unroutable == Unroutable::Drop => {
            Fate::DroppedUnroutable
        }
        Confirmation::Ack(Some(_)) => Fate::Refused(
            "unroutable: no queue is bound for this routing key and the alternate exchange \
             did not take it"
                .to_owned(),
        ),
        Confirmation::Nack(_) => Fate::Refused("nacked by the broker".to_owned()),
        Confirmation::NotRequested => Fate::Unknown,
    }
}

/// Applies the fates: finish sent rows in one statement, record each refusal, leave unknown
/// rows untouched.
async fn settle<C: ConnectionTrait>(
    db: &C,
    config: &RelayConfig,
    sql: &RelaySql,
    rows: &[Model],
    published: Published,
) -> Result<BatchReport> {
    let now = Utc::now();
    let mut report = BatchReport {
        claimed: rows.len(),
        channel_error: published.channel_error,
        ..BatchReport::default()
    };
    let mut done = Vec::with_capacity(rows.len());
    for (row, fate) in rows.iter().zip(&published.fates) {
        match fate {
            Fate::Sent | Fate::DroppedUnroutable => {
                done.push(row.id);
                report.sent += usize::from(*fate == Fate::Sent);
                report.expired += usize::from(envelope::is_expired(row, now));
                if *fate == Fate::DroppedUnroutable {
                    report.dropped_unroutable += 1;
                    warn!(message_id = %row.message_id, routing_key = %row.routing_key, "unroutable message dropped (Unroutable::Drop)");
                }
            }
            Fate::Refused(reason) => {
                let attempts = u32::try_from(row.attempts).unwrap_or(0).saturating_add(1);
                let park = attempts >= config.max_attempts;
                let retry_in = config.retry_backoff.delay_with_jitter(attempts - 1);
                db.execute_raw(sql.record_failure(row.id, reason, retry_in, park, now))
                    .await?;
                report.refused += 1;
                if park {
                    report.parked += 1;
                    warn!(message_id = %row.message_id, attempts, %reason, "row parked after too many refused publishes");
                }
            }
            Fate::Unpublishable(reason) => {
                let no_retry = std::time::Duration::ZERO;
                db.execute_raw(sql.record_failure(row.id, reason, no_retry, true, now))
                    .await?;
                report.refused += 1;
                report.parked += 1;
            }
            Fate::Unknown => report.released += 1,
        }
    }
    if !done.is_empty() {
        let keep = matches!(config.cleanup, Cleanup::Keep { .. });
        let finish = sql.finish(&done, keep, now);
        if finish.values.is_none() {
            db.execute_unprepared(&finish.sql).await?;
        } else {
            db.execute_raw(finish).await?;
        }
    }
    Ok(report)
}

/// Purges sent rows older than the retention (keep mode); returns how many went.
pub(crate) async fn purge(
    db: &DatabaseConnection,
    config: &RelayConfig,
    sql: &RelaySql,
) -> Result<u64> {
    let Cleanup::Keep { retention } = config.cleanup else {
        return Ok(0);
    };
    let result = db
        .execute_raw(sql.purge(retention, 1_000, Utc::now()))
        .await?;
    Ok(result.rows_affected())
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
