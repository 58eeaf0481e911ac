//! OpenTelemetry trace context through the outbox (feature `otel`).
//!
//! `emit` stores the W3C trace context of the current `tracing` span (as seen by a
//! `tracing-opentelemetry` layer) in the event's headers: `traceparent` and, when not empty,
//! `tracestate`. They travel as AMQP headers of the same names, so the trace of the request
//! that emitted an event continues in the relay (a PRODUCER span) and in the consumer (a
//! CONSUMER span around the handler), and any other OpenTelemetry-aware consumer finds them
//! too. An event whose headers already carry a `traceparent` keeps it.
//!
//! Without a `tracing-opentelemetry` layer installed there is no valid span context, and
//! nothing is stored.

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use serde_json::{Map, Value};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header with the trace id, parent span id and flags.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header with vendor-specific trace state.
pub const TRACESTATE: &str = "tracestate";

/// Adds the current span's trace context to `headers`, unless they already carry one or
/// there is no valid current span context.
pub(crate) fn inject_current(headers: &mut Map<String, Value>) {
    if headers.contains_key(TRACEPARENT) {
        return;
    }
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return;
    }
    headers.insert(TRACEPARENT.to_owned(), Value::from(traceparent(sc)));
    let state = sc.trace_state().header();
    if !state.is_empty() {
        headers.insert(TRACESTATE.to_owned(), Value::from(state));
    }
}

/// The `traceparent` value of a span context (version 00).
#[must_use]
pub fn traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// The remote parent context carried in `headers` (`traceparent`, `tracestate`), if they hold
/// a valid one: pass it to `tracing_opentelemetry::OpenTelemetrySpanExt::set_parent`.
#[must_use]
pub fn extract(headers: &Map<String, Value>) -> Option<Context> {
    let parent = headers.get(TRACEPARENT)?.as_str()?;
    let state = headers
        .get(TRACESTATE)
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let sc = parse_traceparent(parent, state)?;
    Some(Context::new().with_remote_span_context(sc))
}

/// Parses `00-<32 hex>-<16 hex>-<2 hex>` (other versions: the same first four fields).
fn parse_traceparent(value: &str, state: TraceState) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sc = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, state);
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let mut headers = Map::new();
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert(TRACEPARENT.into(), Value::from(value));
        headers.insert(TRACESTATE.into(), Value::from("vendor=x"));
        let cx = extract(&headers).expect("valid");
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(traceparent(sc), value);
        assert_eq!(sc.trace_state().header(), "vendor=x");
    }

    #[test]
    fn malformed_or_zero_contexts_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz",
        ] {
            let mut headers = Map::new();
            headers.insert(TRACEPARENT.into(), Value::from(bad));
            assert!(extract(&headers).is_none(), "{bad:?}");
        }
        assert!(extract(&Map::new()).is_none());
    }

    #[test]
    fn nothing_is_injected_without_a_span_context() {
        let mut headers = Map::new();
        inject_current(&mut headers);
        assert!(headers.is_empty());
    }
}
