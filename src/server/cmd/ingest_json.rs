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
//! applied again (see `engine::dedup`). Each event
//! that cannot be converted is rejected with its index and the field at fault, and the
//! others are still applied.

use simd_json::prelude::*;
use simd_json::BorrowedValue as Value;

use super::ingest;
use crate::config::{Config, UnknownProperties};
use crate::engine::Receipt;
use crate::model::{RawEvent, RawValue};
use crate::protocol::json::{check_nesting, MAX_JSON_DEPTH};
use crate::protocol::{ErrorCode, Response};
use crate::server::Shared;

type Converted = Result<RawEvent, (ErrorCode, String)>;

pub fn apply(shared: &Shared, json: &[u8], receipt: &mut Receipt) -> Response {
    let node = shared.node();
    let engine = node.engine();
    let config = engine.config();
    let now = engine.now_ms();
    match parse(config, json, now) {
        Ok(events) => ingest::apply(
            shared,
            events.iter().map(|e| e.as_ref().map_err(Clone::clone)),
            receipt,
        ),
        Err(message) => Response::error(ErrorCode::BadJson, message),
    }
}

/// Converts a body to events; `Err` only when the body as a whole is not JSON.
pub fn parse(config: &Config, json: &[u8], now_ms: i64) -> Result<Vec<Converted>, String> {
    parse_calls(config, json, now_ms, None)
}

/// [`parse`], with `kind` the Segment call type of events that name none (the HTTP
/// API's `/v1/track`, `/v1/identify`, ... say it with their path).
pub fn parse_calls(
    config: &Config,
    json: &[u8],
    now_ms: i64,
    kind: Option<&str>,
) -> Result<Vec<Converted>, String> {
    // A body one event per line may have one line nested too deep: that line is rejected
    // below, on its own. Any other body too deep is refused before the parser sees it.
    let ndjson =
        json.contains(&b'\n') && json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[');
    let too_deep = check_nesting(json, MAX_JSON_DEPTH).err();
    if let (Some(e), false) = (&too_deep, ndjson) {
        return Err(e.to_string());
    }
    let mut whole = json.to_vec();
    let parsed = match too_deep {
        None => simd_json::to_borrowed_value(&mut whole).map_err(|e| e.to_string()),
        Some(e) => Err(e.to_string()),
    };
    let events = match parsed {
        Ok(value) => Ok(match &value {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| convert(config, i, v, &Call::new(now_ms, kind)))
                .collect(),
            Value::Object(o) if o.contains_key("batch") => match o.get("batch") {
                Some(Value::Array(items)) => {
                    let call = Call {
                        sent_at: match o.get("sentAt") {
                            None => None,
                            Some(t) => Some(time_ms(t).map_err(|e| format!("field `sentAt`: {e}"))?),
                        },
                        ..Call::new(now_ms, kind)
                    };
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| convert(config, i, v, &call))
                        .collect()
                }
                _ => return Err("field `batch` must be an array of events".into()),
            },
            single => vec![convert(config, 0, single, &Call::new(now_ms, kind))],
        }),
        // A body that is not one JSON value may be one event per line; an array is not.
        Err(_) if ndjson => {
            Ok(json
                .split(|b| *b == b'\n')
                .enumerate()
                .filter(|(_, line)| line.iter().any(|b| !b.is_ascii_whitespace()))
                .enumerate()
                .map(|(i, (line_index, line))| {
                    let bad = |e: String| {
                        Err((
                            ErrorCode::BadJson,
                            format!("event {i} (line {}): bad JSON: {e}", line_index + 1),
                        ))
                    };
                    if let Err(e) = check_nesting(line, MAX_JSON_DEPTH) {
                        return Err((
                            ErrorCode::BadJson,
                            format!(
                                "event {i} (line {}, column {}): JSON nested deeper than {} levels; events are at most {} arrays or objects deep",
                                line_index + 1,
                                e.column,
                                e.max,
                                e.max
                            ),
                        ));
                    }
                    let mut line = line.to_vec();
                    let converted = match simd_json::to_borrowed_value(&mut line) {
                        Ok(v) => convert(config, i, &v, &Call::new(now_ms, kind)),
                        Err(e) => bad(e.to_string()),
                    };
                    converted
                })
                .collect())
        }
        Err(e) => Err(format!("bad JSON: {e}")),
    };
    events
}

fn scalar(v: &Value) -> Option<RawValue> {
    if let Some(b) = v.as_bool() {
        Some(RawValue::Bool(b))
    } else if let Some(s) = v.as_str() {
        Some(RawValue::Str(s.to_string()))
    } else {
        v.cast_f64().map(RawValue::Num)
    }
}

/// An id field as text: Segment allows strings and numbers.
fn id(v: &Value) -> Option<String> {
    v.as_str()
        .map(str::to_string)
        .or_else(|| v.as_i64().map(|n| n.to_string()))
        .or_else(|| v.as_u64().map(|n| n.to_string()))
}

/// What a request says about every event in it.
struct Call<'a> {
    /// When the server received it (milliseconds).
    received_ms: i64,
    /// The Segment call type of events that name none.
    kind: Option<&'a str>,
    /// The batch's `sentAt` (milliseconds), for events that carry none of their own.
    sent_at: Option<i64>,
}

impl<'a> Call<'a> {
    fn new(received_ms: i64, kind: Option<&'a str>) -> Call<'a> {
        Call {
            received_ms,
            kind,
            sent_at: None,
        }
    }
}

/// A Segment time: RFC 3339 text (any offset) or epoch milliseconds.
fn time_ms(t: &Value) -> Result<i64, String> {
    match (t.as_str(), t.as_i64()) {
        (Some(text), _) => text
            .parse::<jiff::Timestamp>()
            .map(|ts| ts.as_millisecond())
            .map_err(|e| format!("`{text}` is not an RFC 3339 time: {e}")),
        (None, Some(ms)) => Ok(ms),
        _ => Err("expected RFC 3339 text or epoch milliseconds".into()),
    }
}

fn convert(config: &Config, i: usize, v: &Value, call: &Call<'_>) -> Converted {
    let now_ms = call.received_ms;
    let bad = |code: ErrorCode, field: &str, what: String| {
        Err((code, format!("event {i}: field `{field}`: {what}")))
    };
    let Value::Object(o) = v else {
        return bad(ErrorCode::BadJson, "(event)", "expected an object".into());
    };
    let kind = match o.get("type") {
        Some(t) => match t.as_str() {
            Some(kind) => kind,
            None => return bad(ErrorCode::BadJson, "type", "expected a string".into()),
        },
        None if call.kind.is_some() => call.kind.unwrap_or("track"),
        None if o.contains_key("event") => "track",
        None => {
            return bad(
                ErrorCode::BadJson,
                "type",
                "missing: one of track, identify, page, screen, alias".into(),
            )
        }
    };
    let context = o.get("context");
    let channel = match context.and_then(|c| c.get("channel")) {
        Some(c) => match c.as_str() {
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
        "track" => match o.get("event").map(|e| e.as_str()) {
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
                format!("unknown type `{other}`: expected track, identify, page, screen or alias"),
            )
        }
    };
    // Segment's clock-skew correction: the sender's clock may be off, but the time
    // between the event and its sending is right, so the event happened that long
    // before the server received it.
    let sent_at = match o.get("sentAt") {
        None => call.sent_at,
        Some(t) => match time_ms(t) {
            Ok(ms) => Some(ms),
            Err(e) => return bad(ErrorCode::BadTimestamp, "sentAt", e),
        },
    };
    let timestamp_ms = match o.get("timestamp") {
        None => now_ms,
        Some(t) => match time_ms(t) {
            Ok(ms) => match sent_at {
                Some(sent) => now_ms.saturating_sub(sent.saturating_sub(ms)),
                None => ms,
            },
            Err(e) => return bad(ErrorCode::BadTimestamp, "timestamp", e),
        },
    };
    let mut raw = RawEvent::new(event, channel, timestamp_ms);
    match o.get("messageId") {
        None => {}
        Some(v) if v.is_null() => {}
        Some(v) => match v.as_str() {
            Some(id) if !id.is_empty() && id.len() <= 256 => raw.message_id = Some(id.to_string()),
            Some(_) => {
                return bad(
                    ErrorCode::BadJson,
                    "messageId",
                    "must be 1 to 256 bytes".into(),
                )
            }
            None => return bad(ErrorCode::BadJson, "messageId", "expected a string".into()),
        },
    }
    for (field, namespace) in [
        ("userId", "user"),
        ("anonymousId", "anon"),
        ("previousId", "anon"),
    ] {
        match o.get(field) {
            None => {}
            Some(v) if v.is_null() => {}
            Some(v) => match id(v) {
                Some(id) => raw.keys.push(format!("{namespace}:{id}")),
                None => {
                    return bad(
                        ErrorCode::BadKey,
                        field,
                        "expected a string or a number".into(),
                    )
                }
            },
        }
    }
    if let Some(keys) = o.get("keys") {
        let Some(keys) = keys.as_array() else {
            return bad(
                ErrorCode::BadKey,
                "keys",
                "expected an array of `namespace:value` strings".into(),
            );
        };
        for (k, key) in keys.iter().enumerate() {
            match key.as_str() {
                Some(key) => raw.keys.push(key.to_string()),
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
    if let Some(Value::Object(props)) = o.get("properties") {
        for (name, value) in props.iter() {
            if value.is_null() {
                continue;
            }
            match scalar(value) {
                Some(v) => raw.properties.push((name.to_string(), v)),
                None => {
                    let declared = event_def.is_some_and(|d| d.property(name).is_some());
                    if declared || config.engine.unknown_properties == UnknownProperties::Reject {
                        return bad(ErrorCode::BadProperty, &format!("properties.{name}"), "objects and arrays are not supported: send numbers, strings or booleans".into());
                    }
                }
            }
        }
    } else if o.get("properties").is_some_and(|p| !p.is_null()) {
        return bad(
            ErrorCode::BadProperty,
            "properties",
            "expected an object".into(),
        );
    }
    for (field, traits) in [
        ("traits", o.get("traits")),
        ("context.traits", context.and_then(|c| c.get("traits"))),
    ] {
        let Some(traits) = traits else { continue };
        let Value::Object(traits) = traits else {
            return bad(ErrorCode::BadAttribute, field, "expected an object".into());
        };
        for (name, value) in traits.iter() {
            let name: &str = name;
            if value.is_null() {
                continue;
            }
            // E-mail addresses and phone numbers are identities, not attributes.
            if (name == "email" || name == "phone")
                && config.namespace_id(name).is_some()
                && config.attribute_id(name).is_none()
            {
                match value.as_str() {
                    Some(v) => raw.keys.push(format!("{name}:{v}")),
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
            // An undeclared trait goes on to the engine, which drops it and counts it as
            // drift; one it could not carry (an object, an array) is dropped here.
            let ignored = config.attribute_id(name).is_none()
                && config.engine.unknown_properties == UnknownProperties::Ignore;
            match scalar(value) {
                Some(v) => raw.attributes.push((name.to_string(), v)),
                None if ignored => {}
                None => {
                    return bad(
                        ErrorCode::BadAttribute,
                        &format!("{field}.{name}"),
                        "objects and arrays are not supported: send numbers, strings or booleans"
                            .into(),
                    )
                }
            }
        }
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::embedded_default().unwrap()
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
}
