//! The tracking chain without hand work: a handler emits a follow-up event with
//! `OutboxEvent::caused_by(&event)`, in its own transaction; the relay publishes it with the
//! root's correlation id as the AMQP `correlation_id`; the second handler sees the whole chain.
#![cfg(feature = "service-tests")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_outbox::{Event, HandlerError, HandlerResult, OutboxEvent, setup};
use actix_outbox_actors::{Listen, Worker};
use common::broker::{Until, consume_and_ack};
use common::relay::{TestRelay, config};
use common::worker::{WorkerEnv, delays};
use common::{TestDb, wait_for};
use sea_orm::{DatabaseConnection, TransactionTrait};
use serde_json::Value;

/// Handles `order.placed` by emitting `invoice.created` caused by it.
struct Orders {
    db: DatabaseConnection,
}

impl Actor for Orders {
    type Context = Context<Self>;
}

impl Handler<Event<Value>> for Orders {
    type Result = ResponseFuture<HandlerResult>;

    fn handle(&mut self, event: Event<Value>, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move {
            let failed = |e: actix_outbox::Error| HandlerError::failed(e.to_string());
            let invoice = OutboxEvent::json("invoice.created", event.payload())
                .map_err(failed)?
                .caused_by(&event);
            let txn = db.begin().await.map_err(|e| failed(e.into()))?;
            actix_outbox::emit_event(&txn, invoice)
                .await
                .map_err(failed)?;
            txn.commit().await.map_err(|e| failed(e.into()))?;
            Ok(())
        })
    }
}

/// What the second handler saw.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    tracking_ids: Vec<String>,
    correlation_id: String,
    causation_id: Option<String>,
}

struct Invoices(Arc<Mutex<Vec<Seen>>>);

impl Actor for Invoices {
    type Context = Context<Self>;
}

impl Handler<Event<Value>> for Invoices {
    type Result = HandlerResult;

    fn handle(&mut self, event: Event<Value>, _: &mut Context<Self>) -> HandlerResult {
        self.0.lock().expect("lock").push(Seen {
            id: event.message_id().to_string(),
            tracking_ids: event.tracking_ids().to_vec(),
            correlation_id: event.correlation_id().to_owned(),
            causation_id: event.causation_id().map(str::to_owned),
        });
        Ok(())
    }
}

/// emit → relay → handler → emit (caused_by) → relay → second handler: the second event's
/// chain is [order, invoice], its causation id the order, its correlation id the order's
/// (on the wire too, as `correlation_id`).
#[actix_rt::test]
async fn a_follow_up_event_carries_the_chain_and_the_correlation_id() {
    let t = TestDb::postgres().await;
    setup(&t.db).await.expect("setup");
    let mut env = WorkerEnv::new().await;
    let (orders, invoices) = (env.queue("orders"), env.queue("invoices"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let running = Worker::new(env.supervisor.clone(), env.config())
        .expect("config")
        .listen(
            Listen::new(["order.placed"])
                .expect("keys")
                .with_queue(orders.as_str()),
            Orders { db: t.db.clone() }.start(),
        )
        .expect("listen orders")
        .listen(
            Listen::new(["invoice.*"])
                .expect("keys")
                .with_queue(invoices.as_str()),
            Invoices(seen.clone()).start(),
        )
        .expect("listen invoices")
        .start()
        .await
        .expect("worker starts");
    // A plain queue beside the handler's, to read the invoice as it travels.
    let wire = env.broker.bind_queue(&["invoice.created"]).await;
    let relay = TestRelay::start(&t.db, &env.broker.url, config(&env.broker.exchange));

    let order = actix_outbox::emit(&t.db, "order.placed", &serde_json::json!({"order": 7}))
        .await
        .expect("emit");
    let invoice = wait_for("the invoice handled", Duration::from_secs(20), || async {
        seen.lock().expect("lock").first().cloned()
    })
    .await;
    let order = order.to_string();
    assert_eq!(invoice.tracking_ids, [order.clone(), invoice.id.clone()]);
    assert_eq!(invoice.causation_id.as_deref(), Some(order.as_str()));
    assert_eq!(invoice.correlation_id, order, "the root's id");
    let conn = lapin::Connection::connect(&env.broker.url, Default::default())
        .await
        .expect("connect");
    let on_wire = consume_and_ack(&conn, &wire, Until::Count(1, Duration::from_secs(10))).await;
    let correlation = on_wire[0]
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.to_string());
    assert_eq!(correlation.as_deref(), Some(order.as_str()));

    relay.stop().await;
    let _ = conn.close(200, "done".into()).await;
    env.broker.delete_queue(&wire).await;
    env.finish(running, &delays()).await;
    t.cleanup().await;
}
