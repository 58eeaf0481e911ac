//! Included by the `relay` example and the benchmark (`#[path]`): recording metrics on request.

use actix_outbox::Error;

/// `OUTBOX_METRICS=1`: record every metric into a Prometheus recorder (not served; its
/// histograms drained every 5 s), as a process exporting metrics would. The benchmark's
/// "metrics on" runs set it for every process.
pub(crate) fn record_metrics_if_asked() -> Result<bool, Error> {
    if std::env::var("OUTBOX_METRICS").as_deref() != Ok("1") {
        return Ok(false);
    }
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1, 1.0, 10.0])
        .map_err(|e| Error::InvalidConfig {
            field: "OUTBOX_METRICS",
            reason: e.to_string(),
        })?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| Error::InvalidConfig {
        field: "OUTBOX_METRICS",
        reason: e.to_string(),
    })?;
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            handle.run_upkeep();
        }
    });
    Ok(true)
}
