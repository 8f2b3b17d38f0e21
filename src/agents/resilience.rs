//! Placeholder: replaced by retries and circuit breakers.
pub struct BreakerConfig;
pub enum BreakerState {}
pub struct CircuitBreaker;
pub struct RetryPolicy;
