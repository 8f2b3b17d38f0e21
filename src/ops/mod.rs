//! Operator actions behind the admin and debug endpoints: the connectivity check and cache
//! cleanup. No HTTP in here; `http::system` and `http::ops` are the thin handlers.

pub mod caches;
pub mod connectivity;
