//! The agent registry: agent names (from `agents.toml`, see [`spec`](super::spec), plus the
//! dynamic `ollama:<model>` and `demo:<ms>`) resolved to a provider adapter, a model and the
//! name's circuit breaker.
//!
//! Providers are built once from the environment through the catalogue
//! ([`providers`](super::providers)); the environment is injected so tests never touch the
//! process environment. Every agent name gets one circuit breaker, created on first use and
//! shared by every debate and every [`Agent`] value resolved for that name.

use parking_lot::{Mutex, MutexGuard};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::providers::{self, Env, ProviderEndpoint, provider_endpoints};
use super::resilience::{
    BreakerConfig, BreakerSnapshot, BreakerState, CallOutcome, CircuitBreaker, RetryPolicy,
    call_with_resilience,
};
pub use super::spec::{AgentSpec, RegistryError};
use super::spec::{load_agents_toml, parse_agents_toml};
use super::{AgentError, CompletionRequest, DeltaSink, Provider};

/// `resolve` got a name that is neither configured nor dynamic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown agent `{name}`; known agents: {} (or `ollama:<model>`, `demo:<ms>` with ms up to 60000)",
    known.join(", ")
)]
pub struct UnknownAgent {
    pub name: String,
    pub known: Vec<String>,
}

/// One configured agent for `GET /api/agents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AgentInfo {
    pub name: String,
    pub provider: String,
    pub model: String,
    /// Credentials present (or none needed).
    pub available: bool,
    pub circuit: BreakerState,
}

#[derive(Clone)]
struct Entry {
    provider_id: String,
    model: String,
    provider: Arc<dyn Provider>,
    available: bool,
}

/// Agent names, their providers and breakers. Build once at start-up and share (`Arc`).
pub struct AgentRegistry {
    entries: BTreeMap<String, Entry>,
    /// Built-in providers by id (for dynamic names).
    providers: BTreeMap<&'static str, (Arc<dyn Provider>, ProviderEndpoint)>,
    breakers: Mutex<BTreeMap<String, Arc<CircuitBreaker>>>,
    breaker_config: BreakerConfig,
    retry: RetryPolicy,
    timeout: Duration,
}

impl std::fmt::Debug for AgentRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRegistry")
            .field("agents", &self.known_names())
            .field("breaker_config", &self.breaker_config)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl AgentRegistry {
    /// Load `agents_toml` (None: the compiled-in default) and build the providers from
    /// `env`. `timeout` bounds each agent call (retries included).
    pub fn load(
        agents_toml: Option<&Path>,
        env: Env<'_>,
        breaker: BreakerConfig,
        retry: RetryPolicy,
        timeout: Duration,
    ) -> Result<AgentRegistry, RegistryError> {
        let specs = load_agents_toml(agents_toml)?;
        Ok(Self::from_specs(specs, env, breaker, retry, timeout))
    }

    /// A registry from an `agents.toml` text (tests, embedded configs).
    pub fn from_toml_str(
        text: &str,
        env: Env<'_>,
        breaker: BreakerConfig,
        retry: RetryPolicy,
        timeout: Duration,
    ) -> Result<AgentRegistry, RegistryError> {
        let specs = parse_agents_toml(text, "agents.toml")?;
        Ok(Self::from_specs(specs, env, breaker, retry, timeout))
    }

    /// A registry with no configured names (dynamic names still resolve; demo needs no
    /// environment). Add agents with [`with_provider`](Self::with_provider).
    pub fn empty(breaker: BreakerConfig, retry: RetryPolicy, timeout: Duration) -> AgentRegistry {
        Self::from_specs(Vec::new(), &|_| None, breaker, retry, timeout)
    }

    fn from_specs(
        specs: Vec<AgentSpec>,
        env: Env<'_>,
        breaker_config: BreakerConfig,
        retry: RetryPolicy,
        timeout: Duration,
    ) -> AgentRegistry {
        let providers: BTreeMap<&'static str, (Arc<dyn Provider>, ProviderEndpoint)> =
            provider_endpoints(env)
                .into_iter()
                .map(|ep| (ep.id, (providers::build(&ep, env), ep)))
                .collect();
        let entries = specs
            .into_iter()
            .map(|spec| {
                // parse_agents_toml only lets known provider ids through.
                let (provider, ep) = &providers[spec.provider.as_str()];
                let entry = Entry {
                    provider_id: spec.provider,
                    model: spec.model,
                    provider: Arc::clone(provider),
                    available: ep.available(),
                };
                (spec.name, entry)
            })
            .collect();
        AgentRegistry {
            entries,
            providers,
            breakers: Mutex::new(BTreeMap::new()),
            breaker_config,
            retry,
            timeout,
        }
    }

    /// Register (or replace) `name` with a custom provider, e.g. a scripted fake in tests.
    /// Its availability is `provider.available()`.
    pub fn with_provider(
        mut self,
        name: impl Into<String>,
        provider: Arc<dyn Provider>,
        model: impl Into<String>,
    ) -> AgentRegistry {
        let name = name.into().trim().to_owned();
        self.lock_breakers().remove(&name);
        let entry = Entry {
            provider_id: provider.id().to_owned(),
            model: model.into(),
            available: provider.available(),
            provider,
        };
        self.entries.insert(name, entry);
        self
    }

    pub fn breaker_config(&self) -> BreakerConfig {
        self.breaker_config
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Budget of one agent call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Configured names, sorted.
    pub fn known_names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Where each built-in provider is reached, per the environment.
    pub fn endpoints(&self) -> Vec<ProviderEndpoint> {
        self.providers.values().map(|(_, ep)| ep.clone()).collect()
    }

    /// The provider and model a name stands for (configured or dynamic).
    pub fn spec(&self, name: &str) -> Option<AgentSpec> {
        let name = name.trim();
        match self.entries.get(name) {
            Some(e) => Some(AgentSpec {
                name: name.to_owned(),
                provider: e.provider_id.clone(),
                model: e.model.clone(),
            }),
            None => AgentSpec::dynamic(name),
        }
    }

    /// An agent by name (trimmed, case-sensitive): a configured name, `ollama:<model>`
    /// or `demo:<ms>`.
    pub fn resolve(&self, name: &str) -> Result<Agent, UnknownAgent> {
        let name = name.trim();
        let entry = match self.entries.get(name) {
            Some(entry) => entry.clone(),
            None => {
                let spec = AgentSpec::dynamic(name).ok_or_else(|| UnknownAgent {
                    name: name.to_owned(),
                    known: self.known_names(),
                })?;
                let (provider, ep) = &self.providers[spec.provider.as_str()];
                Entry {
                    provider_id: spec.provider,
                    model: spec.model,
                    provider: Arc::clone(provider),
                    available: ep.available(),
                }
            }
        };
        Ok(Agent {
            name: Arc::from(name),
            provider_id: Arc::from(entry.provider_id.as_str()),
            model: Arc::from(entry.model.as_str()),
            provider: entry.provider,
            available: entry.available,
            breaker: self.breaker_for(name),
            retry: self.retry,
            timeout: self.timeout,
        })
    }

    /// Every configured agent with its availability and breaker state.
    pub fn list(&self) -> Vec<AgentInfo> {
        let breakers = self.lock_breakers();
        self.entries
            .iter()
            .map(|(name, e)| AgentInfo {
                name: name.clone(),
                provider: e.provider_id.clone(),
                model: e.model.clone(),
                available: e.available,
                circuit: breakers
                    .get(name)
                    .map_or(BreakerState::Closed, |b| b.state()),
            })
            .collect()
    }

    /// Snapshots of every breaker created so far (agents that have been resolved), by name.
    pub fn breakers(&self) -> Vec<(String, BreakerSnapshot)> {
        self.lock_breakers()
            .iter()
            .map(|(name, b)| (name.clone(), b.snapshot()))
            .collect()
    }

    /// (open, half-open) breakers, for health.
    pub fn breaker_counts(&self) -> (usize, usize) {
        let breakers = self.lock_breakers();
        breakers
            .values()
            .fold((0, 0), |(open, half), b| match b.state() {
                BreakerState::Open => (open + 1, half),
                BreakerState::HalfOpen => (open, half + 1),
                BreakerState::Closed => (open, half),
            })
    }

    /// Close `name`'s breaker (operator action). False if the name is unknown.
    pub fn reset_breaker(&self, name: &str) -> bool {
        let name = name.trim();
        if let Some(b) = self.lock_breakers().get(name) {
            b.reset();
            return true;
        }
        self.entries.contains_key(name) || AgentSpec::dynamic(name).is_some()
    }

    /// Every breaker created so far, and one for each configured agent.
    pub fn all_breakers(&self) -> Vec<(String, Arc<CircuitBreaker>)> {
        for name in self.entries.keys() {
            self.breaker_for(name);
        }
        self.lock_breakers()
            .iter()
            .map(|(n, b)| (n.clone(), b.clone()))
            .collect()
    }

    /// The breaker of `name` (created on first use), for breakers shared between instances.
    pub fn breaker(&self, name: &str) -> Arc<CircuitBreaker> {
        self.breaker_for(name)
    }

    fn breaker_for(&self, name: &str) -> Arc<CircuitBreaker> {
        let mut breakers = self.lock_breakers();
        Arc::clone(
            breakers
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(CircuitBreaker::new(name, self.breaker_config))),
        )
    }

    fn lock_breakers(&self) -> MutexGuard<'_, BTreeMap<String, Arc<CircuitBreaker>>> {
        self.breakers.lock()
    }
}

/// A resolved agent: provider, model, the name's shared breaker and the call policy.
/// Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    name: Arc<str>,
    provider_id: Arc<str>,
    model: Arc<str>,
    provider: Arc<dyn Provider>,
    available: bool,
    breaker: Arc<CircuitBreaker>,
    retry: RetryPolicy,
    timeout: Duration,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.name)
            .field("provider", &self.provider_id)
            .field("model", &self.model)
            .field("available", &self.available)
            .finish()
    }
}

impl Agent {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn provider_id(&self) -> &str {
        &self.provider_id
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// Credentials present (or none needed).
    pub fn available(&self) -> bool {
        self.available
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    /// Budget of one call (retries included).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The same agent with another call budget (e.g. a debate's remaining time).
    pub fn with_timeout(mut self, timeout: Duration) -> Agent {
        self.timeout = timeout;
        self
    }

    /// One call with retries, the breaker, the timeout and cancellation
    /// (see [`call_with_resilience`]).
    pub async fn call(
        &self,
        request: &CompletionRequest,
        deltas: Option<&DeltaSink>,
        cancel: &CancellationToken,
    ) -> Result<CallOutcome, AgentError> {
        call_with_resilience(
            &self.name,
            self.provider.as_ref(),
            &self.model,
            request,
            deltas,
            &self.breaker,
            &self.retry,
            self.timeout,
            cancel,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::agents::providers::tests::{env_of, no_env};
    use crate::agents::{Completion, Usage};

    fn registry(env: &dyn Fn(&str) -> Option<String>) -> AgentRegistry {
        AgentRegistry::load(
            None,
            env,
            BreakerConfig::default(),
            RetryPolicy::default(),
            Duration::from_secs(30),
        )
        .expect("built-in agents.toml is valid")
    }

    /// Always fails with a 503 and counts calls.
    struct Failing(AtomicU32);

    #[async_trait]
    impl Provider for Failing {
        fn id(&self) -> &str {
            "fake"
        }
        fn available(&self) -> bool {
            true
        }
        async fn complete(
            &self,
            _model: &str,
            _request: &CompletionRequest,
            _deltas: Option<&DeltaSink>,
        ) -> Result<Completion, AgentError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(AgentError::Server {
                status: 503,
                message: "down".into(),
            })
        }
    }

    /// Echoes the model it was called with.
    struct Echo;

    #[async_trait]
    impl Provider for Echo {
        fn id(&self) -> &str {
            "echo"
        }
        fn available(&self) -> bool {
            false
        }
        async fn complete(
            &self,
            model: &str,
            request: &CompletionRequest,
            _deltas: Option<&DeltaSink>,
        ) -> Result<Completion, AgentError> {
            let text = format!("{model}: {}", request.messages[0].content);
            Ok(Completion {
                usage: Usage::estimate("", &text),
                text,
                model: model.to_owned(),
                finish_reason: None,
            })
        }
    }

    #[test]
    fn built_in_agents_toml_maps_names_to_providers() {
        let r = registry(&no_env);
        let expect = [
            ("claude", "anthropic", "claude-sonnet-4-5"),
            ("gpt-4", "openai", "gpt-4o"),
            ("gpt-4o-mini", "openai", "gpt-4o-mini"),
            ("gemini", "gemini", "gemini-2.5-pro"),
            ("grok", "xai", "grok-4"),
            ("mistral", "mistral", "mistral-large-latest"),
            ("deepseek", "deepseek", "deepseek-chat"),
            ("demo", "demo", "demo"),
        ];
        for (name, provider, model) in expect {
            let agent = r.resolve(name).unwrap();
            assert_eq!(agent.name(), name);
            assert_eq!(agent.provider_id(), provider, "{name}");
            assert_eq!(agent.model(), model, "{name}");
        }
        let openrouter = r.resolve("openrouter").unwrap();
        assert_eq!(openrouter.provider_id(), "openrouter");
        assert!(!openrouter.model().is_empty());
        assert_eq!(r.known_names().len(), 9);
        let mut sorted = r.known_names();
        sorted.sort();
        assert_eq!(sorted, r.known_names());
    }

    #[test]
    fn dynamic_names_resolve() {
        let r = registry(&no_env);
        let a = r.resolve("ollama:llama3.1:8b").unwrap();
        assert_eq!(
            (a.provider_id(), a.model(), a.name()),
            ("ollama", "llama3.1:8b", "ollama:llama3.1:8b")
        );
        assert!(a.available(), "ollama needs no key");
        let d = r.resolve("demo:250").unwrap();
        assert_eq!((d.provider_id(), d.model()), ("demo", "demo:250"));
        assert!(d.available());
        for bad in ["ollama:", "demo:", "demo:fast", "demo:-5"] {
            assert!(r.resolve(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_agent_lists_known_names_and_names_are_trimmed_case_sensitive() {
        let r = registry(&no_env);
        assert_eq!(r.resolve("  claude \n").unwrap().name(), "claude");
        let err = r.resolve("Claude").unwrap_err();
        assert_eq!(err.name, "Claude");
        assert_eq!(err.known, r.known_names());
        let msg = err.to_string();
        assert!(msg.contains("unknown agent `Claude`"), "{msg}");
        for name in ["claude", "gpt-4", "gemini", "demo", "ollama:<model>"] {
            assert!(msg.contains(name), "{msg} lacks {name}");
        }
    }

    #[test]
    fn keys_in_env_make_agents_available() {
        let env = env_of(&[("ANTHROPIC_API_KEY", "sk-ant"), ("XAI_API_KEY", "  ")]);
        let r = registry(&env);
        let list: HashMap<String, AgentInfo> =
            r.list().into_iter().map(|i| (i.name.clone(), i)).collect();
        assert_eq!(list.len(), 9);
        assert!(list["claude"].available);
        assert!(!list["gpt-4"].available);
        assert!(!list["gemini"].available);
        assert!(!list["grok"].available, "blank key is no key");
        assert!(list["demo"].available);
        assert_eq!(list["claude"].circuit, BreakerState::Closed);
        assert_eq!(list["claude"].provider, "anthropic");
        assert!(r.resolve("claude").unwrap().available());
        assert!(!r.resolve("mistral").unwrap().available());

        let json = serde_json::to_value(&list["claude"]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "claude", "provider": "anthropic",
                "model": "claude-sonnet-4-5", "available": true, "circuit": "closed"})
        );

        let all = env_of(&[
            ("OPENAI_API_KEY", "a"),
            ("GEMINI_API_KEY", "b"),
            ("MISTRAL_API_KEY", "c"),
            ("DEEPSEEK_API_KEY", "d"),
            ("OPENROUTER_API_KEY", "e"),
            ("XAI_API_KEY", "f"),
            ("ANTHROPIC_API_KEY", "g"),
        ]);
        assert!(registry(&all).list().iter().all(|i| i.available));
    }

    #[test]
    fn endpoints_come_from_the_catalogue_and_the_env() {
        let env = env_of(&[
            ("ARAGORA_XAI_BASE_URL", "http://x/v1/"),
            ("OLLAMA_HOST", "gpu-box:11500"),
            ("GEMINI_API_KEY", "g"),
        ]);
        let mut expected = provider_endpoints(&env);
        expected.sort_by_key(|e| e.id);
        assert_eq!(registry(&env).endpoints(), expected);
        let eps: HashMap<&str, ProviderEndpoint> = registry(&env)
            .endpoints()
            .into_iter()
            .map(|e| (e.id, e))
            .collect();
        assert_eq!(eps["xai"].base_url, "http://x/v1");
        assert_eq!(eps["ollama"].base_url, "http://gpu-box:11500/v1");
        assert!(eps["gemini"].key_set && eps["gemini"].configured);
        assert_eq!(eps.len(), providers::PROVIDER_IDS.len());
    }

    #[test]
    fn loads_an_operator_file_from_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agents.toml");
        std::fs::write(
            &path,
            "# mine\n[agents.local]\nprovider = \"ollama\"\nmodel = \"qwen2.5\"\n\
             [agents.slow-demo]\nprovider = \"demo\"\nmodel = \"demo:50\"\n",
        )
        .unwrap();
        let r = AgentRegistry::load(
            Some(&path),
            &no_env,
            BreakerConfig::default(),
            RetryPolicy::default(),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(r.known_names(), vec!["local", "slow-demo"]);
        assert_eq!(r.resolve("local").unwrap().model(), "qwen2.5");
        assert!(
            r.resolve("claude").is_err(),
            "the file replaces the default"
        );

        std::fs::write(
            &path,
            "[agents.broken]\nprovider = \"nope\"\nmodel = \"m\"\n",
        )
        .unwrap();
        let err = AgentRegistry::load(
            Some(&path),
            &no_env,
            BreakerConfig::default(),
            RetryPolicy::default(),
            Duration::from_secs(5),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("`broken`"),
            "{msg}"
        );

        let missing = dir.path().join("missing.toml");
        let err = AgentRegistry::load(
            Some(&missing),
            &no_env,
            BreakerConfig::default(),
            RetryPolicy::default(),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(matches!(err, RegistryError::Read { .. }));
        assert!(err.to_string().contains("missing.toml"));
    }

    #[tokio::test(start_paused = true)]
    async fn resolved_agents_share_one_breaker_per_name() {
        let failing = Arc::new(Failing(AtomicU32::new(0)));
        let r = AgentRegistry::load(
            None,
            &no_env,
            BreakerConfig {
                failure_threshold: 2,
                ..BreakerConfig::default()
            },
            RetryPolicy::none(),
            Duration::from_secs(5),
        )
        .unwrap()
        .with_provider("flaky", failing.clone(), "m1");
        let first = r.resolve("flaky").unwrap();
        let second = r.resolve(" flaky ").unwrap();
        assert!(Arc::ptr_eq(first.breaker(), second.breaker()));
        assert!(r.breakers().iter().any(|(n, _)| n == "flaky"));
        let cancel = CancellationToken::new();
        let req = CompletionRequest::single("s", "p");

        assert!(first.call(&req, None, &cancel).await.is_err());
        assert!(second.call(&req, None, &cancel).await.is_err());
        assert_eq!(failing.0.load(Ordering::SeqCst), 2);
        // Opened by calls through two different Agent values; a third resolve sees it.
        let third = r.resolve("flaky").unwrap();
        assert_eq!(third.breaker_state(), BreakerState::Open);
        assert!(matches!(
            third.call(&req, None, &cancel).await,
            Err(AgentError::CircuitOpen(_))
        ));
        assert_eq!(failing.0.load(Ordering::SeqCst), 2);

        assert_eq!(r.breaker_counts(), (1, 0));
        let info = r.list().into_iter().find(|i| i.name == "flaky").unwrap();
        assert_eq!(info.circuit, BreakerState::Open);
        assert_eq!(info.provider, "fake");
        let (_, snap) = r
            .breakers()
            .into_iter()
            .find(|(n, _)| n == "flaky")
            .unwrap();
        assert_eq!(snap.state, BreakerState::Open);
        assert_eq!(snap.consecutive_failures, 2);

        // Another name is unaffected.
        assert_eq!(
            r.resolve("demo").unwrap().breaker_state(),
            BreakerState::Closed
        );

        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(r.breaker_counts(), (0, 1));

        assert!(r.reset_breaker("flaky"));
        assert_eq!(first.breaker_state(), BreakerState::Closed);
        assert_eq!(r.breaker_counts(), (0, 0));
        assert!(r.reset_breaker("claude"), "known but never used");
        assert!(!r.reset_breaker("nobody"));
    }

    #[tokio::test]
    async fn custom_providers_and_demo_calls_go_through_the_registry() {
        let r = AgentRegistry::empty(
            BreakerConfig::default(),
            RetryPolicy::default(),
            Duration::from_secs(5),
        )
        .with_provider("scripted", Arc::new(Echo), "echo-1");
        assert_eq!(r.known_names(), vec!["scripted"]);
        let agent = r.resolve("scripted").unwrap();
        assert_eq!((agent.provider_id(), agent.model()), ("echo", "echo-1"));
        assert!(!agent.available());
        let cancel = CancellationToken::new();
        let out = agent
            .call(&CompletionRequest::single("s", "hello"), None, &cancel)
            .await
            .unwrap();
        assert_eq!(out.completion.text, "echo-1: hello");
        assert_eq!(out.attempts, 1);

        // Dynamic demo works in an empty registry.
        let demo = r.resolve("demo:0").unwrap();
        let req = CompletionRequest::single(
            "Aragora-Phase: proposal\nAragora-Stance: skeptic\nAragora-Seat: demo:0",
            "Task: Pick a database",
        );
        let out = demo.call(&req, None, &cancel).await.unwrap();
        assert!(out.completion.text.starts_with("[demo]"));
        assert!(out.completion.text.contains("Pick a database"));
    }

    #[test]
    fn registry_agents_and_call_futures_can_cross_threads() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: &T) {}
        let r = registry(&no_env);
        send_sync(&r);
        let agent = r.resolve("demo").unwrap();
        send_sync(&agent);
        let req = CompletionRequest::single("s", "p");
        let cancel = CancellationToken::new();
        let fut = agent.call(&req, None, &cancel);
        send(&fut);
        drop(fut);
    }

    #[tokio::test(start_paused = true)]
    async fn registry_timeout_bounds_slow_agents() {
        let r = AgentRegistry::load(
            None,
            &no_env,
            BreakerConfig::default(),
            RetryPolicy::default(),
            Duration::from_secs(1),
        )
        .unwrap();
        let slow = r.resolve("demo:5000").unwrap();
        let started = tokio::time::Instant::now();
        let err = slow
            .call(
                &CompletionRequest::single("s", "p"),
                None,
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(err, AgentError::Timeout(Duration::from_secs(1)));
        assert_eq!(started.elapsed(), Duration::from_secs(1));

        let patient = slow.with_timeout(Duration::from_secs(10));
        let out = patient
            .call(
                &CompletionRequest::single("s", "p"),
                None,
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert!(out.latency >= Duration::from_secs(5));
    }
}
