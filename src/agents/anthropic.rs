//! Placeholder: replaced by the Anthropic Messages API adapter.
use super::*;

pub struct Anthropic;

impl Anthropic {
    /// `base_url` e.g. `https://api.anthropic.com`; `api_key` from ANTHROPIC_API_KEY.
    pub fn new(_base_url: String, _api_key: Option<String>) -> Self {
        Anthropic
    }
}

#[async_trait]
impl Provider for Anthropic {
    fn id(&self) -> &str {
        "anthropic"
    }
    fn available(&self) -> bool {
        false
    }
    async fn complete(
        &self,
        _model: &str,
        _request: &CompletionRequest,
        _deltas: Option<&DeltaSink>,
    ) -> Result<Completion, AgentError> {
        Err(AgentError::MissingKey("ANTHROPIC_API_KEY".into()))
    }
}
