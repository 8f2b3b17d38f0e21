//! Integration tests, one binary: each module covers one layer. Servers are started on
//! port 0 with spawn_app(); the Postgres and Redis tests use the real servers
//! (ARAGORA_TEST_DATABASE_URL, ARAGORA_TEST_REDIS_URL) and fail when they are unreachable.

// The server's locks are parking_lot's (clippy.toml); test fixtures may use std's and unwrap.
#![allow(clippy::disallowed_types)]

mod access;
mod admin;
mod auth;
mod cli;
mod compat;
mod debates;
mod deploy;
mod durable;
mod faults;
mod health;
mod helpers;
mod observability;
mod openapi;
mod pipeline;
mod process;
mod providers;
mod ratelimit;
mod receipts;
mod shutdown;
mod steering;
mod store;
mod traces;
mod ws;
mod ws_live;
