//! Placeholder: replaced by the deterministic demo provider.
