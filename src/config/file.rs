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
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub privacy: RawPrivacy,
    #[serde(default)]
    pub security: RawSecurity,
    #[serde(default)]
    pub decisions: Option<Spanned<RawDecisions>>,
    #[serde(default)]
    pub offers: IndexMap<Spanned<String>, RawOffer>,
    #[serde(default)]
    pub experiments: IndexMap<Spanned<String>, RawExperiment>,
    #[serde(default)]
    pub goals: IndexMap<Spanned<String>, super::goals::RawGoal>,
    #[serde(default)]
    pub triggers: super::triggers::RawTriggers,
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
    pub max_value_bytes: Option<Spanned<u32>>,
    pub max_event_bytes: Option<Spanned<u32>>,
    pub default_channel: Option<Spanned<String>>,
    pub dedup_window: Option<Spanned<String>>,
    pub dedup_max_ids: Option<Spanned<u32>>,
}

/// What to do with an event property the config does not declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownProperties {
    /// Reject the event with an error naming the property: a strict tracking plan.
    Reject,
    /// Accept the event and drop the property, counting it as drift (trackers often
    /// send more than rules read).
    #[default]
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
    /// Other names trackers send this event type by (`"Product Added"`).
    #[serde(default)]
    pub aliases: Vec<Spanned<String>>,
    /// Per declared property, other names trackers send it by (`amount = ["revenue"]`).
    #[serde(default)]
    pub property_aliases: IndexMap<Spanned<String>, Vec<Spanned<String>>>,
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

/// `[decisions]`: settings shared by every offer.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDecisions {
    pub fallback: Option<Spanned<String>>,
    pub sticky: Option<Spanned<String>>,
    pub remember_decisions: Option<Spanned<u64>>,
    #[serde(default)]
    pub context: IndexMap<Spanned<String>, ValueType>,
    pub feedback_events: Option<Spanned<IndexMap<Spanned<String>, Spanned<String>>>>,
    /// The percentage of customers in the global holdout.
    pub holdout: Option<Spanned<f64>>,
    /// Whether holdout customers still get the fallback offer (default true).
    pub holdout_fallback: Option<bool>,
    /// The goals the holdout is measured on (default: every goal).
    pub holdout_goals: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOffer {
    #[serde(default)]
    pub description: Option<String>,
    pub rule: Option<Spanned<String>>,
    pub channels: Option<Spanned<Vec<Spanned<String>>>>,
    pub value: Option<Spanned<f64>>,
    pub weight: Option<Spanned<f64>>,
    pub propensity: Option<Spanned<String>>,
    pub rank: Option<Spanned<String>>,
    pub priority: Option<i32>,
    #[serde(default)]
    pub caps: Vec<Spanned<RawCap>>,
    pub cooldown: Option<RawCooldown>,
    pub repeat: Option<bool>,
    pub budget: Option<Spanned<RawBudget>>,
    pub sticky: Option<Spanned<String>>,
    pub coupon: Option<RawCoupon>,
    /// What channels show, with `{...}` placeholders filled per customer.
    pub content: Option<RawContent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCap {
    pub impressions: Spanned<u32>,
    pub per: Spanned<String>,
    pub channel: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCooldown {
    pub dismiss: Option<Spanned<String>>,
    pub accept: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub accepts: Option<u64>,
    pub impressions: Option<u64>,
    pub per: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContent {
    pub title: Option<Spanned<String>>,
    pub text: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    pub image: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCoupon {
    pub prefix: Spanned<String>,
    pub valid: Spanned<String>,
    /// Characters after the dash, before the check character (8 to 12; default 10).
    pub length: Option<Spanned<i64>>,
    /// Where the code may be redeemed (default: every channel).
    pub channels: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExperiment {
    #[serde(default)]
    pub description: Option<String>,
    pub arms: Spanned<Vec<Spanned<RawArm>>>,
    #[serde(default)]
    pub goals: Vec<Spanned<String>>,
    /// The arm the others are compared with (default: the control arm, or the first).
    pub baseline: Option<Spanned<String>>,
    /// The offers whose eligibility exposes a customer (default: those the arms treat
    /// differently).
    pub offers: Option<Vec<Spanned<String>>>,
    pub min_customers: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArm {
    pub name: Spanned<String>,
    pub weight: Spanned<u32>,
    #[serde(default)]
    pub control: bool,
    pub offers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub weights: IndexMap<Spanned<String>, f64>,
}

/// `[security]`: where the credentials are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecurity {
    pub credentials: Option<String>,
}

/// `[privacy]`: how long customers are kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrivacy {
    pub retention: Option<Spanned<String>>,
    pub suppress: Option<bool>,
    pub erase_within: Option<Spanned<String>>,
}

/// `[storage]`: the write-ahead log.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub fsync: Option<super::FsyncPolicy>,
    pub fsync_interval_ms: Option<Spanned<u64>>,
    pub segment_mib: Option<Spanned<u64>>,
    pub snapshot_interval_s: Option<Spanned<u64>>,
    pub snapshot_log_mib: Option<Spanned<u64>>,
}
