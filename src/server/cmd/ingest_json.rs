//! INGEST_JSON: events in the Segment Spec shape that trackers already emit.
//!
//! The body is one JSON event, an array of events, `{"batch": [...]}`, or
//! newline-delimited events (one per line). Mapping:
//!
//! | Segment | omnia |
//! |---|---|
//! | `type: "track"`, `event: NAME` | event type `NAME` |
//! | `type: "identify"` / `"alias"` | event type `identify` |
//! | `type: "page"` / `"screen"` | event type `page_view`, channel `web` / `app` unless `context.channel` says otherwise |
//! | `userId`, `anonymousId`, `previousId` (alias) | keys `user:…`, `anon:…`, `anon:…` |
//! | `keys: ["card:8812", …]` (omnia extension) | more keys, as written |
//! | `traits.email`, `traits.phone` | keys `email:…`, `phone:…` (when those namespaces exist) |
//! | `traits`, `context.traits` (other fields) | attributes |
//! | `properties` | properties |
//! | `timestamp` (RFC 3339 text or epoch milliseconds) | event time, corrected by `sentAt`; the server's time if absent |
//! | `context.channel` | channel; else `engine.default_channel` |
//!
//! `sentAt` (the call's, or the batch's) corrects the sender's clock as Segment does:
//! the event happened `sentAt - timestamp` before the server received it. The HTTP
//! API's single calls (`/v1/track`, ...) name their type by their path
//! ([`parse_calls`]). `messageId` is the event's message id: a copy of an event whose id
//! was applied within `engine.dedup_window` is acknowledged as a duplicate and not
//! applied again (see `engine::dedup`). Each event that cannot be converted is rejected
//! with its index and the field at fault, and the others are still applied.
//!
//! How a body becomes events, and why it is fast: simd-json parses the body in place
//! into a flat tape (no tree, no recursion, strings unescaped inside the body itself),
//! and each event is read off the tape into a [`JsonEvent`] that borrows its names and
//! values from the body. The keys omnia composes (`user:` + `userId`) go end to end into
//! one string per body. So a batch of thousands of events costs a handful of
//! allocations, and the engine reads every event in place, as it reads a binary INGEST
//! frame. Per-event errors are worded in the same pass, only for the events at fault.
//!
//! Invariant: a [`JsonEvents`] holds exactly one result per event of the body, in body
//! order, so an acknowledgement's indexes are the sender's.

use std::cell::RefCell;

use simd_json::prelude::*;
use simd_json::tape::Value;

use super::ingest;
use crate::config::{Config, UnknownProperties};
use crate::engine::Receipt;
use crate::model::{EventView, ValueRef, MAX_MESSAGE_ID};
use crate::protocol::json::{check_nesting, MAX_JSON_DEPTH};
use crate::protocol::{ErrorCode, Response};
use crate::server::Shared;

/// Why one event of a body was not converted: the code and a message naming its index
/// and field.
pub type Rejection = (ErrorCode, String);

pub fn apply(shared: &Shared, json: &[u8], receipt: &mut Receipt) -> Response {
    let node = shared.node();
    let engine = node.engine();
    // simd-json parses in place: the frame's bytes are shared, so parse a copy.
    let mut body = json.to_vec();
    match parse(engine.config(), &mut body, engine.now_ms()) {
        Ok(events) => ingest::apply(shared, events.iter(), receipt),
        Err(message) => Response::error(ErrorCode::BadJson, message),
    }
}

/// Converts a body to events; `Err` only when the body as a whole is not JSON. The body
/// is parsed in place (its escaped strings are rewritten), and the events borrow it.
pub fn parse<'a>(
    config: &'a Config,
    json: &'a mut [u8],
    now_ms: i64,
) -> Result<JsonEvents<'a>, String> {
    parse_calls(config, json, now_ms, None)
}

/// [`parse`], with `kind` the Segment call type of events that name none (the HTTP
/// API's `/v1/track`, `/v1/identify`, ... say it with their path).
pub fn parse_calls<'a>(
    config: &'a Config,
    json: &'a mut [u8],
    now_ms: i64,
    kind: Option<&'a str>,
) -> Result<JsonEvents<'a>, String> {
    let call = Call {
        config,
        received_ms: now_ms,
        kind,
        sent_at: None,
    };
    let mut events = JsonEvents::default();
    // A body one event per line may have one line nested too deep: that line is rejected
    // below, on its own. Any other body too deep is refused before the parser sees it.
    let may_be_lines =
        json.contains(&b'\n') && json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[');
    let too_deep = check_nesting(json, MAX_JSON_DEPTH).err();
    match too_deep {
        Some(e) if !may_be_lines => return Err(e.to_string()),
        Some(_) => events.lines(&call, json),
        None if may_be_lines && is_lines(json) => events.lines(&call, json),
        None => {
            let tape = to_tape(json).map_err(|e| format!("bad JSON: {e}"))?;
            events.body(&call, tape.as_value())?;
        }
    }
    Ok(events)
}

/// Whether a body with line breaks, not an array, is one event per line rather than one
/// (perhaps pretty-printed) document: it is when it has more than one non-blank line
/// and either its first line is a whole JSON value or the body as a whole does not
/// parse. Decided on copies, so the body itself is parsed once, in place, by whichever
/// reading wins.
fn is_lines(json: &[u8]) -> bool {
    let mut lines = json
        .split(|b| *b == b'\n')
        .filter(|line| line.iter().any(|b| !b.is_ascii_whitespace()));
    let (Some(first), Some(_)) = (lines.next(), lines.next()) else {
        return false;
    };
    to_tape(&mut first.to_vec()).is_ok() || to_tape(&mut json.to_vec()).is_err()
}

thread_local! {
    /// simd-json's scratch space (an aligned copy of the input, structural indexes,
    /// string space), kept per thread so a body does not allocate its own.
    static BUFFERS: RefCell<simd_json::Buffers> = RefCell::new(simd_json::Buffers::default());
}

fn to_tape(json: &mut [u8]) -> simd_json::Result<simd_json::Tape<'_>> {
    BUFFERS.with(|buffers| match buffers.try_borrow_mut() {
        Ok(mut buffers) => simd_json::to_tape_with_buffers(json, &mut buffers),
        // Not reentrant in practice; a nested call would just use fresh buffers.
        Err(_) => simd_json::to_tape(json),
    })
}

/// The events of one JSON body, each converted or rejected, in body order.
#[derive(Debug, Default)]
pub struct JsonEvents<'a> {
    /// Keys omnia composed from a field and its namespace, end to end.
    composed: String,
    keys: Vec<Key<'a>>,
    /// Properties and attributes of all events, each event's in one run.
    values: Vec<(&'a str, ValueRef<'a>)>,
    events: Vec<Result<Slot<'a>, Rejection>>,
}

/// A key as the body wrote it (`keys: [...]`), or composed in [`JsonEvents::composed`].
#[derive(Debug, Clone, Copy)]
enum Key<'a> {
    Sent(&'a str),
    Composed { start: u32, end: u32 },
}

/// One converted event: its text borrowed from the body, its keys and values runs in
/// the [`JsonEvents`] that holds it.
#[derive(Debug)]
struct Slot<'a> {
    event: &'a str,
    channel: &'a str,
    timestamp_ms: i64,
    message_id: Option<&'a str>,
    keys: (u32, u32),
    properties: (u32, u32),
    attributes: (u32, u32),
}

/// One converted event of a [`JsonEvents`], as the engine reads it.
#[derive(Debug, Clone, Copy)]
pub struct JsonEvent<'b, 'a> {
    events: &'b JsonEvents<'a>,
    slot: &'b Slot<'a>,
}

impl<'a> JsonEvents<'a> {
    /// How many events the body held, converted or not.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Every event in body order: converted, or the reason it was not.
    pub fn iter(&self) -> impl Iterator<Item = Result<JsonEvent<'_, 'a>, Rejection>> + '_ {
        self.events.iter().map(move |e| match e {
            Ok(slot) => Ok(JsonEvent { events: self, slot }),
            Err(rejection) => Err(rejection.clone()),
        })
    }

    /// A whole JSON document: an array of events, a batch, or one event.
    fn body(&mut self, call: &Call<'a>, v: Value<'_, 'a>) -> Result<(), String> {
        if let Some(items) = v.as_array() {
            for (i, item) in items.iter().enumerate() {
                self.push(call, i, item);
            }
            return Ok(());
        }
        if let Some(o) = v.as_object() {
            if let Some(batch) = o.get("batch") {
                let Some(items) = batch.as_array() else {
                    return Err("field `batch` must be an array of events".into());
                };
                let call = Call {
                    sent_at: match o.get("sentAt") {
                        None => None,
                        Some(t) => Some(time_ms(t).map_err(|e| format!("field `sentAt`: {e}"))?),
                    },
                    ..*call
                };
                for (i, item) in items.iter().enumerate() {
                    self.push(&call, i, item);
                }
                return Ok(());
            }
        }
        self.push(call, 0, v);
        Ok(())
    }

    /// A body one event per line; each line is parsed in place on its own, and a line
    /// that is not JSON (or is nested too deep) is that event's rejection.
    fn lines(&mut self, call: &Call<'a>, json: &'a mut [u8]) {
        let lines = json
            .split_mut(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, line)| line.iter().any(|b| !b.is_ascii_whitespace()));
        for (i, (line_index, line)) in lines.enumerate() {
            if let Err(e) = check_nesting(line, MAX_JSON_DEPTH) {
                self.events.push(Err((
                    ErrorCode::BadJson,
                    format!(
                        "event {i} (line {}, column {}): JSON nested deeper than {} levels; events are at most {} arrays or objects deep",
                        line_index + 1,
                        e.column,
                        e.max,
                        e.max
                    ),
                )));
                continue;
            }
            match to_tape(line) {
                Ok(tape) => self.push(call, i, tape.as_value()),
                Err(e) => self.events.push(Err((
                    ErrorCode::BadJson,
                    format!("event {i} (line {}): bad JSON: {e}", line_index + 1),
                ))),
            }
        }
    }

    /// Converts event `i`; a rejected event leaves no keys or values behind.
    fn push(&mut self, call: &Call<'a>, i: usize, v: Value<'_, 'a>) {
        let marks = (self.composed.len(), self.keys.len(), self.values.len());
        let converted = self.convert(call, i, v);
        if converted.is_err() {
            self.composed.truncate(marks.0);
            self.keys.truncate(marks.1);
            self.values.truncate(marks.2);
        }
        self.events.push(converted);
    }

    fn compose(&mut self, namespace: &str, value: &str) {
        let start = self.composed.len() as u32;
        self.composed.push_str(namespace);
        self.composed.push(':');
        self.composed.push_str(value);
        self.keys.push(Key::Composed {
            start,
            end: self.composed.len() as u32,
        });
    }

    fn convert(
        &mut self,
        call: &Call<'a>,
        i: usize,
        v: Value<'_, 'a>,
    ) -> Result<Slot<'a>, Rejection> {
        let config = call.config;
        let now_ms = call.received_ms;
        let bad = |code: ErrorCode, field: &str, what: String| {
            Err((code, format!("event {i}: field `{field}`: {what}")))
        };
        let Some(o) = v.as_object() else {
            return bad(ErrorCode::BadJson, "(event)", "expected an object".into());
        };
        // One pass over the event's fields; the last of a repeated field wins.
        let mut f = Fields::default();
        for (name, value) in o.iter() {
            let slot = match name {
                "type" => &mut f.kind,
                "event" => &mut f.event,
                "context" => &mut f.context,
                "sentAt" => &mut f.sent_at,
                "timestamp" => &mut f.timestamp,
                "messageId" => &mut f.message_id,
                "userId" => &mut f.ids[0],
                "anonymousId" => &mut f.ids[1],
                "previousId" => &mut f.ids[2],
                "keys" => &mut f.keys,
                "properties" => &mut f.properties,
                "traits" => &mut f.traits,
                _ => continue,
            };
            *slot = Some(value);
        }
        let (mut channel_field, mut context_traits) = (None, None);
        if let Some(context) = f.context.and_then(|c| c.as_object()) {
            for (name, value) in context.iter() {
                match name {
                    "channel" => channel_field = Some(value),
                    "traits" => context_traits = Some(value),
                    _ => {}
                }
            }
        }
        let kind = match f.kind {
            Some(t) => match t.into_string() {
                Some(kind) => kind,
                None => return bad(ErrorCode::BadJson, "type", "expected a string".into()),
            },
            None => match call.kind {
                Some(kind) => kind,
                None if f.event.is_some() => "track",
                None => {
                    return bad(
                        ErrorCode::BadJson,
                        "type",
                        "missing: one of track, identify, page, screen, alias".into(),
                    )
                }
            },
        };
        let channel = match channel_field {
            Some(c) => match c.into_string() {
                Some(c) => c,
                None => {
                    return bad(
                        ErrorCode::UnknownChannel,
                        "context.channel",
                        "expected a string".into(),
                    )
                }
            },
            None => match (kind, config.engine.default_channel) {
                ("page", _) if config.channel_id("web").is_some() => "web",
                ("screen", _) if config.channel_id("app").is_some() => "app",
                (_, Some(c)) => config.channels[c].as_str(),
                _ => {
                    return bad(
                        ErrorCode::UnknownChannel,
                        "context.channel",
                        format!(
                            "missing: say which channel the event happened on ({})",
                            config.channels.join(", ")
                        ),
                    )
                }
            },
        };
        let event = match kind {
            "track" => match f.event.map(|e| e.into_string()) {
                Some(Some(name)) => name,
                Some(None) => return bad(ErrorCode::BadJson, "event", "expected a string".into()),
                None => {
                    return bad(
                        ErrorCode::UnknownEventType,
                        "event",
                        "missing: a track call names its event type".into(),
                    )
                }
            },
            "identify" | "alias" => "identify",
            "page" | "screen" => "page_view",
            other => {
                return bad(
                    ErrorCode::BadJson,
                    "type",
                    format!(
                        "unknown type `{other}`: expected track, identify, page, screen or alias"
                    ),
                )
            }
        };
        // Segment's clock-skew correction: the sender's clock may be off, but the time
        // between the event and its sending is right, so the event happened that long
        // before the server received it.
        let sent_at = match f.sent_at {
            None => call.sent_at,
            Some(t) => match time_ms(t) {
                Ok(ms) => Some(ms),
                Err(e) => return bad(ErrorCode::BadTimestamp, "sentAt", e),
            },
        };
        let timestamp_ms = match f.timestamp {
            None => now_ms,
            Some(t) => match time_ms(t) {
                Ok(ms) => match sent_at {
                    Some(sent) => now_ms.saturating_sub(sent.saturating_sub(ms)),
                    None => ms,
                },
                Err(e) => return bad(ErrorCode::BadTimestamp, "timestamp", e),
            },
        };
        let message_id = match f.message_id {
            None => None,
            Some(v) if v.is_null() => None,
            Some(v) => match v.into_string() {
                Some(id) if !id.is_empty() && id.len() <= MAX_MESSAGE_ID => Some(id),
                Some(_) => {
                    return bad(
                        ErrorCode::BadJson,
                        "messageId",
                        format!("must be 1 to {MAX_MESSAGE_ID} bytes"),
                    )
                }
                None => return bad(ErrorCode::BadJson, "messageId", "expected a string".into()),
            },
        };
        let keys_start = self.keys.len() as u32;
        for ((field, namespace), value) in [
            ("userId", "user"),
            ("anonymousId", "anon"),
            ("previousId", "anon"),
        ]
        .into_iter()
        .zip(f.ids)
        {
            let Some(value) = value.filter(|v| !v.is_null()) else {
                continue;
            };
            if let Some(id) = value.into_string() {
                self.compose(namespace, id);
            } else if let Some(n) = value.as_i64() {
                self.compose(namespace, &n.to_string());
            } else if let Some(n) = value.as_u64() {
                self.compose(namespace, &n.to_string());
            } else {
                return bad(
                    ErrorCode::BadKey,
                    field,
                    "expected a string or a number".into(),
                );
            }
        }
        if let Some(keys) = f.keys {
            let Some(keys) = keys.as_array() else {
                return bad(
                    ErrorCode::BadKey,
                    "keys",
                    "expected an array of `namespace:value` strings".into(),
                );
            };
            for (k, key) in keys.iter().enumerate() {
                match key.into_string() {
                    Some(key) => self.keys.push(Key::Sent(key)),
                    None => {
                        return bad(
                            ErrorCode::BadKey,
                            &format!("keys[{k}]"),
                            "expected a `namespace:value` string".into(),
                        )
                    }
                }
            }
        }
        let event_def = config.event_id(event).map(|e| &config.events[e]);
        let properties_start = self.values.len() as u32;
        match f.properties.map(|p| (p.as_object(), p)) {
            Some((Some(props), _)) => {
                for (name, value) in props.iter() {
                    if value.is_null() {
                        continue;
                    }
                    match scalar(value) {
                        Some(v) => self.values.push((name, v)),
                        None => {
                            let declared = event_def.is_some_and(|d| d.property(name).is_some());
                            if declared
                                || config.engine.unknown_properties == UnknownProperties::Reject
                            {
                                return bad(
                                    ErrorCode::BadProperty,
                                    &format!("properties.{name}"),
                                    "objects and arrays are not supported: send numbers, strings or booleans".into(),
                                );
                            }
                        }
                    }
                }
            }
            Some((None, props)) if !props.is_null() => {
                return bad(
                    ErrorCode::BadProperty,
                    "properties",
                    "expected an object".into(),
                )
            }
            _ => {}
        }
        let attributes_start = self.values.len() as u32;
        for (field, traits) in [("traits", f.traits), ("context.traits", context_traits)] {
            let Some(traits) = traits else { continue };
            let Some(traits) = traits.as_object() else {
                return bad(ErrorCode::BadAttribute, field, "expected an object".into());
            };
            for (name, value) in traits.iter() {
                if value.is_null() {
                    continue;
                }
                // E-mail addresses and phone numbers are identities, not attributes.
                if (name == "email" || name == "phone")
                    && config.namespace_id(name).is_some()
                    && config.attribute_id(name).is_none()
                {
                    match value.into_string() {
                        Some(v) => self.compose(name, v),
                        None => {
                            return bad(
                                ErrorCode::BadKey,
                                &format!("{field}.{name}"),
                                "expected a string".into(),
                            )
                        }
                    }
                    continue;
                }
                // An undeclared trait goes on to the engine, which drops it and counts it
                // as drift; one it could not carry (an object, an array) is dropped here.
                let ignored = config.attribute_id(name).is_none()
                    && config.engine.unknown_properties == UnknownProperties::Ignore;
                match scalar(value) {
                    Some(v) => self.values.push((name, v)),
                    None if ignored => {}
                    None => return bad(
                        ErrorCode::BadAttribute,
                        &format!("{field}.{name}"),
                        "objects and arrays are not supported: send numbers, strings or booleans"
                            .into(),
                    ),
                }
            }
        }
        let end = self.values.len() as u32;
        Ok(Slot {
            event,
            channel,
            timestamp_ms,
            message_id,
            keys: (keys_start, self.keys.len() as u32),
            properties: (properties_start, attributes_start),
            attributes: (attributes_start, end),
        })
    }
}

/// The fields of an event omnia reads, found in one pass over its object.
#[derive(Default)]
struct Fields<'t, 'a> {
    kind: Option<Value<'t, 'a>>,
    event: Option<Value<'t, 'a>>,
    context: Option<Value<'t, 'a>>,
    sent_at: Option<Value<'t, 'a>>,
    timestamp: Option<Value<'t, 'a>>,
    message_id: Option<Value<'t, 'a>>,
    /// `userId`, `anonymousId`, `previousId`.
    ids: [Option<Value<'t, 'a>>; 3],
    keys: Option<Value<'t, 'a>>,
    properties: Option<Value<'t, 'a>>,
    traits: Option<Value<'t, 'a>>,
}

impl EventView for JsonEvent<'_, '_> {
    fn event_type(&self) -> &str {
        self.slot.event
    }
    fn channel(&self) -> &str {
        self.slot.channel
    }
    fn timestamp_ms(&self) -> i64 {
        self.slot.timestamp_ms
    }
    fn keys(&self) -> impl Iterator<Item = &str> {
        let (start, end) = self.slot.keys;
        self.events.keys[start as usize..end as usize]
            .iter()
            .map(|key| match *key {
                Key::Sent(key) => key,
                Key::Composed { start, end } => &self.events.composed[start as usize..end as usize],
            })
    }
    fn properties(&self) -> impl Iterator<Item = (&str, ValueRef<'_>)> {
        let (start, end) = self.slot.properties;
        self.events.values[start as usize..end as usize]
            .iter()
            .map(|&(name, value)| (name, value))
    }
    fn attributes(&self) -> impl Iterator<Item = (&str, ValueRef<'_>)> {
        let (start, end) = self.slot.attributes;
        self.events.values[start as usize..end as usize]
            .iter()
            .map(|&(name, value)| (name, value))
    }
    fn message_id(&self) -> Option<&str> {
        self.slot.message_id
    }
}

fn scalar<'a>(v: Value<'_, 'a>) -> Option<ValueRef<'a>> {
    if let Some(b) = v.as_bool() {
        Some(ValueRef::Bool(b))
    } else if let Some(s) = v.into_string() {
        Some(ValueRef::Str(s))
    } else {
        v.cast_f64().map(ValueRef::Num)
    }
}

/// What a request says about every event in it.
#[derive(Clone, Copy)]
struct Call<'a> {
    config: &'a Config,
    /// When the server received it (milliseconds).
    received_ms: i64,
    /// The Segment call type of events that name none.
    kind: Option<&'a str>,
    /// The batch's `sentAt` (milliseconds), for events that carry none of their own.
    sent_at: Option<i64>,
}

/// A Segment time: RFC 3339 text (any offset) or epoch milliseconds.
fn time_ms(t: Value<'_, '_>) -> Result<i64, String> {
    match (t.into_string(), t.as_i64()) {
        (Some(text), _) => text
            .parse::<jiff::Timestamp>()
            .map(|ts| ts.as_millisecond())
            .map_err(|e| format!("`{text}` is not an RFC 3339 time: {e}")),
        (None, Some(ms)) => Ok(ms),
        _ => Err("expected RFC 3339 text or epoch milliseconds".into()),
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RawEvent, RawValue};

    fn config() -> Config {
        Config::embedded_default().unwrap()
    }

    /// The body's events, owned, so a test can compare them with the events it means.
    fn parse(
        config: &Config,
        json: &[u8],
        now_ms: i64,
    ) -> Result<Vec<Result<RawEvent, Rejection>>, String> {
        let mut body = json.to_vec();
        Ok(super::parse(config, &mut body, now_ms)?
            .iter()
            .map(|e| e.map(|e| owned(&e)))
            .collect())
    }

    fn owned(e: &impl EventView) -> RawEvent {
        let mut raw = RawEvent::new(e.event_type(), e.channel(), e.timestamp_ms());
        raw.keys = e.keys().map(str::to_string).collect();
        raw.properties = e
            .properties()
            .map(|(n, v)| (n.to_string(), v.to_owned()))
            .collect();
        raw.attributes = e
            .attributes()
            .map(|(n, v)| (n.to_string(), v.to_owned()))
            .collect();
        raw.message_id = e.message_id().map(str::to_string);
        raw
    }

    /// The default config without `engine.default_channel`.
    fn strict_config() -> Config {
        let text = crate::config::DEFAULT_CONFIG.replace("default_channel = \"web\"", "");
        Config::from_source(&crate::config::Source::new("strict.toml", text)).unwrap()
    }

    #[test]
    fn segment_calls_map_to_events() {
        let json = br#"[
          {"type":"page","anonymousId":"c-7f3","properties":{"url":"/lp","campaign":"flyer"},"timestamp":"2026-03-02T10:00:00Z"},
          {"type":"identify","userId":"sofia","anonymousId":"c-7f3","traits":{"email":"sofia@example.nl","country":"NL"},"context":{"channel":"app"},"timestamp":1772445600000},
          {"type":"track","event":"purchase","userId":42,"properties":{"amount":120.5,"category":"shoes"},"context":{"channel":"store"},"keys":["card:8812"]}
        ]"#;
        let events: Vec<RawEvent> = parse(&config(), json, 7)
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            events[0],
            RawEvent::new("page_view", "web", 1_772_445_600_000)
                .key("anon:c-7f3")
                .prop("url", "/lp")
                .prop("campaign", "flyer")
        );
        assert_eq!(
            events[1],
            RawEvent::new("identify", "app", 1_772_445_600_000)
                .key("user:sofia")
                .key("anon:c-7f3")
                .key("email:sofia@example.nl")
                .attr("country", "NL")
        );
        assert_eq!(
            events[2],
            RawEvent::new("purchase", "store", 7)
                .key("user:42")
                .key("card:8812")
                .prop("amount", 120.5)
                .prop("category", "shoes")
        );
    }

    #[test]
    fn bad_events_are_rejected_by_index_and_field_and_the_rest_convert() {
        let json = b"{\"type\":\"track\",\"event\":\"purchase\",\"userId\":\"1\",\"context\":{\"channel\":\"web\"}}\n{\"type\":\"track\",\"event\":\"purchase\",\"userId\":\"1\"}\n{nope\n{\"type\":\"page\",\"userId\":\"1\",\"timestamp\":\"yesterday\"}\n";
        let results = parse(&strict_config(), json, 7).unwrap();
        assert!(results[0].is_ok());
        assert_eq!(results[1].as_ref().unwrap_err().1, "event 1: field `context.channel`: missing: say which channel the event happened on (web, app, email, sms, store, call_center)");
        assert_eq!(results[2].as_ref().unwrap_err().0, ErrorCode::BadJson);
        assert!(results[2]
            .as_ref()
            .unwrap_err()
            .1
            .starts_with("event 2 (line 3): bad JSON"));
        assert!(results[3]
            .as_ref()
            .unwrap_err()
            .1
            .starts_with("event 3: field `timestamp`: `yesterday` is not an RFC 3339 time"));
    }

    #[test]
    fn a_body_that_is_not_json_is_one_error() {
        assert!(parse(&config(), b"{\"type\": ", 7)
            .unwrap_err()
            .starts_with("bad JSON"));
    }

    #[test]
    fn escaped_strings_are_read_unescaped_in_place() {
        let json = br#"{"type":"track","event":"purchase","userId":"a\"b","messageId":"m\/1","properties":{"category":"sh\u00f6es","amount":3},"context":{"channel":"store"}}"#;
        let events = parse(&config(), json, 7).unwrap();
        let event = events[0].as_ref().unwrap();
        assert_eq!(event.keys, ["user:a\"b"]);
        assert_eq!(event.message_id.as_deref(), Some("m/1"));
        assert_eq!(
            event.properties,
            [
                ("category".to_string(), RawValue::from("shöes")),
                ("amount".to_string(), RawValue::Num(3.0))
            ]
        );
    }

    #[test]
    fn a_pretty_printed_document_is_one_body_and_lines_are_events() {
        let pretty = b"{\n  \"batch\": [\n    {\"type\": \"page\", \"anonymousId\": \"a\"},\n    {\"type\": \"page\", \"anonymousId\": \"b\"}\n  ]\n}\n";
        let events = parse(&config(), pretty, 7).unwrap();
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(Result::is_ok));
        // One line and a line break (what `curl -d @batch.json` sends) is one document.
        let batch = b"{\"batch\":[{\"type\":\"page\",\"anonymousId\":\"a\"},{\"type\":\"page\",\"anonymousId\":\"b\"}]}\n";
        let events = parse(&config(), batch, 7).unwrap();
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(Result::is_ok));
        // The first line is not JSON and the body is not one document: one event per
        // line, the first rejected, the second applied.
        let lines = b"{\"type\": \"page\",\n{\"type\": \"page\", \"anonymousId\": \"b\"}\n";
        let events = parse(&config(), lines, 7).unwrap();
        assert_eq!(events.len(), 2);
        assert!(events[0]
            .as_ref()
            .unwrap_err()
            .1
            .starts_with("event 0 (line 1): bad JSON"));
        assert_eq!(events[1].as_ref().unwrap().keys, ["anon:b"]);
    }

    #[test]
    fn a_rejected_event_leaves_nothing_to_the_next() {
        let json = br#"[
          {"type":"identify","userId":"1","traits":{"email":"one@example.com","country":"NL"}},
          {"type":"identify","userId":"2","traits":{"email":"two@example.com","country":"BE"},"timestamp":"later"},
          {"type":"identify","userId":"3","traits":{"country":"DE"}}
        ]"#;
        let events = parse(&config(), json, 7).unwrap();
        assert_eq!(
            events[0].as_ref().unwrap().keys,
            ["user:1", "email:one@example.com"]
        );
        assert_eq!(events[1].as_ref().unwrap_err().0, ErrorCode::BadTimestamp);
        let third = events[2].as_ref().unwrap();
        assert_eq!(third.keys, ["user:3"]);
        assert_eq!(
            third.attributes,
            [("country".to_string(), RawValue::from("DE"))]
        );
    }
}
