//! Placeholder: replaced by the shared provider HTTP client.
