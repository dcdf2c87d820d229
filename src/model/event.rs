//! Events as clients describe them: names as text, values as sent.
//!
//! This is what crosses the wire and what the engine resolves; it belongs to neither,
//! so both use it.

/// A value of a property or attribute as sent.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum RawValue {
    Num(f64),
    Str(String),
    Bool(bool),
}

impl RawValue {
    pub fn type_name(&self) -> &'static str {
        match self {
            RawValue::Num(_) => "number",
            RawValue::Str(_) => "string",
            RawValue::Bool(_) => "bool",
        }
    }
}

impl From<f64> for RawValue {
    fn from(v: f64) -> Self {
        RawValue::Num(v)
    }
}

impl From<i64> for RawValue {
    fn from(v: i64) -> Self {
        RawValue::Num(v as f64)
    }
}

impl From<&str> for RawValue {
    fn from(v: &str) -> Self {
        RawValue::Str(v.to_string())
    }
}

impl From<String> for RawValue {
    fn from(v: String) -> Self {
        RawValue::Str(v)
    }
}

impl From<bool> for RawValue {
    fn from(v: bool) -> Self {
        RawValue::Bool(v)
    }
}

/// A touchpoint as a client describes it: who, what, where, when, and details.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    /// Event type name, for example `purchase`.
    pub event: String,
    /// Identity keys, `namespace:value`. Several keys link (and if needed merge) profiles.
    pub keys: Vec<String>,
    pub channel: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    pub properties: Vec<(String, RawValue)>,
    /// Profile attributes to set (traits), newest value wins.
    pub attributes: Vec<(String, RawValue)>,
}

impl RawEvent {
    pub fn new(event: &str, channel: &str, timestamp_ms: i64) -> Self {
        RawEvent {
            event: event.to_string(),
            keys: Vec::new(),
            channel: channel.to_string(),
            timestamp_ms,
            properties: Vec::new(),
            attributes: Vec::new(),
        }
    }

    pub fn key(mut self, key: &str) -> Self {
        self.keys.push(key.to_string());
        self
    }

    pub fn prop(mut self, name: &str, value: impl Into<RawValue>) -> Self {
        self.properties.push((name.to_string(), value.into()));
        self
    }

    pub fn attr(mut self, name: &str, value: impl Into<RawValue>) -> Self {
        self.attributes.push((name.to_string(), value.into()));
        self
    }
}

impl std::fmt::Display for RawValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawValue::Num(v) => write!(f, "{v}"),
            RawValue::Str(s) => write!(f, "{s:?}"),
            RawValue::Bool(b) => write!(f, "{b}"),
        }
    }
}
