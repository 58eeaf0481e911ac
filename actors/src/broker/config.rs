//! `BrokerConfig`: where the broker is and how to reconnect to it.

use std::fmt;
use std::time::Duration;

use actix_outbox::{Error, Result, redact_url};

use crate::backoff::Backoff;

/// How to reach RabbitMQ and how to behave when the connection is lost.
///
/// A cluster is given as several URLs, one per node (comma-separated in one string, as in
/// `AMQP_URL=amqp://…@rabbit1/%2f,amqp://…@rabbit2/%2f`, or through
/// [`with_urls`](Self::with_urls)). The supervisor connects to the first; when a connection
/// attempt fails or the connection is lost, the next attempt goes to the next node, round
/// robin, so a process follows the cluster when one node goes away.
///
/// `Debug` shows the URLs with their passwords masked; logs only ever print that form.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use actix_outbox_actors::BrokerConfig;
///
/// let config = BrokerConfig::new("amqp://outbox:s3cret@127.0.0.1:5672/%2f")?
///     .with_reconnect(Duration::from_millis(200), Duration::from_secs(10));
/// config.validate()?;
/// assert!(!format!("{config:?}").contains("s3cret"));
/// # Ok::<(), actix_outbox::Error>(())
/// ```
#[derive(Clone)]
pub struct BrokerConfig {
    /// The AMQP URLs with credentials (`amqp://` or `amqps://`), one per cluster node; never
    /// empty.
    urls: Vec<String>,
    /// Reconnect delays: from `min`, doubling, capped at `max`, with jitter.
    reconnect: Backoff,
    /// Shown in the RabbitMQ management UI.
    connection_name: String,
    /// How long one connection attempt may take.
    connect_timeout: Duration,
}

impl BrokerConfig {
    /// A config for the broker at `url` (`amqp://user:password@host:port/vhost`, the vhost
    /// URL-encoded: `%2f` is `/`; `amqps://` for TLS). Several URLs separated by commas are
    /// the nodes of one cluster.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `url` (or one of the URLs) does not parse as an AMQP URL.
    pub fn new(url: impl Into<String>) -> Result<Self> {
        let url = url.into();
        Self::with_urls(url.split(',').map(str::trim))
    }

    /// A config for the nodes of one cluster, tried in this order.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when no URL is given or one does not parse as an AMQP URL.
    pub fn with_urls<I>(urls: I) -> Result<Self>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let urls: Vec<String> = urls.into_iter().map(Into::into).collect();
        if urls.iter().all(|u| u.is_empty()) {
            return Err(Error::InvalidConfig {
                field: "amqp_url",
                reason: "no AMQP URL given".to_owned(),
            });
        }
        for url in &urls {
            check_url(url)?;
        }
        Ok(Self {
            urls,
            reconnect: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
            connection_name: "actix-outbox".to_owned(),
            connect_timeout: Duration::from_secs(10),
        })
    }

    /// Reads `AMQP_URL` (one URL, or a cluster's comma-separated), falling back to `amqp://outbox:outbox@127.0.0.1:5672/%2f` (the URL
    /// of `scripts/services` and `docker-compose.yml`).
    ///
    /// # Errors
    ///
    /// As [`BrokerConfig::new`].
    pub fn from_env() -> Result<Self> {
        let url = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://outbox:outbox@127.0.0.1:5672/%2f".to_owned());
        Self::new(url)
    }

    /// Sets the reconnect backoff: the first retry after `min`, doubling up to `max`, each
    /// with jitter. Defaults to 100 ms up to 30 s.
    #[must_use]
    pub fn with_reconnect(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect = Backoff::new(min, max);
        self
    }

    /// Sets the connection name shown by RabbitMQ. Defaults to `actix-outbox`.
    #[must_use]
    pub fn with_connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// Sets how long one connection attempt may take. Defaults to 10 s.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Checks every setting; [`ConnectionSupervisor::new`](crate::ConnectionSupervisor::new)
    /// calls it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the first bad setting: a zero reconnect delay or
    /// connect timeout, or a reconnect minimum above its maximum.
    pub fn validate(&self) -> Result<()> {
        self.reconnect.validate("reconnect")?;
        actix_outbox::__private::require_positive("connect_timeout", self.connect_timeout)
    }

    /// The URL (the URLs, comma-separated) with passwords masked.
    #[must_use]
    pub fn redacted_url(&self) -> String {
        let shown: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        shown.join(",")
    }

    /// How many URLs (cluster nodes) there are.
    #[must_use]
    pub fn node_count(&self) -> usize {
        self.urls.len()
    }

    /// URL number `node` (modulo their count).
    pub(crate) fn url(&self, node: usize) -> &str {
        &self.urls[node % self.urls.len()]
    }

    pub(crate) fn reconnect(&self) -> Backoff {
        self.reconnect
    }

    pub(crate) fn connection_name(&self) -> &str {
        &self.connection_name
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

/// `url` as an AMQP URL, or an error that shows it redacted.
fn check_url(url: &str) -> Result<()> {
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(_) => Ok(()),
        Err(reason) => {
            // lapin's message may quote the whole URL: show it redacted there too.
            let shown = actix_outbox::__private::redact_unparsed(url);
            let reason = reason.replace(url, &shown);
            Err(Error::InvalidConfig {
                field: "amqp_url",
                reason: format!("{shown:?} is not an AMQP URL: {reason}"),
            })
        }
    }
}

impl fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("url", &self.redacted_url())
            .field("reconnect", &self.reconnect)
            .field("connection_name", &self.connection_name)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_typed_errors_without_the_password() {
        let err = BrokerConfig::new("http://u:hunter2@host").expect_err("not amqp");
        assert!(matches!(
            err,
            Error::InvalidConfig {
                field: "amqp_url",
                ..
            }
        ));
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn a_url_lapin_quotes_in_its_error_is_redacted_there_too() {
        // lapin answers "Invalid URL: '<the whole URL>'" for this one.
        let err = BrokerConfig::new("amqp:u:hunter2@host").expect_err("not a URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = BrokerConfig::new("amqp://u:hun/ter2@host:notaport").expect_err("bad port");
        assert!(!err.to_string().contains("hun/ter2"), "{err}");
    }

    #[test]
    fn several_urls_are_the_nodes_of_a_cluster() {
        let config = BrokerConfig::new(
            "amqp://u:hunter2@rabbit1:5672/%2f, amqp://u:hunter2@rabbit2:5672/%2f",
        )
        .expect("two URLs");
        assert_eq!(config.node_count(), 2);
        assert_eq!(config.url(1), "amqp://u:hunter2@rabbit2:5672/%2f");
        assert_eq!(config.url(2), config.url(0), "round robin");
        let shown = config.redacted_url();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(shown.matches(',').count(), 1, "{shown}");
        let err =
            BrokerConfig::new("amqp://rabbit1,http://u:hunter2@rabbit2").expect_err("one bad");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(BrokerConfig::new("").is_err(), "no URL at all");
        assert!(BrokerConfig::with_urls(Vec::<String>::new()).is_err());
    }

    #[test]
    fn debug_redacts_the_password() {
        let config = BrokerConfig::new("amqp://outbox:hunter2@localhost:5672/%2f").expect("valid");
        let shown = format!("{config:?}");
        assert!(shown.contains("outbox:***@localhost"), "{shown}");
        assert!(!shown.contains("hunter2"));
    }

    #[test]
    fn each_bad_setting_is_named() {
        let config = BrokerConfig::new("amqp://localhost").expect("valid");
        config.validate().expect("defaults are valid");
        let field = |c: BrokerConfig| match c.validate() {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        let zero = config
            .clone()
            .with_reconnect(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(field(zero), "reconnect");
        let inverted = config
            .clone()
            .with_reconnect(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(field(inverted), "reconnect");
        assert_eq!(
            field(config.with_connect_timeout(Duration::ZERO)),
            "connect_timeout"
        );
    }
}
