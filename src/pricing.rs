//! Agent call prices (USD per million tokens) from config/pricing.toml, compiled in and
//! replaceable with the `pricing_file` setting.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

pub const DEFAULT_PRICING_TOML: &str = include_str!("../config/pricing.toml");

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// USD per million input tokens.
    pub input: f64,
    /// USD per million output tokens.
    pub output: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderPrices {
    input: f64,
    output: f64,
    #[serde(default)]
    models: BTreeMap<String, Price>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    #[serde(default)]
    providers: BTreeMap<String, ProviderPrices>,
}

/// Why a pricing table was refused.
#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error("{}", .0.message())]
    Syntax(#[source] toml::de::Error),
    #[error("provider `{0}`: prices must be ≥ 0")]
    Negative(String),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    File {
        path: std::path::PathBuf,
        #[source]
        source: Box<PricingError>,
    },
}

impl Pricing {
    pub fn parse(text: &str) -> Result<Pricing, PricingError> {
        let pricing: Pricing = toml::from_str(text).map_err(PricingError::Syntax)?;
        for (name, p) in &pricing.providers {
            let all = std::iter::once(Price {
                input: p.input,
                output: p.output,
            })
            .chain(p.models.values().copied());
            for price in all {
                if !(price.input >= 0.0 && price.output >= 0.0) {
                    return Err(PricingError::Negative(name.clone()));
                }
            }
        }
        Ok(pricing)
    }

    /// The compiled-in table, or the operator's file.
    pub fn load(file: Option<&Path>) -> Result<Pricing, PricingError> {
        match file {
            None => Pricing::parse(DEFAULT_PRICING_TOML),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| PricingError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Pricing::parse(&text).map_err(|e| PricingError::File {
                    path: path.to_owned(),
                    source: Box::new(e),
                })
            }
        }
    }

    /// The model's price, else the provider's default, else free. `provider` is a provider
    /// id; its table is the catalogue's pricing key for it.
    pub fn price(&self, provider: &str, model: &str) -> Price {
        let key = crate::agents::providers::pricing_key(provider);
        self.providers.get(key).map_or(Price::default(), |p| {
            p.models.get(model).copied().unwrap_or(Price {
                input: p.input,
                output: p.output,
            })
        })
    }

    pub fn cost(&self, provider: &str, model: &str, input_tokens: u64, output_tokens: u64) -> f64 {
        let p = self.price(provider, model);
        (input_tokens as f64 * p.input + output_tokens as f64 * p.output) / 1_000_000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_in_table_parses_and_prices() {
        let p = Pricing::parse(DEFAULT_PRICING_TOML).unwrap();
        assert_eq!(p.cost("demo", "demo", 1_000, 1_000), 0.0);
        // gpt-4o-mini: 0.15 in, 0.60 out per million.
        let c = p.cost("openai", "gpt-4o-mini", 1_000_000, 500_000);
        assert!((c - 0.45).abs() < 1e-9, "{c}");
        // Unknown model: the provider default (openai 2.50 / 10.00).
        let c = p.cost("openai", "some-new-model", 1_000_000, 0);
        assert!((c - 2.5).abs() < 1e-9, "{c}");
        assert_eq!(p.cost("unknown-provider", "m", 10, 10), 0.0);
    }

    #[test]
    fn bad_tables_are_refused() {
        assert!(Pricing::parse("[providers.x]\ninput = -1.0\noutput = 1.0\n").is_err());
        assert!(Pricing::parse("[providers.x]\ninput = 1.0\n").is_err());
        assert!(Pricing::parse("bogus = 1\n").is_err());
    }
}
