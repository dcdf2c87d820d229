//! The config file as written: TOML deserialized with serde, every name and rule
//! carrying its span so that validation can point at it.
//!
//! `deny_unknown_fields` everywhere: a misspelt key is an error with its position, not
//! a silently ignored setting.

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

use super::ValueType;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default = "no_channels")]
    pub channels: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub engine: RawEngine,
    pub identity: RawIdentity,
    #[serde(default)]
    pub attributes: IndexMap<Spanned<String>, ValueType>,
    pub events: IndexMap<Spanned<String>, RawEvent>,
    #[serde(default)]
    pub segments: IndexMap<Spanned<String>, RawSegment>,
    #[serde(default)]
    pub scores: IndexMap<Spanned<String>, RawScore>,
}

fn no_channels() -> Spanned<Vec<Spanned<String>>> {
    Spanned::new(0..0, Vec::new())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEngine {
    pub shards: Option<Spanned<u32>>,
    pub window_buckets: Option<Spanned<u32>>,
    pub max_future_skew: Option<Spanned<String>>,
    pub recheck_interval: Option<Spanned<String>>,
    pub unknown_properties: Option<UnknownProperties>,
}

/// What to do with an event property the config does not declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownProperties {
    /// Reject the event with an error naming the property.
    #[default]
    Reject,
    /// Accept the event and ignore the property (trackers often send more than rules read).
    Ignore,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub namespaces: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvent {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub properties: IndexMap<Spanned<String>, ValueType>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSegment {
    #[serde(default)]
    pub description: Option<String>,
    pub rule: Spanned<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawScoreKind {
    Decayed,
    Logistic,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScore {
    pub kind: RawScoreKind,
    #[serde(default)]
    pub description: Option<String>,
    /// decayed: the half-life, as a duration.
    pub half_life: Option<Spanned<String>>,
    /// decayed: weight per event type.
    pub weights: Option<IndexMap<Spanned<String>, f64>>,
    /// logistic: the intercept.
    pub intercept: Option<f64>,
    /// logistic: features and their coefficients.
    pub features: Option<Vec<RawModelFeature>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelFeature {
    pub expr: Spanned<String>,
    pub weight: f64,
}
