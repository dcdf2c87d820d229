//! Configuration: what data teams declare, validated as a whole before anything runs.
//!
//! A config file (TOML) declares identity namespaces, channels, profile attributes,
//! event types with typed properties, segments (rules in the rule language), and
//! scores. [`Config::from_source`] parses it, checks every name, type, duration and
//! reference, compiles every rule, and reports *all* errors at once, each with file,
//! line, column and a caret ([`ConfigError`]). What comes out is a [`Config`]: dense
//! tables indexed by integer ids, plus
//!
//! - `features`: every aggregate any rule or score reads (window counts and sums,
//!   last-seen times), deduplicated; the engine lays profiles out from this list, so a
//!   profile stores exactly what the config needs and nothing else;
//! - `dependencies`: per event type, which features and decayed scores it updates and
//!   which segments it can change (transitively through `in(...)` and `score(...)`), in
//!   evaluation order, so an event re-evaluates only what it can affect.
//!
//! Validation runs in passes (settings, names, segments, scores, decisions, cycles; see
//! `Builder::build`), each adding its errors to one list. Settings given on the command
//! line ([`Overrides`]) replace the file's before the passes, so they are checked by the
//! same rules, at start and at reload.
//!
//! Invariants: segment and score references form no cycle; `segment_order` lists every
//! segment after the segments it depends on.

mod decisions;
pub mod diagnostic;
pub mod duration;
mod file;
pub mod goals;
pub mod rule;
mod settings;
pub mod triggers;

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

pub use decisions::{
    ArmDef, BudgetCounts, BudgetDef, Cap, ContentDef, CouponDef, Decisions, ExperimentDef,
    OfferDef, Piece, Template, COUPON_LENGTHS, DEFAULT_COUPON_LENGTH,
};
pub use diagnostic::{ConfigError, Diagnostic, Source, Span};
pub use file::UnknownProperties;
use file::{RawConfig, RawEvent, RawScoreKind};
pub use goals::GoalDef;
use rule::compile::list;
use rule::{Compiler, Expr, Interner, Refs, RuleContext, RuleError};
pub use settings::Overrides;
pub use triggers::TriggerSettings;

/// The embedded default config: an omnichannel retailer.
pub const DEFAULT_CONFIG: &str = include_str!("../../examples/retail.toml");
/// The name the embedded default config goes by in messages.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded examples/retail.toml>";

/// The type of an attribute or event property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    Number,
    String,
    Bool,
}

impl ValueType {
    pub fn name(self) -> &'static str {
        match self {
            ValueType::Number => "number",
            ValueType::String => "string",
            ValueType::Bool => "bool",
        }
    }
}

/// When the write-ahead log is synced to stable storage (`[storage] fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Acknowledge an event only after the log is synced: survives power loss.
    Always,
    /// Acknowledge after the write; sync at most every `fsync_interval_ms`: survives a
    /// crash of the process, may lose that interval on power loss.
    #[default]
    Interval,
    /// Acknowledge after the write; the kernel syncs when it likes.
    Never,
}

impl FsyncPolicy {
    pub fn name(self) -> &'static str {
        match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Interval => "interval",
            FsyncPolicy::Never => "never",
        }
    }
}

/// `[privacy]`: how long customers are kept, and what forgetting one does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrivacySettings {
    /// A customer not seen for this many seconds is forgotten by the engine itself
    /// (0: kept for as long as the engine runs).
    pub retention: u32,
    /// Whether FORGET puts the customer's keys on the suppression list (default yes).
    pub suppress: bool,
    /// Seconds within which a FORGET's erasure from the data directory must be done;
    /// one still pending past it is reported as overdue (default an hour).
    pub erase_within: u32,
}

impl Default for PrivacySettings {
    fn default() -> Self {
        PrivacySettings {
            retention: 0,
            suppress: true,
            erase_within: 3600,
        }
    }
}

/// Settings of the write-ahead log, from `[storage]`.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageSettings {
    pub fsync: FsyncPolicy,
    pub fsync_interval: std::time::Duration,
    pub segment_bytes: u64,
    /// A snapshot is taken this long after the last one (`None`: not by time).
    pub snapshot_interval: Option<std::time::Duration>,
    /// A snapshot is taken once this many bytes were logged since the last one (`None`:
    /// not by volume).
    pub snapshot_log_bytes: Option<u64>,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            fsync: FsyncPolicy::Interval,
            fsync_interval: std::time::Duration::from_millis(100),
            segment_bytes: 64 << 20,
            snapshot_interval: Some(std::time::Duration::from_secs(600)),
            snapshot_log_bytes: Some(512 << 20),
        }
    }
}

/// Engine settings from the `[engine]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// Number of lock shards; a power of two.
    pub shards: u32,
    /// Buckets per window ring buffer.
    pub window_buckets: u32,
    /// How far an event's timestamp may be ahead of the engine clock, in seconds.
    pub max_future_skew: u32,
    /// Longest wait before re-checking a rule whose time dependence is not linear.
    pub recheck_interval: u32,
    pub unknown_properties: UnknownProperties,
    /// Longest string property or attribute value, in bytes.
    pub max_value_bytes: u32,
    /// Most bytes of keys, names and values in one event.
    pub max_event_bytes: u32,
    /// The channel of a JSON event that names none (`context.channel`): Segment's
    /// server libraries send none. `None`: such an event is rejected.
    pub default_channel: Option<usize>,
    /// Seconds an event's message id is remembered, so a copy of it is not applied
    /// again; 0 turns deduplication off.
    pub dedup_window: u32,
    /// Most message ids remembered; past it the window kept shrinks (see
    /// `engine::dedup`).
    pub dedup_max_ids: u32,
}

/// Largest `engine.max_event_bytes`: a log record holds at most 16 MiB, and an event is
/// far smaller.
pub const MAX_EVENT_BYTES_LIMIT: u32 = 1 << 20;
/// Largest `engine.max_value_bytes`: the log stores a value with a `u16` length.
pub const MAX_VALUE_BYTES_LIMIT: u32 = u16::MAX as u32;

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            shards: 16,
            window_buckets: 8,
            max_future_skew: 300,
            recheck_interval: 60,
            unknown_properties: UnknownProperties::Ignore,
            max_value_bytes: 4096,
            // Segment's limit for one event.
            max_event_bytes: 32 * 1024,
            default_channel: None,
            dedup_window: 24 * 3600,
            dedup_max_ids: 10_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttributeDef {
    pub name: String,
    pub ty: ValueType,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PropertyDef {
    pub name: String,
    /// Other names trackers send it by; the declared name wins when both come.
    pub aliases: Vec<String>,
    pub ty: ValueType,
    /// String constants that rules compare this property with; code = index + 1.
    pub constants: Vec<String>,
    /// Whether its string values are interned as they arrive (`Interner`), because a
    /// `first` or `last` keeps them in profiles.
    pub interned: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventDef {
    pub name: String,
    /// Other names trackers send it by (Segment's e-commerce names, say).
    pub aliases: Vec<String>,
    pub description: Option<String>,
    pub properties: Vec<PropertyDef>,
}

impl EventDef {
    /// The property a tracker's `name` is: by its name, or by one of its aliases
    /// (`true`).
    pub fn property(&self, name: &str) -> Option<(usize, bool)> {
        if let Some(i) = self.properties.iter().position(|p| p.name == name) {
            return Some((i, false));
        }
        self.properties
            .iter()
            .position(|p| p.aliases.iter().any(|a| a == name))
            .map(|i| (i, true))
    }
}

/// Which events an aggregate counts.
#[derive(Debug, Clone, PartialEq)]
pub struct EventMatch {
    /// `None` is `any`: every event type.
    pub event: Option<usize>,
    pub channel: Option<usize>,
    /// A condition on the event's properties.
    pub filter: Option<Expr>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Aggregate {
    Count,
    /// Sum of a number property, by index within the event type.
    Sum(usize),
}

/// An aggregate kept in every profile because some rule or score reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Feature {
    /// A count or sum over a sliding window: a ring buffer of `buckets` buckets, each
    /// `bucket_width` seconds wide, aligned to the Unix epoch.
    Window {
        matcher: EventMatch,
        aggregate: Aggregate,
        window: u32,
        bucket_width: u32,
        buckets: u32,
        label: String,
    },
    /// The time of the last matching event.
    LastSeen { matcher: EventMatch, label: String },
    /// The value of a property (by index within the event type, of type `ty`: a number
    /// or a string) at the first matching event, or with `last` the latest, and that
    /// event's time. An event without the property does not count.
    Value {
        matcher: EventMatch,
        property: usize,
        ty: ValueType,
        last: bool,
        label: String,
    },
    /// The most frequent values of a string property over a sliding window: [`TOP_SLOTS`]
    /// slots, each a value (an interned code), its latest event's time and a count ring
    /// shaped like a window's.
    Top {
        matcher: EventMatch,
        property: usize,
        window: u32,
        bucket_width: u32,
        buckets: u32,
        label: String,
    },
}

/// Values a `top` keeps per customer: exact while at most this many distinct values
/// are in its window (see `engine::top`).
pub const TOP_SLOTS: usize = 4;

impl Feature {
    pub fn matcher(&self) -> &EventMatch {
        match self {
            Feature::Window { matcher, .. }
            | Feature::LastSeen { matcher, .. }
            | Feature::Value { matcher, .. }
            | Feature::Top { matcher, .. } => matcher,
        }
    }

    /// The source text that first asked for this feature, for profile views.
    pub fn label(&self) -> &str {
        match self {
            Feature::Window { label, .. }
            | Feature::LastSeen { label, .. }
            | Feature::Value { label, .. }
            | Feature::Top { label, .. } => label,
        }
    }

    /// Everything but the label: two rules that read the same aggregate share one slot.
    pub(crate) fn identity(&self) -> String {
        match self {
            Feature::Window {
                matcher,
                aggregate,
                window,
                ..
            } => format!("window {matcher:?} {aggregate:?} {window}"),
            Feature::LastSeen { matcher, .. } => format!("last {matcher:?}"),
            Feature::Value {
                matcher,
                property,
                last,
                ..
            } => format!("value {last} {matcher:?} {property}"),
            Feature::Top {
                matcher,
                property,
                window,
                ..
            } => format!("top {matcher:?} {property} {window}"),
        }
    }

    /// Whether the feature's value changes as time passes (windows slide, times since
    /// grow); a first or last value changes only with events.
    pub fn reads_time(&self) -> bool {
        !matches!(self, Feature::Value { .. })
    }
}

#[derive(Debug, Clone)]
pub struct SegmentDef {
    pub name: String,
    pub description: Option<String>,
    pub rule: String,
    pub expr: Expr,
    pub refs: Refs,
    /// Whether membership can change with time alone (needs timers).
    pub time_dependent: bool,
}

#[derive(Debug, Clone)]
pub struct ModelFeature {
    pub text: String,
    pub expr: Expr,
    pub weight: f64,
}

#[derive(Debug, Clone)]
pub enum ScoreModel {
    /// Sum of event weights, halving every `half_life` seconds; decayed lazily.
    Decayed { half_life: u32, weights: Vec<f64> },
    /// `1 / (1 + e^-(intercept + sum(weight * feature)))`.
    Logistic {
        intercept: f64,
        features: Vec<ModelFeature>,
        refs: Refs,
    },
}

#[derive(Debug, Clone)]
pub struct ScoreDef {
    pub name: String,
    pub description: Option<String>,
    pub model: ScoreModel,
}

/// Which segments to re-evaluate when an event arrives, by what it changed.
#[derive(Debug, Clone, Default)]
pub struct Dependencies {
    /// Per event type: the features it can update.
    pub event_features: Vec<Vec<usize>>,
    /// Per event type: the decayed scores it changes.
    pub event_scores: Vec<Vec<usize>>,
    /// Per event type: the goals of experiments that count it.
    pub event_goals: Vec<Vec<usize>>,
    /// Per event type, indexed by `attributes_changed as usize | (keys_changed as usize) << 1`:
    /// the segments to re-evaluate, in evaluation order.
    pub affected: Vec<[Vec<usize>; 4]>,
    /// Segments whose membership can change with time alone, in evaluation order.
    pub time_dependent: Vec<usize>,
}

/// A validated, compiled config.
#[derive(Debug)]
pub struct Config {
    pub source_name: String,
    /// The config's text, kept so that a snapshot can say which layout its rows have.
    pub source_text: String,
    /// crc32c of the config text, shown as the config version.
    pub version: u32,
    pub engine: EngineSettings,
    pub storage: StorageSettings,
    pub privacy: PrivacySettings,
    /// `[triggers]`: which segments' changes the change stream records.
    pub triggers: TriggerSettings,
    /// `[security] credentials`: the credentials file, relative to the config file's
    /// directory (`serve --credentials` wins over it).
    pub credentials: Option<std::path::PathBuf>,
    pub namespaces: Vec<String>,
    pub channels: Vec<String>,
    pub attributes: Vec<AttributeDef>,
    pub events: Vec<EventDef>,
    pub features: Vec<Feature>,
    pub segments: Vec<SegmentDef>,
    pub scores: Vec<ScoreDef>,
    /// `[goals.*]`: what experiments measure.
    pub goals: Vec<GoalDef>,
    /// Every segment after those it depends on.
    pub segment_order: Vec<usize>,
    pub dependencies: Dependencies,
    /// Offers, experiments and decision settings.
    pub decisions: Decisions,
    /// Codes of attribute string values; shared with the engine.
    pub interner: Arc<Interner>,
}

impl Config {
    /// The embedded default config (`examples/retail.toml`).
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::from_source(&Source::new(DEFAULT_CONFIG_NAME, DEFAULT_CONFIG))
    }

    /// Reads and compiles a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, &Overrides::default())
    }

    /// Reads and compiles a config file, with settings from the command line in place
    /// of the file's (checked by the same rules).
    pub fn load_with(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            diagnostics: vec![Diagnostic {
                message: format!("cannot read config file: {e}"),
                file: path.display().to_string(),
                line: 1,
                column: 1,
                source_line: String::new(),
                width: 1,
                help: None,
            }],
        })?;
        Config::from_source_with(&Source::new(path.display().to_string(), text), overrides)
    }

    /// Parses, validates and compiles a config text.
    pub fn from_source(source: &Source) -> Result<Config, ConfigError> {
        Config::from_source_with(source, &Overrides::default())
    }

    /// [`Config::from_source`] with settings from the command line in place of the
    /// text's.
    pub fn from_source_with(source: &Source, overrides: &Overrides) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(&source.text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            ConfigError {
                diagnostics: vec![Diagnostic::new(
                    source,
                    span,
                    e.message().trim_end().to_string(),
                )],
            }
        })?;
        Builder {
            source,
            errors: Vec::new(),
        }
        .build(raw, overrides)
    }

    /// Whether offer, channel and experiment arm indexes mean the same in both configs:
    /// what lets offer counters and remembered decisions pass from one to the other.
    pub fn same_offer_indexes(&self, other: &Config) -> bool {
        let d = (&self.decisions, &other.decisions);
        self.channels == other.channels
            && d.0.offers.len() == d.1.offers.len()
            && d.0
                .offers
                .iter()
                .zip(&d.1.offers)
                .all(|(a, b)| a.name == b.name)
            && d.0.experiments.len() == d.1.experiments.len()
            && d.0.experiments.iter().zip(&d.1.experiments).all(|(a, b)| {
                a.name == b.name
                    && a.arms.len() == b.arms.len()
                    && a.arms.iter().zip(&b.arms).all(|(x, y)| x.name == y.name)
            })
    }

    /// The event type `name` is: its name, or one of its aliases.
    pub fn event_id(&self, name: &str) -> Option<usize> {
        self.events.iter().position(|e| e.name == name).or_else(|| {
            self.events
                .iter()
                .position(|e| e.aliases.iter().any(|a| a == name))
        })
    }

    pub fn channel_id(&self, name: &str) -> Option<usize> {
        self.channels.iter().position(|c| c == name)
    }

    pub fn namespace_id(&self, name: &str) -> Option<usize> {
        self.namespaces.iter().position(|n| n == name)
    }

    pub fn segment_id(&self, name: &str) -> Option<usize> {
        self.segments.iter().position(|s| s.name == name)
    }

    pub fn score_id(&self, name: &str) -> Option<usize> {
        self.scores.iter().position(|s| s.name == name)
    }

    pub fn attribute_id(&self, name: &str) -> Option<usize> {
        self.attributes.iter().position(|a| a.name == name)
    }

    /// A human summary of what the config defines, for `omnia check-config`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let names = |v: &mut dyn Iterator<Item = &str>| v.collect::<Vec<_>>().join(", ");
        out.push_str(&format!(
            "config {} (version {:08x}) is valid\n",
            self.source_name, self.version
        ));
        out.push_str(&format!(
            "  identity namespaces {:>3}: {}\n",
            self.namespaces.len(),
            names(&mut self.namespaces.iter().map(String::as_str))
        ));
        out.push_str(&format!(
            "  channels            {:>3}: {}\n",
            self.channels.len(),
            names(&mut self.channels.iter().map(String::as_str))
        ));
        out.push_str(&format!(
            "  attributes          {:>3}: {}\n",
            self.attributes.len(),
            names(&mut self.attributes.iter().map(|a| a.name.as_str()))
        ));
        out.push_str(&format!(
            "  event types         {:>3}: {}\n",
            self.events.len(),
            names(&mut self.events.iter().map(|e| e.name.as_str()))
        ));
        out.push_str(&format!(
            "  segments            {:>3}: {}\n",
            self.segments.len(),
            names(&mut self.segments.iter().map(|s| s.name.as_str()))
        ));
        out.push_str(&format!(
            "  scores              {:>3}: {}\n",
            self.scores.len(),
            names(&mut self.scores.iter().map(|s| s.name.as_str()))
        ));
        out.push_str(&format!(
            "  profile aggregates  {:>3}: {}\n",
            self.features.len(),
            names(&mut self.features.iter().map(Feature::label))
        ));
        out.push_str(&format!(
            "  offers              {:>3}: {}\n",
            self.decisions.offers.len(),
            names(&mut self.decisions.offers.iter().map(|o| o.name.as_str()))
        ));
        out.push_str(&format!(
            "  experiments         {:>3}: {}\n",
            self.decisions.experiments.len(),
            names(&mut self.decisions.experiments.iter().map(|e| e.name.as_str()))
        ));
        out.push_str(&format!(
            "  goals               {:>3}: {}\n",
            self.goals.len(),
            names(&mut self.goals.iter().map(|g| g.name.as_str()))
        ));
        out.push_str(&format!(
            "  triggers            {:>3}: {}\n",
            self.triggers.triggers.len(),
            names(&mut self.triggers.triggers.iter().map(|t| t.name.as_str()))
        ));
        let timed: Vec<&str> = self
            .dependencies
            .time_dependent
            .iter()
            .map(|&s| self.segments[s].name.as_str())
            .collect();
        out.push_str(&format!(
            "  segments that read time (kept current by timers): {}\n",
            if timed.is_empty() {
                "(none)".to_string()
            } else {
                timed.join(", ")
            }
        ));
        out.push_str(&format!(
            "  engine: {} shards, {} buckets per window, max future skew {}, recheck interval {}\n",
            self.engine.shards,
            self.engine.window_buckets,
            duration::format_duration(self.engine.max_future_skew as u64),
            duration::format_duration(self.engine.recheck_interval as u64)
        ));
        out
    }
}

struct Builder<'s> {
    source: &'s Source,
    errors: Vec<Diagnostic>,
}

/// What pass 3 declares: the names rules and offers refer to.
struct Declared {
    namespaces: Vec<String>,
    channels: Vec<String>,
    attributes: Vec<AttributeDef>,
    events: Vec<EventDef>,
}

impl Builder<'_> {
    fn error(&mut self, span: Span, message: impl Into<String>, help: Option<String>) {
        let mut d = Diagnostic::new(self.source, span, message);
        d.help = help;
        self.errors.push(d);
    }

    /// A rule error, with its span moved from the rule text to the file.
    fn rule_error(&mut self, rule: &Spanned<String>, err: RuleError) {
        let base = rule_text_offset(&self.source.text, rule);
        let span = match base {
            Some(base) => base + err.span.start..base + err.span.end,
            None => rule.span(),
        };
        let mut d = Diagnostic::new(self.source, span, err.message);
        d.help = err.help;
        self.errors.push(d);
    }

    fn name(&mut self, name: &Spanned<String>, what: &str) {
        let text = name.get_ref();
        let valid = text.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            self.error(name.span(), format!("`{text}` is not a valid {what} name"), Some("names start with a lowercase letter and contain only lowercase letters, digits and `_`".into()));
        } else if rule::KEYWORDS.contains(&text.as_str()) {
            self.error(
                name.span(),
                format!(
                    "`{text}` is a keyword of the rule language and cannot name {} {what}",
                    article(what)
                ),
                Some(format!("the keywords are: {}", rule::KEYWORDS.join(", "))),
            );
        }
    }

    fn names(&mut self, list: &[Spanned<String>], what: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for item in list {
            self.name(item, what);
            if out.contains(item.get_ref()) {
                self.error(
                    item.span(),
                    format!("{what} `{}` is declared twice", item.get_ref()),
                    None,
                );
            }
            out.push(item.get_ref().clone());
        }
        out
    }

    fn duration(&mut self, value: &Spanned<String>, what: &str) -> Option<u32> {
        match duration::parse_duration(value.get_ref()) {
            Ok(s) => Some(s as u32),
            Err(e) => {
                self.error(value.span(), format!("bad duration for {what}: {e}"), None);
                None
            }
        }
    }

    /// Validates and compiles `raw` in passes, each adding its errors to one list, so
    /// that every error of the config is reported at once, in file order: settings
    /// (engine, storage: `settings`), names, segments, scores, decisions, cycles. A
    /// value that fails is left out (or defaulted) and the later passes go on without it.
    fn build(mut self, raw: RawConfig, overrides: &Overrides) -> Result<Config, ConfigError> {
        let engine = self.engine_settings(&raw.engine, overrides);
        let storage = self.storage_settings(&raw.storage, overrides);
        let privacy = PrivacySettings {
            retention: raw
                .privacy
                .retention
                .as_ref()
                .and_then(|r| self.duration(r, "privacy.retention"))
                .unwrap_or(0),
            suppress: raw.privacy.suppress.unwrap_or(true),
            // Durations are longer than zero (`duration`).
            erase_within: raw
                .privacy
                .erase_within
                .as_ref()
                .and_then(|d| self.duration(d, "privacy.erase_within"))
                .unwrap_or(3600),
        };
        let credentials = raw.security.credentials.as_ref().map(|file| {
            let dir = std::path::Path::new(&self.source.name)
                .parent()
                .unwrap_or(std::path::Path::new(""));
            dir.join(file)
        });
        let Declared {
            namespaces,
            channels,
            attributes,
            mut events,
        } = self.declared(&raw);
        let mut engine = engine;
        engine.default_channel = self.default_channel(&raw, &channels);
        let segment_names: Vec<String> = raw.segments.keys().map(|k| k.get_ref().clone()).collect();
        let score_names: Vec<String> = raw.scores.keys().map(|k| k.get_ref().clone()).collect();

        let context = self.decision_context(&raw);

        // Rules.
        let interner = Arc::new(Interner::default());
        let ctx = RuleContext {
            context: &context,
            events: &events,
            channels: &channels,
            namespaces: &namespaces,
            attributes: &attributes,
            segments: &segment_names,
            scores: &score_names,
            window_buckets: engine.window_buckets,
        };
        let mut compiler = Compiler::new(ctx, &interner);
        let segments = self.segments(&raw, &mut compiler);
        let scores = self.scores(&raw, &events, &mut compiler);
        let goals = self.goals(&raw.goals, &mut compiler);
        let goal_names: Vec<String> = raw.goals.keys().map(|k| k.get_ref().clone()).collect();
        let decisions = self.decisions(&raw, &mut compiler, context.clone(), &goal_names);
        let triggers = self.trigger_settings(
            &raw.triggers,
            &triggers::TriggerNames {
                segments: &segment_names,
                channels: &channels,
                attributes: &attributes,
            },
            &mut compiler,
        );
        let features = std::mem::take(&mut compiler.features);
        let property_constants = std::mem::take(&mut compiler.property_constants);
        drop(compiler);
        for (event, tables) in events.iter_mut().zip(property_constants) {
            for (property, constants) in event.properties.iter_mut().zip(tables) {
                property.constants = constants;
            }
        }
        for feature in &features {
            match feature {
                Feature::Value {
                    matcher: EventMatch { event: Some(e), .. },
                    property,
                    ty: ValueType::String,
                    ..
                }
                | Feature::Top {
                    matcher: EventMatch { event: Some(e), .. },
                    property,
                    ..
                } => events[*e].properties[*property].interned = true,
                _ => {}
            }
        }
        // Cycles are looked for among the rules that compiled, so that a cycle is
        // reported together with every other error.
        self.cycles(&raw, &segments, &scores);
        if !self.errors.is_empty() {
            self.errors.sort_by_key(|d| (d.line, d.column));
            return Err(ConfigError {
                diagnostics: self.errors,
            });
        }
        let segments: Vec<SegmentDef> = segments.into_iter().flatten().collect();
        let scores: Vec<ScoreDef> = scores.into_iter().flatten().collect();
        // Without errors every goal compiled, so experiments' goal indexes hold.
        let goals: Vec<GoalDef> = goals.into_iter().flatten().collect();

        let mut config = Config {
            source_name: self.source.name.clone(),
            source_text: self.source.text.clone(),
            version: crc32c::crc32c(self.source.text.as_bytes()),
            engine,
            storage,
            privacy,
            triggers,
            credentials,
            namespaces,
            channels,
            attributes,
            events,
            features,
            segments,
            scores,
            goals,
            segment_order: Vec::new(),
            dependencies: Dependencies::default(),
            decisions,
            interner,
        };
        analyse(&mut config);
        Ok(config)
    }

    /// `engine.default_channel`, which must name a declared channel.
    fn default_channel(&mut self, raw: &RawConfig, channels: &[String]) -> Option<usize> {
        let name = raw.engine.default_channel.as_ref()?;
        let found = channels.iter().position(|c| c == name.get_ref());
        if found.is_none() {
            self.error(
                name.span(),
                format!(
                    "engine.default_channel is `{}`, which is not a declared channel",
                    name.get_ref()
                ),
                Some(format!("the channels are: {}", channels.join(", "))),
            );
        }
        found
    }

    /// Pass 3: the names the rest refers to (namespaces, channels, attributes, event
    /// types and their properties), and the names of segments and scores.
    fn declared(&mut self, raw: &RawConfig) -> Declared {
        let namespaces = self.names(raw.identity.namespaces.get_ref(), "identity namespace");
        if namespaces.is_empty() {
            self.error(
                raw.identity.namespaces.span(),
                "identity.namespaces is empty",
                Some(
                    "declare at least one, for example `namespaces = [\"user\", \"anon\"]`".into(),
                ),
            );
        }
        let channels = self.names(raw.channels.get_ref(), "channel");
        if channels.is_empty() {
            self.error(
                raw.channels.span(),
                "no channels are declared",
                Some("add `channels = [\"web\", \"app\", ...]` at the top of the file".into()),
            );
        }
        if channels.len() > 32 {
            self.error(
                raw.channels.span(),
                format!(
                    "{} channels are declared; at most 32 are supported",
                    channels.len()
                ),
                None,
            );
        }
        if namespaces.len() > 32 {
            self.error(
                raw.identity.namespaces.span(),
                format!(
                    "{} namespaces are declared; at most 32 are supported",
                    namespaces.len()
                ),
                None,
            );
        }
        let mut attributes = Vec::new();
        for (name, ty) in &raw.attributes {
            self.name(name, "attribute");
            attributes.push(AttributeDef {
                name: name.get_ref().clone(),
                ty: *ty,
            });
        }
        let mut events = Vec::new();
        for (name, event) in &raw.events {
            self.name(name, "event type");
            let mut properties = Vec::new();
            for (prop, ty) in &event.properties {
                self.name(prop, "property");
                properties.push(PropertyDef {
                    name: prop.get_ref().clone(),
                    aliases: Vec::new(),
                    ty: *ty,
                    constants: Vec::new(),
                    interned: false,
                });
            }
            let mut def = EventDef {
                name: name.get_ref().clone(),
                aliases: Vec::new(),
                description: event.description.clone(),
                properties,
            };
            self.property_aliases(event, &mut def);
            events.push(def);
        }
        self.event_aliases(raw, &mut events);
        if events.is_empty() {
            self.error(
                0..0,
                "no event types are declared",
                Some("add at least one `[events.NAME]` table".into()),
            );
        }
        if events.len() > u16::MAX as usize {
            self.error(0..0, "too many event types", None);
        }
        for name in raw.segments.keys() {
            self.name(name, "segment");
        }
        for name in raw.scores.keys() {
            self.name(name, "score");
        }
        Declared {
            namespaces,
            channels,
            attributes,
            events,
        }
    }

    /// An event type's `aliases`: other names trackers send it by. Any text (Segment's
    /// names have spaces and capitals), but each names one event type only.
    fn event_aliases(&mut self, raw: &RawConfig, events: &mut [EventDef]) {
        for (e, (name, event)) in raw.events.iter().enumerate() {
            for alias in &event.aliases {
                let text = alias.get_ref();
                let taken = events
                    .iter()
                    .find(|d| d.name == *text || d.aliases.contains(text));
                if let Err(message) = alias_text(text) {
                    self.error(
                        alias.span(),
                        format!(
                            "alias `{text}` of event type `{}` {message}",
                            name.get_ref()
                        ),
                        None,
                    );
                } else if let Some(other) = taken {
                    self.error(
                        alias.span(),
                        format!(
                            "alias `{text}` of event type `{}` already names event type `{}`",
                            name.get_ref(),
                            other.name
                        ),
                        Some("an event name must lead to one event type".into()),
                    );
                } else {
                    events[e].aliases.push(text.clone());
                }
            }
        }
    }

    /// An event type's `property_aliases`: per declared property, other names it is
    /// sent by, none of them another property's name or alias.
    fn property_aliases(&mut self, raw: &RawEvent, def: &mut EventDef) {
        for (property, aliases) in &raw.property_aliases {
            let Some(p) = def
                .properties
                .iter()
                .position(|d| d.name == *property.get_ref())
            else {
                self.error(
                    property.span(),
                    format!(
                        "property_aliases of event type `{}` names `{}`, which is not one of its properties",
                        def.name,
                        property.get_ref()
                    ),
                    Some(format!(
                        "its properties are: {}",
                        def.properties.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
                    )),
                );
                continue;
            };
            for alias in aliases {
                let text = alias.get_ref();
                if let Err(message) = alias_text(text) {
                    self.error(
                        alias.span(),
                        format!(
                            "alias `{text}` of property `{}` {message}",
                            property.get_ref()
                        ),
                        None,
                    );
                } else if let Some((other, _)) = def.property(text) {
                    self.error(
                        alias.span(),
                        format!(
                            "alias `{text}` of property `{}` of event type `{}` already names property `{}`",
                            property.get_ref(),
                            def.name,
                            def.properties[other].name
                        ),
                        Some("a property name must lead to one property".into()),
                    );
                } else {
                    def.properties[p].aliases.push(text.clone());
                }
            }
        }
    }

    /// Pass 4: every segment's rule, compiled; `None` where it failed.
    fn segments(
        &mut self,
        raw: &RawConfig,
        compiler: &mut Compiler<'_>,
    ) -> Vec<Option<SegmentDef>> {
        let mut segments = Vec::new();
        for (name, segment) in &raw.segments {
            let mut refs = Refs::default();
            match compiler.condition(segment.rule.get_ref(), &mut refs) {
                Ok(expr) => segments.push(Some(SegmentDef {
                    name: name.get_ref().clone(),
                    description: segment.description.clone(),
                    rule: segment.rule.get_ref().clone(),
                    expr,
                    refs,
                    time_dependent: false,
                })),
                Err(e) => {
                    self.rule_error(&segment.rule, e);
                    segments.push(None);
                }
            }
        }
        segments
    }

    /// Pass 5: every score, compiled; `None` where it failed.
    fn scores(
        &mut self,
        raw: &RawConfig,
        events: &[EventDef],
        compiler: &mut Compiler<'_>,
    ) -> Vec<Option<ScoreDef>> {
        let mut scores = Vec::new();
        for (name, score) in &raw.scores {
            let model = match score.kind {
                RawScoreKind::Decayed => {
                    let half_life = match &score.half_life {
                        Some(h) => {
                            self.duration(h, &format!("scores.{}.half_life", name.get_ref()))
                        }
                        None => {
                            self.error(
                                name.span(),
                                format!("decayed score `{}` needs a `half_life`", name.get_ref()),
                                Some("for example `half_life = \"7d\"`".into()),
                            );
                            None
                        }
                    };
                    let mut weights = vec![0.0; events.len()];
                    match &score.weights {
                        Some(w) if !w.is_empty() => {
                            for (event, weight) in w {
                                match events.iter().position(|e| e.name == *event.get_ref()) {
                                    Some(i) => weights[i] = *weight,
                                    None => self.error(
                                        event.span(),
                                        format!(
                                            "unknown event type `{}` in the weights of score `{}`",
                                            event.get_ref(),
                                            name.get_ref()
                                        ),
                                        Some(format!(
                                            "declared event types: {}",
                                            list(events.iter().map(|e| e.name.as_str()))
                                        )),
                                    ),
                                }
                            }
                        }
                        _ => self.error(
                            name.span(),
                            format!(
                                "decayed score `{}` needs `weights`: a weight per event type",
                                name.get_ref()
                            ),
                            Some("for example `weights = { page_view = 1, purchase = 20 }`".into()),
                        ),
                    }
                    if score.intercept.is_some() || score.features.is_some() {
                        self.error(name.span(), format!("score `{}` is decayed; `intercept` and `features` belong to logistic scores", name.get_ref()), None);
                    }
                    half_life.map(|half_life| ScoreModel::Decayed { half_life, weights })
                }
                RawScoreKind::Logistic => {
                    if score.half_life.is_some() || score.weights.is_some() {
                        self.error(name.span(), format!("score `{}` is logistic; `half_life` and `weights` belong to decayed scores", name.get_ref()), None);
                    }
                    let Some(intercept) = score.intercept else {
                        self.error(
                            name.span(),
                            format!("logistic score `{}` needs an `intercept`", name.get_ref()),
                            None,
                        );
                        scores.push(None);
                        continue;
                    };
                    let mut features = Vec::new();
                    let mut refs = Refs::default();
                    let mut ok = true;
                    for feature in score.features.iter().flatten() {
                        match compiler.number(feature.expr.get_ref(), &mut refs) {
                            Ok(expr) => features.push(ModelFeature {
                                text: feature.expr.get_ref().clone(),
                                expr,
                                weight: feature.weight,
                            }),
                            Err(e) => {
                                ok = false;
                                self.rule_error(&feature.expr, e);
                            }
                        }
                    }
                    ok.then_some(ScoreModel::Logistic {
                        intercept,
                        features,
                        refs,
                    })
                }
            };
            scores.push(model.map(|model| ScoreDef {
                name: name.get_ref().clone(),
                description: score.description.clone(),
                model,
            }));
        }
        scores
    }

    /// Pass 7 (after decisions, pass 6): no segment or score depends on itself through
    /// `in(...)` or `score(...)`, among the rules that compiled.
    fn cycles(
        &mut self,
        raw: &RawConfig,
        segments: &[Option<SegmentDef>],
        scores: &[Option<ScoreDef>],
    ) {
        let segment_count = segments.len();
        let edges: Vec<Vec<usize>> = segments
            .iter()
            .map(|s| {
                s.as_ref()
                    .map(|s| edges_of(&s.refs, segment_count))
                    .unwrap_or_default()
            })
            .chain(scores.iter().map(|s| match s.as_ref().map(|s| &s.model) {
                Some(ScoreModel::Logistic { refs, .. }) => edges_of(refs, segment_count),
                _ => Vec::new(),
            }))
            .collect();
        if let Err(cycle) = topological_order(&edges) {
            let name = |n: usize| match n.checked_sub(segment_count) {
                None => format!(
                    "segment `{}`",
                    raw.segments
                        .get_index(n)
                        .map_or("?", |(k, _)| k.get_ref().as_str())
                ),
                Some(s) => format!(
                    "score `{}`",
                    raw.scores
                        .get_index(s)
                        .map_or("?", |(k, _)| k.get_ref().as_str())
                ),
            };
            let text = cycle
                .iter()
                .map(|&n| name(n))
                .collect::<Vec<_>>()
                .join(" -> ");
            let span = match cycle[0].checked_sub(segment_count) {
                None => raw.segments.get_index(cycle[0]).map(|(_, s)| s.rule.span()),
                Some(s) => raw.scores.get_index(s).map(|(k, _)| k.span()),
            };
            self.error(
                span.unwrap_or(0..0),
                format!("a cycle of dependencies: {text}"),
                Some("nothing can depend on itself through `in(...)` or `score(...)`; break the cycle".into()),
            );
        }
    }
}

/// "a" or "an", for messages that name a kind of thing.
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Where the text of a rule string starts in the file, if the string is written
/// without escapes (so offsets within the value are offsets within the file).
fn rule_text_offset(file: &str, rule: &Spanned<String>) -> Option<usize> {
    let span = rule.span();
    let raw = file.get(span.clone())?;
    for quote in ["\"\"\"", "'''", "\"", "'"] {
        if raw.starts_with(quote) && raw.len() >= 2 * quote.len() {
            let mut inner = &raw[quote.len()..raw.len() - quote.len()];
            let mut start = span.start + quote.len();
            // A newline right after an opening triple quote is not part of the value.
            if quote.len() == 3 {
                for newline in ["\r\n", "\n"] {
                    if let Some(rest) = inner.strip_prefix(newline) {
                        inner = rest;
                        start += newline.len();
                        break;
                    }
                }
            }
            return (inner == rule.get_ref()).then_some(start);
        }
    }
    None
}

/// Node ids in the dependency graph: segments first, then scores.
fn analyse(config: &mut Config) {
    let segments = config.segments.len();
    let node_count = segments + config.scores.len();
    let refs_of = |config: &Config, node: usize| -> Refs {
        if node < segments {
            config.segments[node].refs.clone()
        } else {
            match &config.scores[node - segments].model {
                ScoreModel::Logistic { refs, .. } => refs.clone(),
                ScoreModel::Decayed { .. } => Refs::default(),
            }
        }
    };
    let edges: Vec<Vec<usize>> = (0..node_count)
        .map(|n| {
            let r = refs_of(config, n);
            r.segments
                .iter()
                .copied()
                .chain(r.scores.iter().map(|s| s + segments))
                .collect()
        })
        .collect();
    // Cycles were ruled out before the config was assembled.
    let order = topological_order(&edges).unwrap_or_else(|_| (0..node_count).collect());

    // What each node depends on, transitively, in dependency order.
    let events = config.events.len();
    let mut on_event = vec![vec![false; events]; node_count];
    let mut on_attributes = vec![false; node_count];
    let mut on_keys = vec![false; node_count];
    let mut timed = vec![false; node_count];
    for &n in &order {
        let refs = refs_of(config, n);
        for &f in &refs.features {
            match config.features[f].matcher().event {
                Some(e) => on_event[n][e] = true,
                None => on_event[n].iter_mut().for_each(|x| *x = true),
            }
        }
        if refs.activity {
            on_event[n].iter_mut().for_each(|x| *x = true);
        }
        on_attributes[n] = refs.attributes;
        on_keys[n] = refs.keys;
        timed[n] = refs
            .features
            .iter()
            .any(|&f| config.features[f].reads_time())
            || refs.activity;
        if n >= segments {
            if let ScoreModel::Decayed { weights, .. } = &config.scores[n - segments].model {
                for (e, w) in weights.iter().enumerate() {
                    if *w != 0.0 {
                        on_event[n][e] = true;
                    }
                }
                timed[n] = true;
            }
        }
        for &m in &edges[n] {
            let inherited = on_event[m].clone();
            for (mine, theirs) in on_event[n].iter_mut().zip(inherited) {
                *mine |= theirs;
            }
            on_attributes[n] |= on_attributes[m];
            on_keys[n] |= on_keys[m];
            timed[n] |= timed[m];
        }
    }
    config.segment_order = order.iter().copied().filter(|&n| n < segments).collect();
    for (segment, timed) in config.segments.iter_mut().zip(&timed) {
        segment.time_dependent = *timed;
    }
    let mut deps = Dependencies {
        event_features: vec![Vec::new(); events],
        event_scores: vec![Vec::new(); events],
        event_goals: vec![Vec::new(); events],
        affected: vec![Default::default(); events],
        time_dependent: config
            .segment_order
            .iter()
            .copied()
            .filter(|&s| timed[s])
            .collect(),
    };
    for (f, feature) in config.features.iter().enumerate() {
        match feature.matcher().event {
            Some(e) => deps.event_features[e].push(f),
            None => (0..events).for_each(|e| deps.event_features[e].push(f)),
        }
    }
    for (s, score) in config.scores.iter().enumerate() {
        if let ScoreModel::Decayed { weights, .. } = &score.model {
            for (e, w) in weights.iter().enumerate() {
                if *w != 0.0 {
                    deps.event_scores[e].push(s);
                }
            }
        }
    }
    let mut measured = vec![false; config.goals.len()];
    for experiment in &config.decisions.experiments {
        experiment.goals.iter().for_each(|&g| measured[g] = true);
    }
    for (g, goal) in config.goals.iter().enumerate() {
        if measured[g] {
            deps.event_goals[goal.event].push(g);
        }
    }
    for (e, affected) in deps.affected.iter_mut().enumerate() {
        for (variant, list) in affected.iter_mut().enumerate() {
            let attributes_changed = variant & 1 != 0;
            let keys_changed = variant & 2 != 0;
            *list = config
                .segment_order
                .iter()
                .copied()
                .filter(|&s| {
                    on_event[s][e]
                        || (attributes_changed && on_attributes[s])
                        || (keys_changed && on_keys[s])
                })
                .collect();
        }
    }
    config.dependencies = deps;
}

/// The edges of a node of the dependency graph: segments `0..segments`, then scores.
fn edges_of(refs: &Refs, segments: usize) -> Vec<usize> {
    refs.segments
        .iter()
        .copied()
        .chain(refs.scores.iter().map(|s| s + segments))
        .collect()
}

/// Nodes ordered so that each comes after the nodes it has edges to; a cycle if none.
fn topological_order(edges: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    // Depth-first; a node reached again while still on the path closes a cycle.
    fn visit(
        n: usize,
        edges: &[Vec<usize>],
        state: &mut [u8],
        order: &mut Vec<usize>,
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        match state[n] {
            2 => return None,
            1 => {
                let from = path.iter().position(|&p| p == n).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(n);
                return Some(cycle);
            }
            _ => {}
        }
        state[n] = 1;
        path.push(n);
        for &m in &edges[n] {
            if let Some(cycle) = visit(m, edges, state, order, path) {
                return Some(cycle);
            }
        }
        path.pop();
        state[n] = 2;
        order.push(n);
        None
    }
    let mut state = vec![0u8; edges.len()];
    let mut order = Vec::with_capacity(edges.len());
    for n in 0..edges.len() {
        if let Some(cycle) = visit(n, edges, &mut state, &mut order, &mut Vec::new()) {
            return Err(cycle);
        }
    }
    Ok(order)
}

/// Why `text` cannot be an alias: what a tracker may send as a name, at most 256 bytes
/// of printable text.
fn alias_text(text: &str) -> Result<(), &'static str> {
    if text.trim().is_empty() {
        Err("is empty")
    } else if text.len() > 256 {
        Err("is longer than 256 bytes")
    } else if text.chars().any(char::is_control) {
        Err("holds a control character")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_config_is_valid() {
        let config = Config::embedded_default().unwrap_or_else(|e| panic!("{e}"));
        assert!(config.segment_id("cart_abandoners").is_some());
        assert!(config.summary().contains("is valid"));
    }

    #[test]
    fn rule_offsets_map_into_the_file() {
        let file = "rule = \"a == 1\"";
        let spanned = Spanned::new(7..15, "a == 1".to_string());
        assert_eq!(rule_text_offset(file, &spanned), Some(8));
        let escaped = Spanned::new(7..15, "a == \"".to_string());
        assert_eq!(rule_text_offset(file, &escaped), None);
    }
}
