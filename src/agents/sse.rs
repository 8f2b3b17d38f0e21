//! Placeholder: replaced by the SSE parser.
