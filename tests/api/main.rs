//! Integration tests, one binary: each module covers one layer.

mod store;
