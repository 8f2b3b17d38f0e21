//! Placeholder: replaced by the OpenAI Chat Completions adapter (and compatible services).
use super::*;

pub struct OpenAiCompatible {
    id: String,
}

impl OpenAiCompatible {
    /// `id`: openai, openrouter, xai, deepseek, mistral or ollama. `base_url` includes the
    /// version prefix (e.g. `https://api.openai.com/v1`, `http://localhost:11434/v1`).
    /// `key_env` names the variable the key comes from (for error messages); `api_key` None
    /// with `key_required` false (ollama) is fine.
    pub fn new(
        id: &str,
        _base_url: String,
        _api_key: Option<String>,
        _key_env: &'static str,
        _key_required: bool,
    ) -> Self {
        OpenAiCompatible { id: id.to_owned() }
    }
}

#[async_trait]
impl Provider for OpenAiCompatible {
    fn id(&self) -> &str {
        &self.id
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
        Err(AgentError::MissingKey("OPENAI_API_KEY".into()))
    }
}
