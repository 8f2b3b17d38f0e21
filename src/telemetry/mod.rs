//! Telemetry: structured JSON logging (and, later, metrics and tracing exporters).
//!
//! Rule: every log line is one JSON object carrying the fields of its event and of all enclosing
//! spans, so a `correlation_id` or `debate_id` set once on a span is visible on every line below
//! it. See [`logging`] for the line format, the file split and the public entry points.

pub mod logging;
