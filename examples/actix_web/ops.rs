//! The operator's side of the example: `GET /metrics` (Prometheus text exposition of every
//! metric the relay, the worker and their broker connections record) and `GET /health`,
//! `GET /health/live` (the pipeline's readiness and liveness, as JSON).

use actix_outbox_actors::health::Health;
use actix_web::{HttpResponse, web};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// What `/metrics` and `/health` read: the Prometheus recorder's handle and the health
/// checks of the pipeline.
#[derive(Debug, Clone)]
pub(crate) struct Ops {
    /// Renders every recorded metric.
    pub(crate) metrics: PrometheusHandle,
    /// The database, the broker connections, the relay and the worker.
    pub(crate) health: Health,
}

/// Installs the process's metrics recorder (Prometheus exposition, histograms with buckets
/// from 1 ms to 10 s). Call it before starting the pipeline: actors register their metrics
/// when they start.
pub(crate) fn install_metrics() -> Result<PrometheusHandle, String> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0])
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    Ok(handle)
}

/// `/metrics`, `/health` and `/health/live`, reading `ops`.
pub(crate) fn configure_ops(ops: Ops) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(ops))
            .route("/metrics", web::get().to(serve_metrics))
            .route("/health", web::get().to(health))
            .route("/health/live", web::get().to(liveness));
    }
}

/// `GET /metrics`: the Prometheus text exposition.
async fn serve_metrics(ops: web::Data<Ops>) -> HttpResponse {
    ops.metrics.run_upkeep();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(ops.metrics.render())
}

/// `GET /health`: `200` when every part is ready, else `503`; the body names each part.
async fn health(ops: web::Data<Ops>) -> HttpResponse {
    let report = ops.health.check().await;
    match report.ready {
        true => HttpResponse::Ok().json(report),
        false => HttpResponse::ServiceUnavailable().json(report),
    }
}

/// `GET /health/live`: `200` while every part's actors answer, else `503`.
async fn liveness(ops: web::Data<Ops>) -> HttpResponse {
    let report = ops.health.check().await;
    match report.live {
        true => HttpResponse::Ok().json(report),
        false => HttpResponse::ServiceUnavailable().json(report),
    }
}
