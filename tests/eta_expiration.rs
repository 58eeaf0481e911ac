//! eta and expiration are stored as given; without an eta the row is due at once.
#![cfg(feature = "service-tests")]

mod common;

use chrono::{DurationRound, TimeDelta, Utc};

use actix_outbox::outbox_message::Entity;
use actix_outbox::{OutboxEvent, setup};
use sea_orm::EntityTrait;

/// An explicit eta and deadline come back exactly (to the microsecond both backends keep).
#[tokio::test]
async fn eta_and_deadline_round_trip() {
    for t in common::all_backends().await {
        setup(&t.db).await.expect("setup");
        let micro = TimeDelta::microseconds(1);
        let eta = (Utc::now() + TimeDelta::minutes(5))
            .duration_trunc(micro)
            .expect("trunc");
        let deadline = (Utc::now() + TimeDelta::hours(1))
            .duration_trunc(micro)
            .expect("trunc");
        let event = OutboxEvent::json("report.due", &"q3")
            .expect("event")
            .with_eta(eta)
            .with_expires_at(deadline);
        actix_outbox::emit_event(&t.db, event).await.expect("emit");
        let row = Entity::find().one(&t.db).await.expect("read").expect("row");
        assert_eq!(row.send_after, eta, "{}", t.name);
        assert_eq!(row.expires_at, Some(deadline), "{}", t.name);
        assert!(row.created_at < row.send_after);
        t.cleanup().await;
    }
}

/// Without an eta the row is due immediately: `send_after <= now` on the backend's clock.
#[tokio::test]
async fn default_eta_is_now() {
    for t in common::all_backends().await {
        setup(&t.db).await.expect("setup");
        let before = Utc::now() - TimeDelta::seconds(5);
        actix_outbox::emit(&t.db, "ping", &()).await.expect("emit");
        let row = Entity::find().one(&t.db).await.expect("read").expect("row");
        let after = Utc::now() + TimeDelta::seconds(5);
        assert!(
            row.send_after >= before && row.send_after <= after,
            "{}: send_after {} not near now",
            t.name,
            row.send_after
        );
        t.cleanup().await;
    }
}
