//! Placeholder: replaced by the Gemini generateContent adapter.
use super::*;

pub struct Gemini;

impl Gemini {
    /// `base_url` e.g. `https://generativelanguage.googleapis.com`; key from GEMINI_API_KEY.
    pub fn new(_base_url: String, _api_key: Option<String>) -> Self {
        Gemini
    }
}

#[async_trait]
impl Provider for Gemini {
    fn id(&self) -> &str {
        "gemini"
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
        Err(AgentError::MissingKey("GEMINI_API_KEY".into()))
    }
}
