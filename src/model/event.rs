//! Events as clients describe them: names as text, values as sent.
//!
//! This is what crosses the wire and what the engine resolves; it belongs to neither,
//! so both use it. [`RawEvent`] owns its text; [`EventView`] is what the engine needs to
//! read an event, so a view borrowed from a frame body (no copy, no allocation) is
//! resolved exactly like an owned event.

/// The longest message id an event may carry, in bytes: Segment's are UUIDs (36
/// bytes) or `ajs-` + 32 hex digits; 256 leaves room for any tracker's and bounds what
/// the dedup table and the log keep per event.
pub const MAX_MESSAGE_ID: usize = 256;

/// A value borrowed from wherever the event lives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Num(f64),
    Str(&'a str),
    Bool(bool),
}

impl ValueRef<'_> {
    pub fn type_name(&self) -> &'static str {
        match self {
            ValueRef::Num(_) => "number",
            ValueRef::Str(_) => "string",
            ValueRef::Bool(_) => "bool",
        }
    }

    /// Bytes of text the value carries: a string's length, 0 for numbers and bools.
    pub fn text_len(&self) -> usize {
        match self {
            ValueRef::Str(s) => s.len(),
            _ => 0,
        }
    }

    pub fn to_owned(&self) -> RawValue {
        match *self {
            ValueRef::Num(v) => RawValue::Num(v),
            ValueRef::Str(s) => RawValue::Str(s.to_string()),
            ValueRef::Bool(b) => RawValue::Bool(b),
        }
    }
}

/// Read access to an event as sent, owned or borrowed.
pub trait EventView {
    fn event_type(&self) -> &str;
    fn channel(&self) -> &str;
    fn timestamp_ms(&self) -> i64;
    fn keys(&self) -> impl Iterator<Item = &str>;
    fn properties(&self) -> impl Iterator<Item = (&str, ValueRef<'_>)>;
    fn attributes(&self) -> impl Iterator<Item = (&str, ValueRef<'_>)>;
    /// The event in the INGEST layout, when it already exists in that form (an event
    /// read in place from a frame): the write-ahead log stores it as it is.
    fn encoded(&self) -> Option<&[u8]> {
        None
    }
    /// The sender's id for this event (Segment's `messageId`): an event whose id was
    /// applied within `engine.dedup_window` is not applied again.
    fn message_id(&self) -> Option<&str> {
        None
    }
}

impl<T: EventView> EventView for &T {
    fn event_type(&self) -> &str {
        (*self).event_type()
    }
    fn channel(&self) -> &str {
        (*self).channel()
    }
    fn timestamp_ms(&self) -> i64 {
        (*self).timestamp_ms()
    }
    fn keys(&self) -> impl Iterator<Item = &str> {
        (*self).keys()
    }
    fn properties(&self) -> impl Iterator<Item = (&str, ValueRef<'_>)> {
        (*self).properties()
    }
    fn attributes(&self) -> impl Iterator<Item = (&str, ValueRef<'_>)> {
        (*self).attributes()
    }
    fn encoded(&self) -> Option<&[u8]> {
        (*self).encoded()
    }
    fn message_id(&self) -> Option<&str> {
        (*self).message_id()
    }
}

impl RawValue {
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            RawValue::Num(v) => ValueRef::Num(*v),
            RawValue::Str(s) => ValueRef::Str(s),
            RawValue::Bool(b) => ValueRef::Bool(*b),
        }
    }
}

impl EventView for RawEvent {
    fn event_type(&self) -> &str {
        &self.event
    }
    fn channel(&self) -> &str {
        &self.channel
    }
    fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }
    fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(String::as_str)
    }
    fn properties(&self) -> impl Iterator<Item = (&str, ValueRef<'_>)> {
        self.properties
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_ref()))
    }
    fn attributes(&self) -> impl Iterator<Item = (&str, ValueRef<'_>)> {
        self.attributes
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_ref()))
    }
    fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }
}

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
    /// The sender's id for the event, for exactly-once ingest (see
    /// [`EventView::message_id`]); at most [`MAX_MESSAGE_ID`] bytes.
    pub message_id: Option<String>,
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
            message_id: None,
        }
    }

    /// The sender's id for the event (see [`EventView::message_id`]).
    pub fn with_message_id(mut self, id: &str) -> Self {
        self.message_id = Some(id.to_string());
        self
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
