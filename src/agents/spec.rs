//! `agents.toml`: agent names → provider + model. The compiled-in `config/agents.toml` is
//! the default; an operator's copy replaces it. Also the dynamic names `ollama:<model>` and
//! `demo:<ms>`, which need no entry.
//!
//! Rule: parsing only — a bad file fails as a whole with an error naming the entry and what
//! is wrong; which providers exist comes from the catalogue ([`providers`]).

use std::path::Path;

use serde::Serialize;

use super::demo::DemoProvider;
use super::providers::{self, PROVIDER_IDS};

/// The compiled-in `config/agents.toml`.
pub const DEFAULT_AGENTS_TOML: &str = include_str!("../../config/agents.toml");

/// One agent name's provider and model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentSpec {
    pub name: String,
    pub provider: String,
    pub model: String,
}

impl AgentSpec {
    /// The dynamic names: `ollama:<model>` and `demo:<ms>`.
    pub fn dynamic(name: &str) -> Option<AgentSpec> {
        if let Some(model) = name.strip_prefix("ollama:") {
            let model = model.trim();
            if model.is_empty() || model.chars().any(char::is_whitespace) {
                return None;
            }
            return Some(AgentSpec {
                name: name.to_owned(),
                provider: "ollama".into(),
                model: model.to_owned(),
            });
        }
        if name.starts_with("demo:") && DemoProvider::parse_model(name).is_some() {
            return Some(AgentSpec {
                name: name.to_owned(),
                provider: "demo".into(),
                model: name.to_owned(),
            });
        }
        None
    }
}

/// Why the registry could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read agents file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{source_name}: invalid TOML: {message}")]
    Toml {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: {message}")]
    Structure {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: agent `{agent}` ([agents.{agent}]): {message}")]
    Entry {
        source_name: String,
        agent: String,
        message: String,
    },
}

/// Parse an `agents.toml` text. `source_name` (a path, or "built-in agents.toml") is used
/// in errors.
pub fn parse_agents_toml(text: &str, source_name: &str) -> Result<Vec<AgentSpec>, RegistryError> {
    let structure = |message: String| RegistryError::Structure {
        source_name: source_name.to_owned(),
        message,
    };
    let table: toml::Table = toml::from_str(text).map_err(|e| RegistryError::Toml {
        source_name: source_name.to_owned(),
        message: e.to_string().trim().to_owned(),
    })?;
    if let Some(key) = table.keys().find(|k| *k != "agents") {
        return Err(structure(format!(
            "unknown top-level key `{key}` (expected [agents.<name>] tables)"
        )));
    }
    let Some(agents) = table.get("agents") else {
        return Ok(Vec::new());
    };
    let agents = agents
        .as_table()
        .ok_or_else(|| structure("`agents` must be a table of [agents.<name>] entries".into()))?;

    let mut specs = Vec::with_capacity(agents.len());
    for (name, entry) in agents {
        let fail = |message: String| RegistryError::Entry {
            source_name: source_name.to_owned(),
            agent: name.clone(),
            message,
        };
        if name.trim().is_empty() || name.chars().any(|c| c.is_whitespace() || c == ':') {
            return Err(fail(
                "invalid name: names may not be empty or contain whitespace or `:` \
                 (reserved for ollama:<model> and demo:<ms>)"
                    .into(),
            ));
        }
        let entry = entry
            .as_table()
            .ok_or_else(|| fail("must be a table with `provider` and `model`".into()))?;
        if let Some(key) = entry.keys().find(|k| *k != "provider" && *k != "model") {
            return Err(fail(format!(
                "unknown key `{key}` (expected `provider` and `model`)"
            )));
        }
        let string = |key: &str| -> Result<String, RegistryError> {
            match entry.get(key) {
                None => Err(fail(format!("missing `{key}`"))),
                Some(toml::Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
                Some(toml::Value::String(_)) => Err(fail(format!("`{key}` is empty"))),
                Some(other) => Err(fail(format!(
                    "`{key}` must be a string, not {}",
                    other.type_str()
                ))),
            }
        };
        let provider = string("provider")?;
        if providers::get(&provider).is_none() {
            return Err(fail(format!(
                "unknown provider `{provider}` (known: {})",
                PROVIDER_IDS.join(", ")
            )));
        }
        let model = string("model")?;
        if provider == "demo" && DemoProvider::parse_model(&model).is_none() {
            return Err(fail(format!(
                "invalid demo model `{model}` (use `demo` or `demo:<ms>`)"
            )));
        }
        specs.push(AgentSpec {
            name: name.clone(),
            provider,
            model,
        });
    }
    Ok(specs)
}

/// The agents of `path` (None: the compiled-in default).
pub fn load_agents_toml(path: Option<&Path>) -> Result<Vec<AgentSpec>, RegistryError> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Read {
                path: path.display().to_string(),
                source,
            })?;
            parse_agents_toml(&text, &path.display().to_string())
        }
        None => parse_agents_toml(DEFAULT_AGENTS_TOML, "built-in agents.toml"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_str(text: &str) -> Result<Vec<AgentSpec>, RegistryError> {
        parse_agents_toml(text, "agents.toml")
    }

    #[test]
    fn built_in_agents_toml_parses() {
        let specs = load_agents_toml(None).unwrap();
        assert_eq!(specs.len(), 9);
        assert!(specs.iter().all(|s| providers::get(&s.provider).is_some()));
        assert_eq!(from_str("").unwrap(), Vec::new());
        assert_eq!(
            from_str("[agents.a]\nprovider = \" demo \"\nmodel = \"demo:5\"\n").unwrap(),
            [AgentSpec {
                name: "a".into(),
                provider: "demo".into(),
                model: "demo:5".into()
            }]
        );
    }

    #[test]
    fn dynamic_names() {
        let spec = AgentSpec::dynamic("ollama:llama3.1:8b").unwrap();
        assert_eq!(
            (spec.provider.as_str(), spec.model.as_str()),
            ("ollama", "llama3.1:8b")
        );
        let spec = AgentSpec::dynamic("demo:250").unwrap();
        assert_eq!(
            (spec.provider.as_str(), spec.model.as_str()),
            ("demo", "demo:250")
        );
        for bad in [
            "ollama:",
            "ollama:a b",
            "demo:",
            "demo:fast",
            "demo:-5",
            "claude",
        ] {
            assert_eq!(AgentSpec::dynamic(bad), None, "{bad}");
        }
    }

    #[test]
    fn invalid_agents_toml_errors_name_the_entry() {
        let err = from_str("[agents.foo]\nprovider = \"acme\"\nmodel = \"x\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(&err, RegistryError::Entry { agent, .. } if agent == "foo"));
        assert!(
            msg.contains("`foo`")
                && msg.contains("unknown provider `acme` (known: anthropic, openai, gemini, xai, mistral, deepseek, openrouter, ollama, demo)"),
            "{msg}"
        );

        let msg = from_str("[agents.bar]\nprovider = \"openai\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`bar`") && msg.contains("missing `model`"),
            "{msg}"
        );

        let msg = from_str("[agents.baz]\nprovider = \"openai\"\nmodle = \"gpt\"\nmodel = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`baz`") && msg.contains("unknown key `modle`"),
            "{msg}"
        );

        let msg = from_str("[agents.qux]\nprovider = \"openai\"\nmodel = 4\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`qux`") && msg.contains("must be a string"),
            "{msg}"
        );

        let msg = from_str("[agents.slow]\nprovider = \"demo\"\nmodel = \"demo:soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`slow`") && msg.contains("invalid demo model"),
            "{msg}"
        );

        let msg = from_str("[agents.\"a:b\"]\nprovider = \"demo\"\nmodel = \"demo\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`a:b`") && msg.contains("invalid name"),
            "{msg}"
        );

        let err = from_str("[agents.claude\nprovider = ").unwrap_err();
        assert!(matches!(err, RegistryError::Toml { .. }), "{err}");
        assert!(err.to_string().contains("invalid TOML"));

        let err =
            from_str("[agent.claude]\nprovider = \"anthropic\"\nmodel = \"m\"\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown top-level key `agent`"),
            "{err}"
        );
    }
}
