//! Invalid relay and broker settings are typed errors at construction, never panics. These
//! tests need no running service.

use std::time::Duration;

use actix_outbox::Error;
use actix_outbox_actors::{BrokerConfig, ConnectionSupervisor, RelayActor, RelayConfig};

fn field(result: Result<impl std::fmt::Debug, Error>) -> &'static str {
    match result {
        Err(Error::InvalidConfig { field, .. }) => field,
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

/// Batch size 0, a reserved or malformed exchange name, zero durations: typed errors from
/// `RelayActor::new`, before anything connects.
#[actix_rt::test]
async fn relay_rejects_bad_settings() {
    let db = sea_orm::Database::connect("sqlite::memory:")
        .await
        .expect("sqlite");
    let broker = ConnectionSupervisor::start_supervised(
        BrokerConfig::new("amqp://127.0.0.1:1/%2f").expect("syntactically valid"),
    )
    .expect("supervisor");
    let relay = |config: RelayConfig| RelayActor::new(db.clone(), broker.clone(), config);
    assert_eq!(
        field(relay(RelayConfig::default().with_batch_size(0))),
        "batch_size"
    );
    assert_eq!(
        field(relay(RelayConfig::default().with_exchange("amq.topic"))),
        "exchange"
    );
    assert_eq!(
        field(relay(RelayConfig::default().with_exchange("has space"))),
        "exchange"
    );
    assert_eq!(
        field(relay(
            RelayConfig::default().with_poll_interval(Duration::ZERO)
        )),
        "poll_interval"
    );
    assert!(relay(RelayConfig::default()).is_ok(), "defaults are valid");
}

/// An unparseable AMQP URL is a typed error that does not echo the password.
#[test]
fn broker_rejects_bad_urls() {
    for url in [
        "",
        "not a url",
        "http://u:secret@host/",
        "amqp://u:secret@host:notaport/",
    ] {
        let err = BrokerConfig::new(url).expect_err(url);
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    field: "amqp_url",
                    ..
                }
            ),
            "{url}: {err}"
        );
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
