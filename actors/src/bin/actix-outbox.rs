//! `actix-outbox`: the operator's command for a running outbox.
//!
//! ```text
//! cargo install --path actors --features cli
//! actix-outbox status --queue welcome_mailer         # table counts, unroutable, queues
//! actix-outbox parked list --key 'user.*' --json     # parked rows, as JSON lines
//! actix-outbox parked retry 17 18                    # send them again (or --all)
//! actix-outbox parked discard --all
//! actix-outbox dlq list welcome_mailer               # dead letters with their reasons
//! actix-outbox dlq replay welcome_mailer --limit 10  # back to the queue, attempt 1
//! actix-outbox dlq replay shipping --ordered         # an ordered listener's, by key
//! actix-outbox unroutable replay --key 'order.*'     # once the bindings exist
//! actix-outbox topology export --listen 'welcome_mailer=user.created,user.*' > defs.json
//! actix-outbox topology export --listen 'shipping=order.*' --ordered shipping=4
//! actix-outbox topology check --listen 'welcome_mailer=user.created,user.*'
//! actix-outbox notify off                            # no NOTIFY: relays poll adaptively
//! actix-outbox ddl --backend sqlite                  # the statements `setup` runs
//! ```
//!
//! `--database-url` and `--amqp-url` fall back to `DATABASE_URL` and `AMQP_URL`; they are
//! only ever shown redacted. Failures print one line `error: …` and exit with 1 (bad usage:
//! 2).
#![allow(clippy::print_stdout)]

use std::process::ExitCode;
use std::time::Duration;

use actix_outbox::{BindingKey, DatabaseConfig, Error, Outbox, Parked, TableName, ddl};
use actix_outbox_actors::admin::{
    self, DelayQueueStatus, Progress, QueueStatus, ReplayOptions, TableStatus,
};
use actix_outbox_actors::{
    BrokerConfig, ConnectionSupervisor, Listen, QueueType, StopBroker, Topology, Unroutable,
    WorkerConfig, worker,
};
use clap::{Args, Parser, Subcommand, ValueEnum};
use sea_orm::{DatabaseConnection, DbBackend};

/// The outbox's operator command: status, parked rows, DDL.
#[derive(Debug, Parser)]
#[command(
    name = "actix-outbox",
    version,
    about = "Operator commands for an actix-outbox deployment: status, parked rows, dead letters, unroutable messages, topology, DDL."
)]
struct Cli {
    /// PostgreSQL or SQLite URL of the application's database.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// RabbitMQ URL.
    #[arg(long, env = "AMQP_URL", global = true, hide_env_values = true)]
    amqp_url: Option<String>,
    /// The outbox table.
    #[arg(long, default_value = "outbox", global = true)]
    table: String,
    /// The relay's topic exchange.
    #[arg(long, default_value = "outbox", global = true)]
    exchange: String,
    /// Machine-readable output: one JSON document (or one JSON line per row).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Backlog, oldest due age, parked and kept rows; unroutable messages; queue depths.
    Status {
        /// A handler queue to report (with its dead-letter queue); repeatable.
        #[arg(long = "queue")]
        queues: Vec<String>,
        /// The workers' retry delays, whose delay queues are reported (comma-separated;
        /// default: the worker's, 1s,10s,1m,5m).
        #[arg(long, value_delimiter = ',')]
        retry_delays: Option<Vec<String>>,
    },
    /// Rows the relay parked.
    #[command(subcommand)]
    Parked(ParkedCommand),
    /// A handler queue's dead letters (`dlq_<queue>`).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Messages kept in `<exchange>.unroutable`.
    #[command(subcommand)]
    Unroutable(UnroutableCommand),
    /// The exchanges, queues and bindings a worker configuration needs.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// The table's PostgreSQL NOTIFY trigger: `on`, `off` (relays must then poll
    /// adaptively), or `status`.
    Notify {
        /// What to do.
        #[arg(value_enum)]
        action: NotifyAction,
    },
    /// The statements `setup` runs for the table.
    Ddl {
        /// The database backend.
        #[arg(long, value_enum, default_value_t = Backend::Postgres)]
        backend: Backend,
    },
}

/// What `notify` does.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum NotifyAction {
    /// Emitting commits wake the relays (the default).
    On,
    /// No NOTIFY: emitting commits group-commit; relays need `with_adaptive_poll`.
    Off,
    /// Prints whether the trigger is on.
    Status,
}

#[derive(Debug, Subcommand)]
enum ParkedCommand {
    /// Lists parked rows, oldest first.
    List {
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only rows whose routing key matches this binding key (`user.*`, `#`).
        #[arg(long)]
        key: Option<String>,
    },
    /// Clears the parked state and attempts of rows, so relays send them again.
    Retry(Which),
    /// Deletes parked rows for good.
    Discard(Which),
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Lists dead letters, oldest first (they stay in the queue).
    List {
        /// The handler queue.
        queue: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Moves dead letters back to their queue with a fresh attempt count; each copy is
    /// confirmed before its dead letter is acked, so an interruption loses nothing.
    Replay {
        /// The handler queue.
        queue: String,
        /// At most this many.
        #[arg(long)]
        limit: Option<u64>,
        /// Only the message with this id.
        #[arg(long)]
        message_id: Option<String>,
        /// The queue is an ordered listener's (`Listen::ordered`): replay through its
        /// consistent-hash exchange, each message to the partition of its key.
        #[arg(long)]
        ordered: bool,
        #[command(flatten)]
        moving: MoveArgs,
    },
    /// Deletes every dead letter of the queue.
    Purge {
        /// The handler queue.
        queue: String,
    },
}

#[derive(Debug, Subcommand)]
enum UnroutableCommand {
    /// Publishes the kept messages to the exchange again, under their own routing keys, once
    /// bindings for them exist; each copy is confirmed before its original is acked.
    Replay {
        /// At most this many.
        #[arg(long)]
        limit: Option<u64>,
        #[command(flatten)]
        moving: MoveArgs,
    },
}

/// What a replay moves, beside its limit.
#[derive(Debug, Args)]
struct MoveArgs {
    /// Only messages whose routing key matches this binding key (`order.*`, `#`).
    #[arg(long)]
    key: Option<String>,
    /// Drop the deadline, so expired events are handled instead of expiring again.
    #[arg(long)]
    reset_deadline: bool,
}

#[derive(Debug, Subcommand)]
enum TopologyCommand {
    /// Prints the topology as RabbitMQ definitions JSON, for `rabbitmqctl import_definitions`.
    Export {
        #[command(flatten)]
        worker: WorkerArgs,
        /// The virtual host written into the definitions (default: the AMQP URL's, else `/`).
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Compares the topology with the live broker; exits with 1 when something is missing or
    /// different.
    Check {
        #[command(flatten)]
        worker: WorkerArgs,
    },
}

/// The worker settings that decide its topology.
#[derive(Debug, Args)]
struct WorkerArgs {
    /// A handler queue and its binding keys, `QUEUE=KEY[,KEY…]`; repeatable.
    #[arg(long = "listen", value_name = "QUEUE=KEYS", required = true)]
    listens: Vec<String>,
    /// An ordered listener among `--listen`'s: its queue and number of partitions,
    /// `QUEUE=N` (`Listen::ordered`); repeatable.
    #[arg(long = "ordered", value_name = "QUEUE=N")]
    ordered: Vec<String>,
    /// Retry delays, comma-separated (default: the worker's, 1s,10s,1m,5m).
    #[arg(long, value_delimiter = ',')]
    retry_delays: Option<Vec<String>>,
    /// Type of the handler, dead-letter and delay queues.
    #[arg(long, value_enum, default_value_t = QueueKind::Quorum)]
    queue_type: QueueKind,
    /// What the exchange does with unroutable messages.
    #[arg(long, value_enum, default_value_t = UnroutableKind::Keep)]
    unroutable: UnroutableKind,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum QueueKind {
    Quorum,
    Classic,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum UnroutableKind {
    /// Kept in `<exchange>.unroutable` (an alternate exchange).
    Keep,
    /// Dropped by the broker (the relay counts them).
    Drop,
}

#[derive(Debug, Args)]
struct Which {
    /// Row ids (see `parked list`).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    ids: Vec<i64>,
    /// Every parked row of the table.
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Backend {
    Postgres,
    Sqlite,
    /// MySQL 8 / MariaDB 10.6+ (builds with the `mysql` feature).
    #[cfg(feature = "mysql")]
    Mysql,
}

#[actix::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    let table = TableName::new(cli.table.as_str())?;
    match &cli.command {
        Command::Ddl { backend } => {
            let backend = match backend {
                Backend::Postgres => DbBackend::Postgres,
                Backend::Sqlite => DbBackend::Sqlite,
                #[cfg(feature = "mysql")]
                Backend::Mysql => DbBackend::MySql,
            };
            let statements = ddl(backend, &table)?;
            match cli.json {
                true => println!("{}", serde_json::json!(statements)),
                false => statements.iter().for_each(|s| println!("{s};\n")),
            }
            Ok(())
        }
        Command::Parked(command) => {
            let db = database(&cli).await?;
            let result = parked(&cli, &db, Outbox::new(table), command).await;
            let _ = db.close().await;
            result
        }
        Command::Notify { action } => {
            let db = database(&cli).await?;
            let result = notify(&cli, &db, &Outbox::new(table), *action).await;
            let _ = db.close().await;
            result
        }
        Command::Dlq(command) => dlq(&cli, command).await,
        Command::Unroutable(UnroutableCommand::Replay { limit, moving }) => {
            let options = replay_options(*limit, None, moving)?;
            let exchange = cli.exchange.as_str();
            let done = with_broker(amqp_url(&cli)?, |broker| async move {
                admin::unroutable_replay(&broker, exchange, &options, WAIT).await
            })
            .await?;
            match cli.json {
                true => println!("{}", serde_json::json!(done)),
                false => println!(
                    "{} messages replayed to {exchange}; {} wait in {exchange}.unroutable{}",
                    done.replayed,
                    done.waiting_after,
                    if done.replayed > 0 && u64::from(done.waiting_after) >= done.replayed {
                        " (still unroutable? bind their keys first)"
                    } else {
                        ""
                    }
                ),
            }
            Ok(())
        }
        Command::Topology(command) => topology(&cli, command).await,
        Command::Status {
            queues,
            retry_delays,
        } => {
            let db = database(&cli).await?;
            let result = status(&cli, &db, &table, queues, retry_delays.as_deref()).await;
            let _ = db.close().await;
            result
        }
    }
}

/// `notify on|off|status`: switches the trigger (when asked), then prints its state.
async fn notify(
    cli: &Cli,
    db: &DatabaseConnection,
    outbox: &Outbox,
    action: NotifyAction,
) -> Result<(), Error> {
    match action {
        NotifyAction::On => outbox.set_notify(db, true).await?,
        NotifyAction::Off => outbox.set_notify(db, false).await?,
        NotifyAction::Status => {}
    }
    let on = outbox.notify_enabled(db).await?;
    match cli.json {
        true => println!(
            "{}",
            serde_json::json!({"table": outbox.table().as_str(), "notify": on})
        ),
        false => println!(
            "{}: NOTIFY trigger {}",
            outbox.table(),
            if on {
                "on"
            } else {
                "off (relays need adaptive polling)"
            }
        ),
    }
    Ok(())
}

async fn database(cli: &Cli) -> Result<DatabaseConnection, Error> {
    let url = cli.database_url.as_deref().ok_or(Error::InvalidConfig {
        field: "database_url",
        reason: "give --database-url or set DATABASE_URL".to_owned(),
    })?;
    DatabaseConfig::new(url)
        .with_max_connections(2)
        .with_acquire_timeout(Duration::from_secs(10))
        .connect()
        .await
}

async fn parked(
    cli: &Cli,
    db: &DatabaseConnection,
    outbox: Outbox,
    command: &ParkedCommand,
) -> Result<(), Error> {
    let which = |w: &Which| match w.all {
        true => Parked::All,
        false => Parked::Ids(w.ids.clone()),
    };
    let (verb, count) = match command {
        ParkedCommand::List { limit, key } => {
            let key = key.as_deref().map(BindingKey::new).transpose()?;
            let rows = outbox.parked(db, *limit, key.as_ref()).await?;
            for row in &rows {
                match cli.json {
                    true => println!("{}", serde_json::json!(row)),
                    false => println!(
                        "{:>8}  {}  {:<32}  attempts {:>3}  parked {}  {}",
                        row.id,
                        row.message_id,
                        row.routing_key,
                        row.attempts,
                        row.parked_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                        row.last_error.as_deref().unwrap_or("")
                    ),
                }
            }
            if !cli.json {
                println!("{} parked rows shown", rows.len());
            }
            return Ok(());
        }
        ParkedCommand::Retry(w) => ("retried", outbox.retry_parked(db, &which(w)).await?),
        ParkedCommand::Discard(w) => ("discarded", outbox.discard_parked(db, &which(w)).await?),
    };
    match cli.json {
        true => println!("{}", serde_json::json!({ verb: count })),
        false => println!("{count} parked rows {verb}"),
    }
    Ok(())
}

async fn status(
    cli: &Cli,
    db: &DatabaseConnection,
    table: &TableName,
    queues: &[String],
    retry_delays: Option<&[String]>,
) -> Result<(), Error> {
    let table_status = admin::table_status(db, table).await?;
    let delays = worker_config(retry_delays)?.retry_delays()?;
    let (unroutable, queue_status, delay_status) = match &cli.amqp_url {
        Some(url) => broker_status(url, &cli.exchange, queues, &delays).await?,
        None if queues.is_empty() => (None, Vec::new(), Vec::new()),
        None => {
            return Err(Error::InvalidConfig {
                field: "amqp_url",
                reason: "queues need the broker: give --amqp-url or set AMQP_URL".to_owned(),
            });
        }
    };
    match cli.json {
        true => println!(
            "{}",
            serde_json::json!({
                "table": table_status,
                "unroutable": unroutable,
                "queues": queue_status,
                "delay_queues": delay_status,
            })
        ),
        false => {
            print_status(&table_status, unroutable, &cli.exchange, &queue_status);
            for d in &delay_status {
                match d.waiting {
                    Some(n) => println!("delay queue {}: {n} retries waiting", d.queue),
                    None => println!("delay queue {}: not declared", d.queue),
                }
            }
        }
    }
    Ok(())
}

/// A broker connection of this command's own, for `run`; stopped afterwards.
async fn with_broker<T, F>(
    url: &str,
    run: impl FnOnce(actix::Addr<ConnectionSupervisor>) -> F,
) -> Result<T, Error>
where
    F: Future<Output = Result<T, Error>>,
{
    let config = BrokerConfig::new(url)?
        .with_connection_name("actix-outbox-cli")
        .with_connect_timeout(Duration::from_secs(10));
    let broker = ConnectionSupervisor::start_supervised(config)?;
    let result = run(broker.clone()).await;
    let _ = broker.send(StopBroker).await;
    result
}

async fn dlq(cli: &Cli, command: &DlqCommand) -> Result<(), Error> {
    let url = amqp_url(cli)?;
    let wait = WAIT;
    let json = cli.json;
    with_broker(url, |broker| async move {
        match command {
            DlqCommand::List { queue, limit } => {
                let letters = admin::dlq_list(&broker, queue, *limit, wait).await?;
                for l in &letters {
                    match json {
                        true => println!("{}", serde_json::json!(l)),
                        false => println!(
                            "{}  {:<32}  attempt {:>3}  {}",
                            l.message_id,
                            l.routing_key,
                            l.attempt,
                            l.reason.as_deref().unwrap_or("")
                        ),
                    }
                }
                if !json {
                    println!("{} dead letters shown", letters.len());
                }
            }
            DlqCommand::Replay {
                queue,
                limit,
                message_id,
                ordered,
                moving,
            } => {
                let options = replay_options(*limit, message_id.as_deref(), moving)?;
                let moved = match ordered {
                    true => {
                        admin::dlq_replay_ordered(&broker, &cli.exchange, queue, &options, wait)
                            .await?
                    }
                    false => admin::dlq_replay(&broker, queue, &options, wait).await?,
                };
                match json {
                    true => println!("{}", serde_json::json!({ "replayed": moved })),
                    false => println!("{moved} dead letters replayed to {queue}"),
                }
            }
            DlqCommand::Purge { queue } => {
                let purged = admin::dlq_purge(&broker, queue, wait).await?;
                match json {
                    true => println!("{}", serde_json::json!({ "purged": purged })),
                    false => println!("{purged} dead letters of {queue} deleted"),
                }
            }
        }
        Ok(())
    })
    .await
}

/// How long the command waits for a broker channel.
const WAIT: Duration = Duration::from_secs(10);

fn amqp_url(cli: &Cli) -> Result<&str, Error> {
    cli.amqp_url.as_deref().ok_or(Error::InvalidConfig {
        field: "amqp_url",
        reason: "give --amqp-url or set AMQP_URL".to_owned(),
    })
}

/// Replay options, with progress on stderr at most once a second (stdout stays for the
/// result).
fn replay_options(
    limit: Option<u64>,
    message_id: Option<&str>,
    moving: &MoveArgs,
) -> Result<ReplayOptions, Error> {
    let mut options = ReplayOptions::new().with_reset_deadline(moving.reset_deadline);
    if let Some(limit) = limit {
        options = options.with_limit(limit);
    }
    if let Some(id) = message_id {
        options = options.with_message_id(id);
    }
    if let Some(key) = &moving.key {
        options = options.with_key(BindingKey::new(key.as_str())?);
    }
    let last = std::sync::Mutex::new(std::time::Instant::now());
    Ok(options.with_progress(move |p: Progress| {
        let mut last = last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.elapsed() >= Duration::from_secs(1) {
            *last = std::time::Instant::now();
            eprintln!(
                "… {} moved ({} of {} looked at)",
                p.moved, p.examined, p.waiting
            );
        }
    }))
}

/// A worker config from the command's flags (`None`: the worker's default delays).
fn worker_config(retry_delays: Option<&[String]>) -> Result<WorkerConfig, Error> {
    let config = WorkerConfig::default();
    let config = match retry_delays {
        Some(delays) => config.with_retry_delays(delays.iter().map(String::as_str)),
        None => config,
    };
    config.validate()?;
    Ok(config)
}

/// The topology of the worker the flags describe.
fn worker_topology(cli: &Cli, args: &WorkerArgs) -> Result<Topology, Error> {
    let config = worker_config(args.retry_delays.as_deref())?
        .with_exchange(cli.exchange.as_str())
        .with_queue_type(match args.queue_type {
            QueueKind::Quorum => QueueType::Quorum,
            QueueKind::Classic => QueueType::Classic,
        })
        .with_unroutable(match args.unroutable {
            UnroutableKind::Keep => Unroutable::AlternateExchange,
            UnroutableKind::Drop => Unroutable::Drop,
        });
    let mut partitions = std::collections::BTreeMap::new();
    for spec in &args.ordered {
        let parsed = spec
            .split_once('=')
            .and_then(|(queue, n)| Some((queue, n.parse::<u16>().ok()?)));
        let (queue, n) = parsed.ok_or_else(|| Error::InvalidConfig {
            field: "ordered",
            reason: format!("{spec:?}: write QUEUE=N, e.g. shipping=4"),
        })?;
        partitions.insert(queue.to_owned(), n);
    }
    let mut listens = Vec::new();
    for spec in &args.listens {
        let (queue, keys) = spec.split_once('=').ok_or_else(|| Error::InvalidConfig {
            field: "listen",
            reason: format!("{spec:?}: write QUEUE=KEY[,KEY…], e.g. welcome_mailer=user.created"),
        })?;
        let mut listen = Listen::new(keys.split(','))?.with_queue(queue);
        if let Some(n) = partitions.remove(queue) {
            listen = listen.ordered(n);
        }
        listens.push(listen);
    }
    if let Some(queue) = partitions.keys().next() {
        return Err(Error::InvalidConfig {
            field: "ordered",
            reason: format!("{queue:?} is not among the --listen queues"),
        });
    }
    worker::topology(&config, &listens)
}

async fn topology(cli: &Cli, command: &TopologyCommand) -> Result<(), Error> {
    match command {
        TopologyCommand::Export { worker, vhost } => {
            let topology = worker_topology(cli, worker)?;
            let vhost = match (vhost, &cli.amqp_url) {
                (Some(v), _) => v.clone(),
                (None, Some(url)) => url
                    .parse::<lapin::uri::AMQPUri>()
                    .map(|u| u.vhost)
                    .unwrap_or_else(|_| "/".to_owned()),
                (None, None) => "/".to_owned(),
            };
            let definitions = topology.to_definitions(&vhost);
            println!(
                "{}",
                serde_json::to_string_pretty(&definitions).expect("JSON values serialize")
            );
            Ok(())
        }
        TopologyCommand::Check { worker } => {
            let topology = worker_topology(cli, worker)?;
            let found = with_broker(amqp_url(cli)?, |broker| async move {
                admin::topology_check(&broker, &topology, WAIT).await
            })
            .await?;
            for f in &found {
                match cli.json {
                    true => println!("{}", serde_json::json!(f)),
                    false => println!("{:<8} {:<48} {}", f.object, f.name, f.finding),
                }
            }
            let bad = found.iter().filter(|f| !f.finding.is_ok()).count();
            match bad {
                0 => Ok(()),
                n => Err(Error::InvalidConfig {
                    field: "topology",
                    reason: format!("{n} objects missing or different on the broker"),
                }),
            }
        }
    }
}

/// Unroutable messages and queue counts, over a connection of its own.
async fn broker_status(
    url: &str,
    exchange: &str,
    queues: &[String],
    delays: &[Duration],
) -> Result<(Option<u32>, Vec<QueueStatus>, Vec<DelayQueueStatus>), Error> {
    let wait = WAIT;
    with_broker(url, |broker| async move {
        let unroutable = admin::unroutable_waiting(&broker, exchange, wait).await?;
        let delay_queues = admin::delay_queues(&broker, exchange, delays, wait).await?;
        let mut found = Vec::new();
        for queue in queues {
            let status = admin::queue_status(&broker, queue, wait)
                .await
                .map_err(|e| Error::InvalidConfig {
                    field: "queue",
                    reason: format!("queue {queue:?}: {e}"),
                })?;
            found.push(status);
        }
        Ok((unroutable, found, delay_queues))
    })
    .await
}

fn print_status(t: &TableStatus, unroutable: Option<u32>, exchange: &str, queues: &[QueueStatus]) {
    println!(
        "table {}: {} due (oldest waited {:.1} s), {} parked, {} kept",
        t.table, t.due, t.oldest_due_age_seconds, t.parked, t.kept
    );
    match unroutable {
        Some(n) => println!("unroutable: {n} waiting in {exchange}.unroutable"),
        None => println!("unroutable: no {exchange}.unroutable queue (or no broker given)"),
    }
    for q in queues {
        let dead = q.dead_letters.map_or_else(
            || "no dead-letter queue".to_owned(),
            |n| format!("{n} dead letters"),
        );
        println!(
            "queue {}: {} ready, {} consumers, {dead}",
            q.queue, q.ready, q.consumers
        );
    }
}
