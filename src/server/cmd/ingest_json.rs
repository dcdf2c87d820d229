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
//! | `timestamp` (RFC 3339 text or epoch milliseconds) | event time; the server's time if absent |
//! | `context.channel` | channel |
//!
//! `messageId` is accepted; it is not used for deduplication in this version. Each event
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
                .map(|(i, v)| convert(config, i, v, now_ms))
                .collect(),
            Value::Object(o) if o.contains_key("batch") => match o.get("batch") {
                Some(Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| convert(config, i, v, now_ms))
                    .collect(),
                _ => return Err("field `batch` must be an array of events".into()),
            },
            single => vec![convert(config, 0, single, now_ms)],
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
                        Ok(v) => convert(config, i, &v, now_ms),
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

fn convert(config: &Config, i: usize, v: &Value, now_ms: i64) -> Converted {
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
        None => match kind {
            "page" => "web",
            "screen" => "app",
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
    let timestamp_ms = match o.get("timestamp") {
        None => now_ms,
        Some(t) => match (t.as_str(), t.as_i64()) {
            (Some(text), _) => match text.parse::<jiff::Timestamp>() {
                Ok(ts) => ts.as_millisecond(),
                Err(e) => {
                    return bad(
                        ErrorCode::BadTimestamp,
                        "timestamp",
                        format!("`{text}` is not an RFC 3339 time: {e}"),
                    )
                }
            },
            (None, Some(ms)) => ms,
            _ => {
                return bad(
                    ErrorCode::BadTimestamp,
                    "timestamp",
                    "expected RFC 3339 text or epoch milliseconds".into(),
                )
            }
        },
    };
    let mut raw = RawEvent::new(event, channel, timestamp_ms);
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
                    let declared =
                        event_def.is_some_and(|d| d.properties.iter().any(|p| p.name == *name));
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
            if config.attribute_id(name).is_none()
                && config.engine.unknown_properties == UnknownProperties::Ignore
            {
                continue;
            }
            match scalar(value) {
                Some(v) => raw.attributes.push((name.to_string(), v)),
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
        let results = parse(&config(), json, 7).unwrap();
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
