//! Aragora: a server that runs structured debates between LLM agents and streams them live.
//!
//! Module map: `cli` (subcommands) → `config` (layered, validated settings) → `app`
//! (state and start-up) → `http` (REST API) and `ws` (WebSocket server), over `store`
//! (SQLite/Postgres) and `telemetry` (logs, metrics); `admin` serves the embedded browser
//! console at `/admin`.

pub mod admin;
pub mod agents;
pub mod app;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod config;
pub mod debate;
pub mod debate_cli;
pub mod error;
pub mod http;
pub mod lockfile;
pub mod ops;
pub mod pricing;
pub mod ratelimit;
pub mod ratings;
pub mod receipts;
pub mod redis_client;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod watch;
pub mod ws;
