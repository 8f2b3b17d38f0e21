//! Placeholder: replaced by the agent registry.
pub struct Agent;
pub struct AgentRegistry;
pub struct AgentSpec;
pub struct UnknownAgent;
