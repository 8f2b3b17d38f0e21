//! Aragora: a server that runs structured debates between LLM agents and streams them live.

pub mod store;
pub mod telemetry;
