//! `emit` and `emit_many` against bare SQL in the same transactions.

use super::*;
/// One-event transactions (business row + emit) from N tasks for S seconds, against the same
/// transactions inserting the same row into a plain table with bare SQL.
pub(super) async fn emit(b: &Bench) -> Result<(), Error> {
    let db = &b.db;
    db.execute_unprepared("DROP TABLE IF EXISTS bench_emit_outbox, bench_plain, bench_users")
        .await?;
    actix_outbox::Outbox::new(actix_outbox::TableName::new("bench_emit_outbox")?)
        .setup(db)
        .await?;
    let backend = db.get_database_backend();
    let (users, plain, insert) = match backend {
        DbBackend::MySql => (
            "CREATE TABLE bench_users (id BIGINT AUTO_INCREMENT PRIMARY KEY, name TEXT NOT NULL)",
            "CREATE TABLE bench_plain (id BIGINT AUTO_INCREMENT PRIMARY KEY, message_id BINARY(16) NOT NULL,
             routing_key VARCHAR(255) NOT NULL, payload LONGBLOB NOT NULL, content_type VARCHAR(255) NOT NULL,
             headers JSON NOT NULL DEFAULT ('{}'), created_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
             send_after DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)))",
            "INSERT INTO bench_plain (message_id, routing_key, payload, content_type, headers) VALUES (?, ?, ?, ?, ?)",
        ),
        _ => (
            "CREATE TABLE bench_users (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL)",
            "CREATE TABLE bench_plain (id BIGSERIAL PRIMARY KEY, message_id UUID NOT NULL, routing_key VARCHAR(255) NOT NULL,
             payload BYTEA NOT NULL, content_type TEXT NOT NULL, headers JSONB NOT NULL DEFAULT '{}',
             created_at TIMESTAMPTZ NOT NULL DEFAULT now(), send_after TIMESTAMPTZ NOT NULL DEFAULT now())",
            "INSERT INTO bench_plain (message_id, routing_key, payload, content_type, headers) VALUES ($1, $2, $3, $4, $5)",
        ),
    };
    db.execute_unprepared(users).await?;
    db.execute_unprepared(plain).await?;
    let outbox = actix_outbox::Outbox::new(actix_outbox::TableName::new("bench_emit_outbox")?);
    let payload = serde_json::to_vec(&b.payload).map_err(Error::Json)?;
    let (mut ours, mut raw, mut quiet) = (Vec::new(), Vec::new(), Vec::new());
    let emit_tasks = || {
        timed_tasks(b, |db| {
            let outbox = outbox.clone();
            let payload = b.payload.clone();
            async move {
                let txn = db.begin().await?;
                txn.execute_unprepared("INSERT INTO bench_users (name) VALUES ('bench')")
                    .await?;
                outbox.emit(&txn, "bench.emit", &payload).await?;
                txn.commit().await?;
                Ok(())
            }
        })
    };
    for _ in 0..b.params.runs {
        ours.push(emit_tasks().await?);
        if backend == DbBackend::Postgres {
            // The same with the table's NOTIFY trigger off (relays would poll adaptively).
            outbox.set_notify(db, false).await?;
            let rate = emit_tasks().await;
            outbox.set_notify(db, true).await?;
            quiet.push(rate?);
        }
        raw.push(
            timed_tasks(b, |db| {
                let payload = payload.clone();
                async move {
                    let txn = db.begin().await?;
                    txn.execute_unprepared("INSERT INTO bench_users (name) VALUES ('bench')")
                        .await?;
                    txn.execute_raw(Statement::from_sql_and_values(
                        backend,
                        insert,
                        [
                            uuid::Uuid::now_v7().into(),
                            "bench.emit".into(),
                            payload.into(),
                            "application/json".into(),
                            json!({}).into(),
                        ],
                    ))
                    .await?;
                    txn.commit().await?;
                    Ok(())
                }
            })
            .await?,
        );
    }
    let raw_median = summarize(raw.clone()).median;
    let trigger_off = (!quiet.is_empty()).then(|| {
        let quiet = summarize(quiet);
        json!({"median": quiet.median.round(), "ratio": ((quiet.median / raw_median) * 1000.0).round() / 1000.0})
    });
    let params = json!({"tasks": b.params.emit_tasks, "seconds": b.params.emit_seconds,
        "payload_bytes": b.params.payload_bytes, "backend": format!("{backend:?}"),
        // PostgreSQL: ours with the NOTIFY trigger off (`Outbox::set_notify`), same run.
        "trigger_off": trigger_off});
    report(
        "emit",
        params,
        summarize(ours),
        "events/s",
        Some(("bare_sql_insert", summarize(raw))),
        0.75,
    );
    db.execute_unprepared("DROP TABLE IF EXISTS bench_emit_outbox, bench_plain, bench_users")
        .await?;
    Ok(())
}

/// Runs `op` in a loop from `emit_tasks` tasks for `emit_seconds`; returns operations/s.
pub(super) async fn timed_tasks<F, Fut>(b: &Bench, op: F) -> Result<f64, Error>
where
    F: Fn(DatabaseConnection) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>> + 'static,
{
    let deadline = Instant::now() + Duration::from_secs(b.params.emit_seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..b.params.emit_tasks {
        let db = b.db.clone();
        let op = &op;
        tasks.push(async move {
            let mut n = 0_u64;
            while Instant::now() < deadline {
                op(db.clone()).await?;
                n += 1;
            }
            Ok::<u64, Error>(n)
        });
    }
    let counts = futures_util::future::try_join_all(tasks).await?;
    Ok(counts.iter().sum::<u64>() as f64 / start.elapsed().as_secs_f64())
}

/// Inserts `n` outbox-shaped rows into `table` by hand, in one transaction, the fastest plain
/// way we know: one `INSERT … SELECT FROM unnest(…)` with one array parameter per column
/// (10,000 rows a statement, as `emit_many` does). Returns how long it took.
pub(super) async fn bare_insert(
    db: &DatabaseConnection,
    table: &str,
    n: usize,
    payload: &[u8],
) -> Result<Duration, Error> {
    if db.get_database_backend() == DbBackend::MySql {
        return bare_insert_mysql(db, table, n, payload).await;
    }
    let start = Instant::now();
    let txn = db.begin().await?;
    let mut left = n;
    while left > 0 {
        let rows = left.min(10_000);
        left -= rows;
        let ids: Vec<uuid::Uuid> = (0..rows).map(|_| uuid::Uuid::now_v7()).collect();
        let headers: Vec<serde_json::Value> = ids
            .iter()
            .map(|id| json!({"x-outbox-tracking-ids": [id.to_string()]}))
            .collect();
        let values: Vec<sea_orm::Value> = vec![
            ids.into(),
            vec!["bench.many".to_owned(); rows].into(),
            vec![payload.to_vec(); rows].into(),
            vec!["application/json".to_owned(); rows].into(),
            headers.into(),
        ];
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "INSERT INTO {table} (message_id, routing_key, payload, content_type, headers) \
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::text[], $5::jsonb[])"
            ),
            values,
        ))
        .await?;
    }
    txn.commit().await?;
    Ok(start.elapsed())
}

/// MySQL's fastest plain way: multi-row `VALUES` lists of 1,000 rows (five bound columns a
/// row), in one transaction, as `emit_many` does there.
async fn bare_insert_mysql(
    db: &DatabaseConnection,
    table: &str,
    n: usize,
    payload: &[u8],
) -> Result<Duration, Error> {
    let start = Instant::now();
    let txn = db.begin().await?;
    let mut left = n;
    while left > 0 {
        let rows = left.min(1_000);
        left -= rows;
        let marks = vec!["(?, ?, ?, ?, ?)"; rows].join(", ");
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(rows * 5);
        for _ in 0..rows {
            let id = uuid::Uuid::now_v7();
            values.push(id.into());
            values.push("bench.many".into());
            values.push(payload.to_vec().into());
            values.push("application/json".into());
            values.push(json!({"x-outbox-tracking-ids": [id.to_string()]}).into());
        }
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::MySql,
            format!(
                "INSERT INTO {table} (message_id, routing_key, payload, content_type, headers) \
                 VALUES {marks}"
            ),
            values,
        ))
        .await?;
    }
    txn.commit().await?;
    Ok(start.elapsed())
}

/// 20,000 events in one transaction, against a bare array INSERT of the same rows.
pub(super) async fn emit_many(b: &Bench) -> Result<(), Error> {
    let db = &b.db;
    let table = actix_outbox::TableName::new("bench_many_outbox")?;
    let outbox = actix_outbox::Outbox::new(table);
    db.execute_unprepared("DROP TABLE IF EXISTS bench_many_outbox, bench_many_plain")
        .await?;
    outbox.setup(db).await?;
    let backend = db.get_database_backend();
    let like = match backend {
        DbBackend::MySql => "CREATE TABLE bench_many_plain LIKE bench_many_outbox",
        _ => "CREATE TABLE bench_many_plain (LIKE bench_many_outbox INCLUDING ALL)",
    };
    db.execute_unprepared(like).await?;
    let n = b.params.messages;
    let payload = serde_json::to_vec(&b.payload).map_err(Error::Json)?;
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..b.params.runs {
        let events = b.events(n, "bench.many")?;
        let start = Instant::now();
        let txn = db.begin().await?;
        outbox.emit_many(&txn, events).await?;
        txn.commit().await?;
        ours.push(n as f64 / start.elapsed().as_secs_f64());

        let took = bare_insert(db, "bench_many_plain", n, &payload).await?;
        raw.push(n as f64 / took.as_secs_f64());
        for table in ["bench_many_outbox", "bench_many_plain"] {
            db.execute_unprepared(&format!("TRUNCATE {table}")).await?;
        }
    }
    let params = json!({"events": n, "payload_bytes": b.params.payload_bytes,
        "backend": format!("{backend:?}")});
    let ceiling = match backend {
        DbBackend::MySql => "bare_values_insert",
        _ => "bare_unnest_insert",
    };
    report(
        "emit_many",
        params,
        summarize(ours),
        "events/s",
        Some((ceiling, summarize(raw))),
        0.75,
    );
    db.execute_unprepared("DROP TABLE IF EXISTS bench_many_outbox, bench_many_plain")
        .await?;
    Ok(())
}
