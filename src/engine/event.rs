//! Events: what arrives (a [`RawEvent`], names as text) and what the engine applies
//! (an [`Event`], names resolved to dense ids).
//!
//! Resolution is the boundary where text meets the engine: event type, channel,
//! namespaces, properties and attributes are looked up once, property values are type
//! checked, and string properties that rules compare are turned into integer codes.
//! Every failure is an [`EventError`] that names the event type, the field and what was
//! expected, so a client can fix its data. After resolution, applying an event needs no
//! string comparison.

use compact_str::CompactString;

use crate::config::{Config, UnknownProperties, ValueType};
pub use crate::model::event::{EventView, RawEvent, RawValue, ValueRef};

/// A property value ready for filters and aggregates: a string as the code of the
/// property's constant it equals (0 for a string no rule mentions), and its interned
/// code when a `first` or `last` keeps the property (else 0).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum PropValue {
    #[default]
    Missing,
    Num(f64),
    Str {
        constant: u32,
        code: u32,
    },
    Bool(bool),
}

/// An attribute value ready to store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttrValue {
    Num(f64),
    /// Interned string code.
    Str(u32),
    Bool(bool),
}

/// An identity key: `namespace:value`, with the namespace resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub namespace: usize,
    /// The whole key text, `namespace:value`. Keys of up to 24 bytes are stored inline,
    /// so looking one up in the identity map touches no second cache line.
    pub text: CompactString,
}

/// An event with every name resolved against the config.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub keys: Vec<Key>,
    pub event_type: usize,
    pub channel: usize,
    pub timestamp_ms: i64,
    /// Indexed by the event type's property index.
    pub properties: Vec<PropValue>,
    pub attributes: Vec<(usize, AttrValue)>,
}

/// Why an event was not accepted. Each names what is wrong and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    #[error("unknown event type `{name}`; declared event types: {declared}")]
    UnknownEventType { name: String, declared: String },
    #[error("unknown channel `{name}` in event `{event}`; declared channels: {declared}")]
    UnknownChannel {
        event: String,
        name: String,
        declared: String,
    },
    #[error("event `{event}` has no identity key; send at least one key such as `user:123`")]
    NoKeys { event: String },
    #[error("bad identity key `{key}` in event `{event}`: {reason}")]
    BadKey {
        event: String,
        key: String,
        reason: String,
    },
    #[error("unknown property `{property}` in event `{event}`; its properties are: {declared} (or set engine.unknown_properties = \"ignore\")")]
    UnknownProperty {
        event: String,
        property: String,
        declared: String,
    },
    #[error("property `{property}` of event `{event}` must be a {expected}, found a {found}")]
    PropertyType {
        event: String,
        property: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("unknown attribute `{attribute}` in event `{event}`; declared attributes: {declared}")]
    UnknownAttribute {
        event: String,
        attribute: String,
        declared: String,
    },
    #[error("attribute `{attribute}` in event `{event}` must be a {expected}, found a {found}")]
    AttributeType {
        event: String,
        attribute: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("event `{event}` has timestamp {timestamp_ms}, which is not milliseconds since the Unix epoch between 2001-01-01 and 2106-02-07")]
    BadTimestamp { event: String, timestamp_ms: i64 },
    #[error("event `{event}` has timestamp {timestamp_ms}, which looks like seconds since the Unix epoch: timestamps are milliseconds ({timestamp_ms}000), between 2001-01-01 and 2106-02-07")]
    TimestampInSeconds { event: String, timestamp_ms: i64 },
    #[error("{field} of event `{event}` is {bytes} bytes long; a string value is at most {max} bytes (engine.max_value_bytes)")]
    ValueTooLong {
        event: String,
        /// `property \`NAME\`` or `attribute \`NAME\``.
        field: String,
        bytes: usize,
        max: u32,
    },
    #[error("event `{event}` has {count} {what}; an event has at most 255 of each")]
    TooMany {
        event: String,
        what: &'static str,
        count: usize,
    },
    /// The write-ahead log cannot store changes now (a full disk): nothing was applied.
    #[error("{reason}")]
    StorageFailed { reason: String },
    #[error("event `{event}` carries {bytes} bytes of keys, names and values; an event is at most {max} bytes (engine.max_event_bytes)")]
    TooLarge {
        event: String,
        bytes: usize,
        max: u32,
    },
    #[error("event `{event}` carries a key of a forgotten customer (FORGET): it is not applied, so the person is not brought back")]
    Suppressed { event: String },
    #[error("event `{event}` cannot create a new customer: shard {shard} holds its maximum of {capacity} customers; raise engine.shards")]
    Full {
        event: String,
        shard: usize,
        capacity: u64,
    },
    #[error("event `{event}` is {ahead_ms} ms in the future (timestamp {timestamp_ms}); at most {max_skew_s} s of clock skew is allowed (engine.max_future_skew)")]
    FromTheFuture {
        event: String,
        timestamp_ms: i64,
        ahead_ms: i64,
        max_skew_s: u32,
    },
}

/// Longest accepted key value, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// Parses and checks one `namespace:value` key.
pub fn parse_key(config: &Config, event: &str, key: &str) -> Result<Key, EventError> {
    let bad = |reason: String| EventError::BadKey {
        event: event.to_string(),
        key: key.to_string(),
        reason,
    };
    let Some((namespace, value)) = key.split_once(':') else {
        return Err(bad(
            "expected `namespace:value`, for example `user:123`".into()
        ));
    };
    let Some(ns) = config.namespace_id(namespace) else {
        return Err(bad(format!(
            "unknown namespace `{namespace}`; declared namespaces: {}",
            config.namespaces.join(", ")
        )));
    };
    if value.is_empty() {
        return Err(bad("the value after `:` is empty".into()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(bad(format!("longer than {MAX_KEY_LEN} bytes")));
    }
    Ok(Key {
        namespace: ns,
        text: CompactString::new(key),
    })
}

/// Most keys, properties or attributes one event may carry.
pub const MAX_PER_EVENT: usize = 255;

/// The earliest accepted event time: 2001-01-01T00:00:00Z, in milliseconds. Earlier
/// times are almost always a unit mistake (seconds sent as milliseconds).
pub const MIN_TIMESTAMP_MS: i64 = 978_307_200_000;
/// The latest accepted event time: the last whole second a `u32` of seconds holds
/// (2106-02-07), the unit profiles store times in.
pub const MAX_TIMESTAMP_MS: i64 = (u32::MAX as i64 - 1) * 1000;

/// The limits a new event must meet before it is resolved, beyond what [`resolve`]
/// checks: a time from 2001 on (epoch seconds are told so), and the size limits of
/// `check_size`. Not applied in replay: records an earlier version or config accepted
/// must still load.
pub fn admit(config: &Config, raw: &impl EventView) -> Result<(), EventError> {
    let timestamp_ms = raw.timestamp_ms();
    if !(MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&timestamp_ms) {
        let event = raw.event_type().to_string();
        // Epoch seconds of 2001 to 2106, read as milliseconds, fall in January 1970: a
        // tracker that sends seconds is told so instead of being filed in 1970.
        return Err(
            if (MIN_TIMESTAMP_MS / 1000..=MAX_TIMESTAMP_MS / 1000).contains(&timestamp_ms) {
                EventError::TimestampInSeconds {
                    event,
                    timestamp_ms,
                }
            } else {
                EventError::BadTimestamp {
                    event,
                    timestamp_ms,
                }
            },
        );
    }
    check_size(config, raw.event_type(), raw)
}

/// Refuses an event whose strings are longer than the config allows: one string value
/// (`engine.max_value_bytes`), or keys, names and values together
/// (`engine.max_event_bytes`). Ignored properties count too, because the log keeps the
/// event as it came.
fn check_size(config: &Config, name: &str, raw: &impl EventView) -> Result<(), EventError> {
    let max_value = config.engine.max_value_bytes;
    let mut total = name.len() + raw.channel().len();
    // One pass over each list: sizes and counts together (each pass reads the event's
    // bytes again).
    let mut keys = 0;
    for key in raw.keys() {
        total += key.len();
        keys += 1;
    }
    let long = |kind: &str, field: &str, bytes: usize| EventError::ValueTooLong {
        event: name.to_string(),
        field: format!("{kind} `{field}`"),
        bytes,
        max: max_value,
    };
    let mut sized = |kind: &str, pairs: &mut dyn Iterator<Item = (&str, ValueRef<'_>)>| {
        let mut count = 0;
        let mut longest: Option<EventError> = None;
        for (field, value) in pairs {
            let bytes = value.text_len();
            if bytes > max_value as usize && longest.is_none() {
                longest = Some(long(kind, field, bytes));
            }
            total += field.len() + bytes;
            count += 1;
        }
        (count, longest)
    };
    let (properties, long_property) = sized("property", &mut raw.properties());
    let (attributes, long_attribute) = sized("attribute", &mut raw.attributes());
    // The log stores at most 255 of each (a `u8` count): more could not be replayed.
    let counts = [
        ("keys", keys),
        ("properties", properties),
        ("attributes", attributes),
    ];
    if let Some((what, n)) = counts.into_iter().find(|(_, n)| *n > MAX_PER_EVENT) {
        return Err(EventError::TooMany {
            event: name.to_string(),
            what,
            count: n,
        });
    }
    if let Some(e) = long_property.or(long_attribute) {
        return Err(e);
    }
    let max = config.engine.max_event_bytes;
    if total > max as usize {
        return Err(EventError::TooLarge {
            event: name.to_string(),
            bytes: total,
            max,
        });
    }
    Ok(())
}

/// Why `value` cannot be stored as `ty`: (expected, found), or `None` if it can.
/// Numbers must be finite: NaN and infinity would make every rule on them meaningless.
fn mismatch(ty: ValueType, value: ValueRef<'_>) -> Option<(&'static str, &'static str)> {
    match (ty, value) {
        (ValueType::Number, ValueRef::Num(v)) if v.is_finite() => None,
        (ValueType::Number, ValueRef::Num(_)) => Some(("finite number", "NaN or infinity")),
        (ValueType::Bool, ValueRef::Bool(_)) | (ValueType::String, ValueRef::Str(_)) => None,
        (expected, found) => Some((expected.name(), found.type_name())),
    }
}

/// A string property's value as rules compare it: the index + 1 of the constant it
/// equals, 0 when no rule compares the property with this string; and, for a property a
/// `first` or `last` keeps, its code in `interner` (else 0).
pub(crate) fn string_property(
    interner: &crate::config::rule::Interner,
    prop: &crate::config::PropertyDef,
    s: &str,
) -> PropValue {
    PropValue::Str {
        constant: prop
            .constants
            .iter()
            .position(|c| c == s)
            .map_or(0, |i| i as u32 + 1),
        code: if prop.interned { interner.intern(s) } else { 0 },
    }
}

/// The id of the event type `name`, or the error that lists the declared ones.
pub(crate) fn event_type_id(config: &Config, name: &str) -> Result<usize, EventError> {
    config
        .event_id(name)
        .ok_or_else(|| EventError::UnknownEventType {
            name: name.to_string(),
            declared: config
                .events
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Resolves an event (owned, or borrowed from a frame) against the config and the
/// attribute interner. Allocates only the resolved event, and an error's text.
pub fn resolve(config: &Config, raw: &impl EventView) -> Result<Event, EventError> {
    resolve_noting(config, raw, None)
}

/// What [`resolve_noting`] dropped: `(is an attribute, name)`.
pub(crate) type Dropped<'r> = Vec<(bool, &'r str)>;

/// [`resolve`], noting in `dropped` what `engine.unknown_properties = "ignore"` drops, so
/// the caller can count it once the event is applied.
pub(crate) fn resolve_noting<'r, V: EventView>(
    config: &Config,
    raw: &'r V,
    mut dropped: Option<&mut Dropped<'r>>,
) -> Result<Event, EventError> {
    let name = raw.event_type();
    let event_type = event_type_id(config, name)?;
    let list = |names: &mut dyn Iterator<Item = &str>| names.collect::<Vec<_>>().join(", ");
    let def = &config.events[event_type];
    let Some(channel) = config.channel_id(raw.channel()) else {
        return Err(EventError::UnknownChannel {
            event: name.to_string(),
            name: raw.channel().to_string(),
            declared: config.channels.join(", "),
        });
    };
    let mut keys = Vec::with_capacity(2);
    for key in raw.keys() {
        let key = parse_key(config, name, key)?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(EventError::NoKeys {
            event: name.to_string(),
        });
    }
    let timestamp_ms = raw.timestamp_ms();
    // What any stored record must satisfy: a time in `u32` seconds. The stricter limits
    // for new events are [`admit`]'s, so a log an earlier version accepted still replays.
    if timestamp_ms < 1000 || timestamp_ms / 1000 > u32::MAX as i64 - 1 {
        return Err(EventError::BadTimestamp {
            event: name.to_string(),
            timestamp_ms,
        });
    }
    let mut properties = vec![PropValue::Missing; def.properties.len()];
    for (property, value) in raw.properties() {
        let Some((index, alias)) = def.property(property) else {
            if config.engine.unknown_properties == UnknownProperties::Ignore {
                if let Some(dropped) = dropped.as_deref_mut() {
                    dropped.push((false, property));
                }
                continue;
            }
            return Err(EventError::UnknownProperty {
                event: name.to_string(),
                property: property.to_string(),
                declared: list(&mut def.properties.iter().map(|p| p.name.as_str())),
            });
        };
        let prop = &def.properties[index];
        if let Some((expected, found)) = mismatch(prop.ty, value) {
            return Err(EventError::PropertyType {
                event: name.to_string(),
                property: property.to_string(),
                expected,
                found,
            });
        }
        // The declared name wins over an alias whatever their order; between aliases,
        // the first.
        if alias && properties[index] != PropValue::Missing {
            continue;
        }
        properties[index] = match value {
            ValueRef::Num(v) => PropValue::Num(v),
            ValueRef::Bool(b) => PropValue::Bool(b),
            ValueRef::Str(s) => string_property(&config.interner, prop, s),
        };
    }
    let mut attributes = Vec::new();
    for (attribute, value) in raw.attributes() {
        let Some(index) = config.attribute_id(attribute) else {
            if config.engine.unknown_properties == UnknownProperties::Ignore {
                if let Some(dropped) = dropped.as_deref_mut() {
                    dropped.push((true, attribute));
                }
                continue;
            }
            return Err(EventError::UnknownAttribute {
                event: name.to_string(),
                attribute: attribute.to_string(),
                declared: list(&mut config.attributes.iter().map(|a| a.name.as_str())),
            });
        };
        let ty = config.attributes[index].ty;
        if let Some((expected, found)) = mismatch(ty, value) {
            return Err(EventError::AttributeType {
                event: name.to_string(),
                attribute: attribute.to_string(),
                expected,
                found,
            });
        }
        let v = match value {
            ValueRef::Num(v) => AttrValue::Num(v),
            ValueRef::Bool(b) => AttrValue::Bool(b),
            ValueRef::Str(s) => AttrValue::Str(config.interner.intern(s)),
        };
        attributes.push((index, v));
    }
    Ok(Event {
        keys,
        event_type,
        channel,
        timestamp_ms,
        properties,
        attributes,
    })
}
