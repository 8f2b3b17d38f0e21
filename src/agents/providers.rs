//! The provider catalogue: every provider an `agents.toml` entry may name, in one table.
//!
//! Rule: a provider's facts — id, wire format, key variable, base URL variable and default,
//! pricing key — are written in [`PROVIDERS`] and nowhere else. The config reads the
//! variables listed here ([`env_vars`]), the registry builds adapters and decides
//! availability from here ([`provider_endpoints`], [`build`]), pricing looks prices up by
//! [`pricing_key`], and the connectivity check probes the endpoints built from here. Adding
//! an OpenAI-compatible provider is one row; a new wire format is a [`WireFormat`] variant,
//! its adapter file and one arm in [`build`].

use std::sync::Arc;

use super::Provider;
use super::anthropic::Anthropic;
use super::demo::DemoProvider;
use super::gemini::Gemini;
use super::http::Connection;
use super::openai::OpenAiCompatible;

/// How a provider is spoken to: which adapter serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// Anthropic Messages API (`anthropic.rs`).
    Anthropic,
    /// OpenAI Chat Completions and the services that copy it (`openai.rs`).
    OpenAiChat {
        /// Send the output limit as `max_completion_tokens` (OpenAI's reasoning models
        /// reject `max_tokens`); compatible services get `max_tokens`.
        max_completion_tokens: bool,
        /// Ask for usage in streams (`stream_options.include_usage`). Off for services that
        /// validate parameters strictly (Mistral reports usage in its last chunk unasked).
        stream_usage: bool,
    },
    /// Google Gemini API (`gemini.rs`).
    Gemini,
    /// The offline demo agents (`demo.rs`): no network, no key.
    Demo,
}

/// A variable giving a host (`host[:port]`, or a URL) from which the base URL is derived
/// when the base URL variable is unset: Ollama's own `OLLAMA_HOST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostVar {
    pub env: &'static str,
    /// Port used when the host names none.
    pub default_port: u16,
    /// Path appended to the host's URL (`/v1`).
    pub path: &'static str,
}

/// One provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderInfo {
    /// The id `agents.toml` names, reported in `GET /api/agents` and usage rows.
    pub id: &'static str,
    pub wire: WireFormat,
    /// The variable the API key comes from (None: never takes a key).
    pub key_env: Option<&'static str>,
    /// Calls fail with `missing_key` (and the agent is unavailable) without the key.
    pub key_required: bool,
    /// The base URL override (`ARAGORA_<ID>_BASE_URL`; None: no network).
    pub base_url_env: Option<&'static str>,
    /// The vendor's URL; empty for `demo`. Includes the version prefix for OpenAI-style
    /// services (`…/v1`), not for Anthropic and Gemini (their adapters add it).
    pub default_base_url: &'static str,
    /// Another variable the base URL may come from.
    pub host_env: Option<HostVar>,
    /// The `[providers.<key>]` table of `config/pricing.toml` that prices its calls.
    pub pricing_key: &'static str,
}

impl ProviderInfo {
    /// A provider that needs its key, priced under its own id.
    const fn keyed(
        id: &'static str,
        wire: WireFormat,
        key_env: &'static str,
        base_url_env: &'static str,
        default_base_url: &'static str,
    ) -> ProviderInfo {
        ProviderInfo {
            id,
            wire,
            key_env: Some(key_env),
            key_required: true,
            base_url_env: Some(base_url_env),
            default_base_url,
            host_env: None,
            pricing_key: id,
        }
    }
}

/// OpenAI itself.
const OPENAI_CHAT: WireFormat = WireFormat::OpenAiChat {
    max_completion_tokens: true,
    stream_usage: true,
};
/// A service speaking OpenAI's format that accepts `stream_options`.
const COMPATIBLE_CHAT: WireFormat = WireFormat::OpenAiChat {
    max_completion_tokens: false,
    stream_usage: true,
};
/// A compatible service that rejects unknown parameters such as `stream_options`.
const STRICT_COMPATIBLE_CHAT: WireFormat = WireFormat::OpenAiChat {
    max_completion_tokens: false,
    stream_usage: false,
};

/// Every provider. The order is the one error messages list them in.
pub const PROVIDERS: [ProviderInfo; 9] = [
    ProviderInfo::keyed(
        "anthropic",
        WireFormat::Anthropic,
        "ANTHROPIC_API_KEY",
        "ARAGORA_ANTHROPIC_BASE_URL",
        "https://api.anthropic.com",
    ),
    ProviderInfo::keyed(
        "openai",
        OPENAI_CHAT,
        "OPENAI_API_KEY",
        "ARAGORA_OPENAI_BASE_URL",
        "https://api.openai.com/v1",
    ),
    ProviderInfo::keyed(
        "gemini",
        WireFormat::Gemini,
        "GEMINI_API_KEY",
        "ARAGORA_GEMINI_BASE_URL",
        "https://generativelanguage.googleapis.com",
    ),
    ProviderInfo::keyed(
        "xai",
        COMPATIBLE_CHAT,
        "XAI_API_KEY",
        "ARAGORA_XAI_BASE_URL",
        "https://api.x.ai/v1",
    ),
    ProviderInfo::keyed(
        "mistral",
        STRICT_COMPATIBLE_CHAT,
        "MISTRAL_API_KEY",
        "ARAGORA_MISTRAL_BASE_URL",
        "https://api.mistral.ai/v1",
    ),
    ProviderInfo::keyed(
        "deepseek",
        COMPATIBLE_CHAT,
        "DEEPSEEK_API_KEY",
        "ARAGORA_DEEPSEEK_BASE_URL",
        "https://api.deepseek.com/v1",
    ),
    ProviderInfo::keyed(
        "openrouter",
        COMPATIBLE_CHAT,
        "OPENROUTER_API_KEY",
        "ARAGORA_OPENROUTER_BASE_URL",
        "https://openrouter.ai/api/v1",
    ),
    // Local: a key is sent when set (for a proxy in front), never required. Its OpenAI
    // layer honours `stream_options` in current releases and ignores it in older ones.
    ProviderInfo {
        id: "ollama",
        wire: COMPATIBLE_CHAT,
        key_env: Some("OLLAMA_API_KEY"),
        key_required: false,
        base_url_env: Some("ARAGORA_OLLAMA_BASE_URL"),
        default_base_url: "http://localhost:11434/v1",
        host_env: Some(HostVar {
            env: "OLLAMA_HOST",
            default_port: 11434,
            path: "/v1",
        }),
        pricing_key: "ollama",
    },
    ProviderInfo {
        id: "demo",
        wire: WireFormat::Demo,
        key_env: None,
        key_required: false,
        base_url_env: None,
        default_base_url: "",
        host_env: None,
        pricing_key: "demo",
    },
];

/// Provider ids an `agents.toml` entry may name, in catalogue order.
pub const PROVIDER_IDS: [&str; PROVIDERS.len()] = {
    let mut ids = [""; PROVIDERS.len()];
    let mut i = 0;
    while i < PROVIDERS.len() {
        ids[i] = PROVIDERS[i].id;
        i += 1;
    }
    ids
};

/// The catalogue entry of `id`.
pub fn get(id: &str) -> Option<&'static ProviderInfo> {
    PROVIDERS.iter().find(|p| p.id == id)
}

/// Every environment variable a provider reads: keys, base URL overrides, host variables.
/// The config reads exactly these (and only from the environment).
pub fn env_vars() -> impl Iterator<Item = &'static str> {
    PROVIDERS.iter().flat_map(|p| {
        [p.key_env, p.host_env.map(|h| h.env), p.base_url_env]
            .into_iter()
            .flatten()
    })
}

/// Whether `name` is a provider's API key variable (its value is a secret).
pub fn is_key_var(name: &str) -> bool {
    PROVIDERS.iter().any(|p| p.key_env == Some(name))
}

/// The pricing table key of a provider id; an id outside the catalogue (a custom provider)
/// is its own key.
pub fn pricing_key(id: &str) -> &str {
    get(id).map_or(id, |p| p.pricing_key)
}

/// The environment as a lookup (injected, so tests never touch the process environment).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Where a provider is reached (for diagnostics; never contains the key itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProviderEndpoint {
    pub id: &'static str,
    /// Empty for `demo`.
    pub base_url: String,
    /// The variable the key comes from (None: no key needed).
    pub key_env: Option<&'static str>,
    pub key_required: bool,
    pub key_set: bool,
    /// The operator set this provider up: its key, or for keyless Ollama its address
    /// (OLLAMA_HOST / ARAGORA_OLLAMA_BASE_URL). The built-in default address of an
    /// unconfigured Ollama is not a promise that one runs there.
    pub configured: bool,
    #[serde(skip)]
    pub info: &'static ProviderInfo,
}

impl ProviderEndpoint {
    /// Credentials present, or none needed.
    pub fn available(&self) -> bool {
        !self.key_required || self.key_set
    }

    /// Reached over the network (every provider but `demo`).
    pub fn networked(&self) -> bool {
        !self.base_url.is_empty()
    }
}

/// Non-empty, trimmed value of an environment variable.
fn env_value(env: Env<'_>, key: &str) -> Option<String> {
    env(key)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A host variable's value as a base URL: `host[:port]` without a scheme gets `http://` and,
/// without a port, `default_port` (as the ollama CLI does).
fn host_url(host: &str, default_port: u16) -> String {
    let host = host.trim().trim_end_matches('/');
    if host.contains("://") {
        return host.to_owned();
    }
    let authority = host.split('/').next().unwrap_or(host);
    let has_port = match authority.rsplit_once(':') {
        // `[::1]:11434` has a port, `[::1]` has not.
        Some((before, port)) => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!before.contains(':') || before.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        format!("http://{host}")
    } else {
        format!(
            "http://{authority}:{default_port}{}",
            &host[authority.len()..]
        )
    }
}

impl ProviderInfo {
    /// Where this provider is reached and whether it is set up, per the environment.
    pub fn endpoint(&'static self, env: Env<'_>) -> ProviderEndpoint {
        let set = |var: Option<&str>| var.is_some_and(|v| env_value(env, v).is_some());
        let base_url = match self.base_url_env.and_then(|v| env_value(env, v)) {
            Some(url) => url,
            None => match self
                .host_env
                .and_then(|h| Some((h, env_value(env, h.env)?)))
            {
                Some((h, host)) => format!("{}{}", host_url(&host, h.default_port), h.path),
                None => self.default_base_url.to_owned(),
            },
        };
        let key_set = set(self.key_env);
        let needs_nothing = self.key_env.is_none() && self.base_url_env.is_none();
        ProviderEndpoint {
            id: self.id,
            base_url: base_url.trim_end_matches('/').to_owned(),
            key_env: self.key_env,
            key_required: self.key_required,
            key_set,
            configured: key_set
                || needs_nothing
                || (!self.key_required
                    && (set(self.base_url_env) || set(self.host_env.map(|h| h.env)))),
            info: self,
        }
    }
}

/// Every provider's endpoint as the environment configures it, in catalogue order.
pub fn provider_endpoints(env: Env<'_>) -> Vec<ProviderEndpoint> {
    PROVIDERS.iter().map(|p| p.endpoint(env)).collect()
}

/// The adapter for an endpoint, with its key from `env`.
pub fn build(endpoint: &ProviderEndpoint, env: Env<'_>) -> Arc<dyn Provider> {
    let key = endpoint.key_env.and_then(|k| env_value(env, k));
    adapter(Connection::new(endpoint.info, &endpoint.base_url, key))
}

/// The adapter of a connection's wire format: the one place a wire format is mapped to code.
pub fn adapter(connection: Connection) -> Arc<dyn Provider> {
    match connection.info.wire {
        WireFormat::Anthropic => Arc::new(Anthropic::new(connection)),
        WireFormat::OpenAiChat { .. } => Arc::new(OpenAiCompatible::new(connection)),
        WireFormat::Gemini => Arc::new(Gemini::new(connection)),
        WireFormat::Demo => Arc::new(DemoProvider::new()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;

    /// An environment with nothing set (shared with the registry's tests).
    pub(crate) fn no_env(_: &str) -> Option<String> {
        None
    }

    /// An environment of exactly `pairs`.
    pub(crate) fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    fn endpoints(env: Env<'_>) -> HashMap<&'static str, ProviderEndpoint> {
        provider_endpoints(env)
            .into_iter()
            .map(|e| (e.id, e))
            .collect()
    }

    #[test]
    fn catalogue_rows_follow_the_conventions() {
        let mut ids: Vec<&str> = PROVIDER_IDS.to_vec();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), PROVIDERS.len(), "ids are unique");
        assert_eq!(
            PROVIDER_IDS.join(", "),
            "anthropic, openai, gemini, xai, mistral, deepseek, openrouter, ollama, demo"
        );
        for p in &PROVIDERS {
            assert_eq!(get(p.id), Some(p));
            if p.wire == WireFormat::Demo {
                assert_eq!((p.key_env, p.base_url_env), (None, None), "{}", p.id);
                assert!(p.default_base_url.is_empty());
                continue;
            }
            let upper = p.id.to_ascii_uppercase();
            assert_eq!(
                p.base_url_env,
                Some(format!("ARAGORA_{upper}_BASE_URL").as_str()),
                "{}",
                p.id
            );
            assert_eq!(
                p.key_env,
                Some(format!("{upper}_API_KEY").as_str()),
                "{}",
                p.id
            );
            assert!(
                p.default_base_url.starts_with("https://") || !p.key_required,
                "{}: keys travel over TLS by default",
                p.id
            );
        }
        assert_eq!(get("acme"), None);
    }

    /// Forgetting a price is a test failure, not a provider whose calls silently cost 0.
    #[test]
    fn every_provider_has_a_price() {
        let text = crate::pricing::DEFAULT_PRICING_TOML;
        let table: toml::Table = toml::from_str(text).unwrap();
        let priced = table["providers"].as_table().unwrap();
        for p in &PROVIDERS {
            assert!(
                priced.contains_key(p.pricing_key),
                "config/pricing.toml has no [providers.{}]",
                p.pricing_key
            );
        }
        assert_eq!(pricing_key("openai"), "openai");
        assert_eq!(pricing_key("custom"), "custom");
    }

    #[test]
    fn env_vars_are_the_documented_ones() {
        let vars: Vec<&str> = env_vars().collect();
        // Contract §2: the provider credentials and base URL overrides.
        for var in [
            "ANTHROPIC_API_KEY",
            "OPENAI_API_KEY",
            "GEMINI_API_KEY",
            "XAI_API_KEY",
            "MISTRAL_API_KEY",
            "DEEPSEEK_API_KEY",
            "OPENROUTER_API_KEY",
            "OLLAMA_HOST",
            "OLLAMA_API_KEY",
            "ARAGORA_ANTHROPIC_BASE_URL",
            "ARAGORA_OPENAI_BASE_URL",
            "ARAGORA_GEMINI_BASE_URL",
            "ARAGORA_XAI_BASE_URL",
            "ARAGORA_MISTRAL_BASE_URL",
            "ARAGORA_DEEPSEEK_BASE_URL",
            "ARAGORA_OPENROUTER_BASE_URL",
            "ARAGORA_OLLAMA_BASE_URL",
        ] {
            assert!(vars.contains(&var), "{var}");
        }
        assert_eq!(vars.len(), 17);
        assert!(is_key_var("OLLAMA_API_KEY") && is_key_var("GEMINI_API_KEY"));
        assert!(!is_key_var("OLLAMA_HOST") && !is_key_var("ARAGORA_OPENAI_BASE_URL"));
    }

    /// The config reads every variable of the catalogue, so no provider can be added whose
    /// key the server then never sees.
    #[test]
    fn config_reads_every_catalogue_variable() {
        let read = crate::config::ProviderEnv::read(|name| Some(format!("value-of-{name}")));
        for var in env_vars() {
            assert_eq!(read.get(var), Some(format!("value-of-{var}")), "{var}");
        }
        assert_eq!(read.get("PATH"), None, "only provider variables");
        let keys = read.key_values();
        assert_eq!(
            keys.len(),
            PROVIDERS.iter().filter(|p| p.key_env.is_some()).count()
        );
        assert!(keys.iter().all(|k| k.ends_with("_API_KEY")), "{keys:?}");

        let lookup = |name: &str| read.get(name);
        for ep in provider_endpoints(&lookup) {
            assert_eq!(ep.key_set, ep.key_env.is_some(), "{}", ep.id);
            assert!(ep.configured && ep.available(), "{}", ep.id);
        }
    }

    #[test]
    fn default_base_urls() {
        let eps = endpoints(&no_env);
        let expect = [
            ("anthropic", "https://api.anthropic.com"),
            ("openai", "https://api.openai.com/v1"),
            ("gemini", "https://generativelanguage.googleapis.com"),
            ("xai", "https://api.x.ai/v1"),
            ("mistral", "https://api.mistral.ai/v1"),
            ("deepseek", "https://api.deepseek.com/v1"),
            ("openrouter", "https://openrouter.ai/api/v1"),
            ("ollama", "http://localhost:11434/v1"),
            ("demo", ""),
        ];
        for (id, url) in expect {
            assert_eq!(eps[id].base_url, url, "{id}");
            assert_eq!(eps[id].networked(), !url.is_empty(), "{id}");
        }
        assert_eq!(eps["openai"].key_env, Some("OPENAI_API_KEY"));
        assert!(eps["anthropic"].key_required && !eps["anthropic"].key_set);
        assert!(!eps["ollama"].key_required);
        assert_eq!(eps.len(), PROVIDER_IDS.len());
    }

    #[test]
    fn base_urls_are_overridable() {
        let eps = endpoints(&env_of(&[
            ("ARAGORA_ANTHROPIC_BASE_URL", "http://127.0.0.1:9001/"),
            ("ARAGORA_OPENAI_BASE_URL", "http://proxy.local/openai/v1"),
            ("ARAGORA_GEMINI_BASE_URL", "http://127.0.0.1:9003"),
            ("ARAGORA_XAI_BASE_URL", "http://x/v1"),
            ("ARAGORA_MISTRAL_BASE_URL", "http://m/v1"),
            ("ARAGORA_DEEPSEEK_BASE_URL", "http://d/v1"),
            ("ARAGORA_OPENROUTER_BASE_URL", "http://o/api/v1"),
            ("OLLAMA_HOST", "gpu-box:11500"),
        ]));
        assert_eq!(eps["anthropic"].base_url, "http://127.0.0.1:9001");
        assert_eq!(eps["openai"].base_url, "http://proxy.local/openai/v1");
        assert_eq!(eps["gemini"].base_url, "http://127.0.0.1:9003");
        assert_eq!(eps["xai"].base_url, "http://x/v1");
        assert_eq!(eps["mistral"].base_url, "http://m/v1");
        assert_eq!(eps["deepseek"].base_url, "http://d/v1");
        assert_eq!(eps["openrouter"].base_url, "http://o/api/v1");
        assert_eq!(eps["ollama"].base_url, "http://gpu-box:11500/v1");

        let ollama = |pairs: &[(&str, &str)]| endpoints(&env_of(pairs))["ollama"].base_url.clone();
        assert_eq!(
            ollama(&[("OLLAMA_HOST", "https://ollama.example.com/")]),
            "https://ollama.example.com/v1"
        );
        assert_eq!(
            ollama(&[("OLLAMA_HOST", "10.0.0.5")]),
            "http://10.0.0.5:11434/v1"
        );
        assert_eq!(ollama(&[("OLLAMA_HOST", "[::1]")]), "http://[::1]:11434/v1");
        assert_eq!(
            ollama(&[("OLLAMA_HOST", "[::1]:8080")]),
            "http://[::1]:8080/v1"
        );
        assert_eq!(
            ollama(&[
                ("OLLAMA_HOST", "ignored:1"),
                ("ARAGORA_OLLAMA_BASE_URL", "http://ollama:11434/v1/"),
            ]),
            "http://ollama:11434/v1"
        );
    }

    #[test]
    fn configured_means_a_key_or_for_keyless_ollama_an_address() {
        let eps = endpoints(&no_env);
        let configured: Vec<&str> = PROVIDER_IDS
            .iter()
            .copied()
            .filter(|id| eps[id].configured)
            .collect();
        assert_eq!(configured, ["demo"], "only what needs nothing");

        let eps = endpoints(&env_of(&[
            ("ANTHROPIC_API_KEY", "k"),
            ("GEMINI_API_KEY", " "),
            ("ARAGORA_OPENAI_BASE_URL", "http://proxy/v1"),
        ]));
        assert!(eps["anthropic"].configured && eps["anthropic"].available());
        assert!(
            !eps["gemini"].configured && !eps["gemini"].available(),
            "blank key"
        );
        assert!(
            !eps["openai"].configured,
            "a base URL without a key is not a configured provider"
        );
        assert!(eps["ollama"].available() && !eps["ollama"].configured);

        for var in ["OLLAMA_HOST", "ARAGORA_OLLAMA_BASE_URL", "OLLAMA_API_KEY"] {
            let eps = endpoints(&env_of(&[(var, "http://box:1")]));
            assert!(eps["ollama"].configured, "{var}");
        }
    }

    #[test]
    fn build_picks_the_adapter_of_the_wire_format_with_the_key() {
        let env = env_of(&[("XAI_API_KEY", "k"), ("ANTHROPIC_API_KEY", " ")]);
        for ep in provider_endpoints(&env) {
            let provider = build(&ep, &env);
            assert_eq!(provider.id(), ep.id);
            assert_eq!(provider.available(), ep.available(), "{}", ep.id);
        }
    }
}
