//! `DatabaseConfig`: connecting to the outbox's database without the password ever reaching a
//! log, at any level.
//!
//! `sea_orm::Database::connect` records its `ConnectOptions`, URL and password included, in a
//! trace-level span, and quotes the URL in its parse errors. A process that turns on
//! `RUST_LOG=trace` to chase a problem would then write the database password into its logs.
//! [`DatabaseConfig::connect`] parses the URL itself and hands SeaORM a ready pool, so the URL
//! goes nowhere but the driver; `Debug` and every error show it redacted.

use std::fmt;
use std::time::Duration;

use sea_orm::{DatabaseConnection, DbErr};

use crate::error::{Error, Result};
use crate::redact::redact_url;

/// The URL schemes of the backends this build was compiled with.
const SCHEMES: &[&str] = &[
    #[cfg(feature = "postgres")]
    "postgres",
    #[cfg(feature = "mysql")]
    "mysql",
    #[cfg(feature = "sqlite")]
    "sqlite",
];

/// Where the outbox's database is, and the pool to keep to it.
///
/// # Examples
///
/// ```no_run
/// use actix_outbox::DatabaseConfig;
///
/// # async fn run() -> Result<(), actix_outbox::Error> {
/// let db = DatabaseConfig::from_env().with_max_connections(5).connect().await?;
/// actix_outbox::setup(&db).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/db`, `mysql://user:password@host:port/db` or
    /// `sqlite://path?mode=rwc`.
    url: String,
    /// Most pooled connections.
    max_connections: u32,
    /// A pooled connection idle for longer than this is pinged before use.
    ping_if_idle_for: Duration,
    /// Longest wait for a pooled connection.
    acquire_timeout: Duration,
}

impl DatabaseConfig {
    /// A config for the database at `url` (PostgreSQL, MySQL/MariaDB or SQLite).
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 10,
            ping_if_idle_for: Duration::from_secs(30),
            acquire_timeout: Duration::from_secs(30),
        }
    }

    /// Reads `DATABASE_URL`, falling back to `postgres://outbox:outbox@127.0.0.1:5432/outbox`
    /// (the URL of `scripts/services` and `docker-compose.yml`).
    #[must_use]
    pub fn from_env() -> Self {
        Self::new(
            std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://outbox:outbox@127.0.0.1:5432/outbox".to_owned()),
        )
    }

    /// Sets the most pooled connections. Defaults to 10.
    #[must_use]
    pub fn with_max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// Sets after how long idle a pooled connection is pinged before it is handed out
    /// (checking every checkout would cost a round trip per relay batch). Defaults to 30 s.
    #[must_use]
    pub fn with_ping_if_idle_for(mut self, idle: Duration) -> Self {
        self.ping_if_idle_for = idle;
        self
    }

    /// Sets the longest wait for a pooled connection (while the database is away, calls fail
    /// after it). Defaults to 30 s.
    #[must_use]
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// The URL with its password masked.
    #[must_use]
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Opens the pool.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] (`database_url`) for a URL that does not parse or whose
    /// scheme is not `postgres`/`postgresql`/`mysql`/`sqlite` (of the backends this build has),
    /// or `max_connections` of 0 (the message
    /// shows the URL redacted); [`Error::Db`] when the database cannot be reached.
    pub async fn connect(&self) -> Result<DatabaseConnection> {
        if self.max_connections == 0 {
            return Err(self.invalid("max_connections must be at least 1".to_owned()));
        }
        let scheme = self.url.split("://").next().unwrap_or_default();
        match scheme {
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => self.connect_postgres().await,
            #[cfg(feature = "mysql")]
            "mysql" => self.connect_mysql().await,
            #[cfg(feature = "sqlite")]
            "sqlite" => self.connect_sqlite().await,
            other => Err(self.invalid(format!(
                "unsupported scheme {other:?} in {} (this build takes {} URLs)",
                self.redacted_url(),
                SCHEMES.join(", ")
            ))),
        }
    }

    /// The pool settings of every server backend: its size and wait, and a ping only for a
    /// connection idle longer than `ping_if_idle_for` (not one round trip per checkout).
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    fn pool_options<DB: sea_orm::sqlx::Database>(&self) -> sea_orm::sqlx::pool::PoolOptions<DB> {
        let ping_after = self.ping_if_idle_for;
        sea_orm::sqlx::pool::PoolOptions::<DB>::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > ping_after {
                        sea_orm::sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
    }

    #[cfg(feature = "postgres")]
    async fn connect_postgres(&self) -> Result<DatabaseConnection> {
        use sea_orm::sqlx::ConnectOptions as _;
        use sea_orm::sqlx::postgres::PgConnectOptions;
        let options: PgConnectOptions = self.url.parse().map_err(|e| self.parse_error(&e))?;
        let pool = self
            .pool_options()
            .connect_with(options.disable_statement_logging())
            .await
            .map_err(|e| Error::Db(DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e.into()))))?;
        Ok(sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(
            pool,
        ))
    }

    /// MySQL and MariaDB. The driver sets the session time zone to UTC (`+00:00`); the outbox
    /// compares times with `UTC_TIMESTAMP(6)` either way.
    #[cfg(feature = "mysql")]
    async fn connect_mysql(&self) -> Result<DatabaseConnection> {
        use sea_orm::sqlx::ConnectOptions as _;
        use sea_orm::sqlx::mysql::MySqlConnectOptions;
        let options: MySqlConnectOptions = self.url.parse().map_err(|e| self.parse_error(&e))?;
        let pool = self
            .pool_options()
            .connect_with(options.disable_statement_logging())
            .await
            .map_err(|e| Error::Db(DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e.into()))))?;
        Ok(sea_orm::SqlxMySqlConnector::from_sqlx_mysql_pool(pool))
    }

    #[cfg(feature = "sqlite")]
    async fn connect_sqlite(&self) -> Result<DatabaseConnection> {
        // A file path carries no password: SeaORM's own connect is fine here.
        let mut options = sea_orm::ConnectOptions::new(self.url.clone());
        options
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .sqlx_logging(false);
        Ok(sea_orm::Database::connect(options).await?)
    }

    /// A parse error, with any echo of the URL in it redacted.
    fn parse_error(&self, e: &dyn std::error::Error) -> Error {
        let shown = crate::redact::redact_unparsed(&self.url);
        let text = e.to_string().replace(&self.url, &shown);
        self.invalid(format!("{shown} does not parse: {text}"))
    }

    fn invalid(&self, reason: String) -> Error {
        Error::InvalidConfig {
            field: "database_url",
            reason,
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.redacted_url())
            .field("max_connections", &self.max_connections)
            .field("ping_if_idle_for", &self.ping_if_idle_for)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_errors_never_show_the_password() {
        let config = DatabaseConfig::new("postgres://outbox:hunter2@localhost:5432/outbox");
        let shown = format!("{config:?}");
        assert!(shown.contains("outbox:***@localhost"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let bad = DatabaseConfig::new("oracle://u:hunter2@db/x");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let err = rt.block_on(bad.connect()).expect_err("unsupported scheme");
        assert!(err.is_config(), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let port = DatabaseConfig::new("postgres://u:hunter2@db:notaport/x");
        let err = rt.block_on(port.connect()).expect_err("bad port");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
