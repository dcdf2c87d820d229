//! `[triggers]`: what the change stream records and for how long, and the triggers
//! that act on it.
//!
//! The change stream (see `model::change`) records the membership changes of the
//! segments listed in `[triggers] stream` and of every segment a trigger is `on`, and
//! keeps them for `retention`. Only those segments cost anything per change: a flip of
//! any other segment is not recorded.
//!
//! A trigger (`[triggers.NAME]`) acts on one kind of change of one segment: after an
//! optional wait, if the customer is still where the change put it and the optional
//! rule holds, outside the optional quiet hours of the customer's time zone, it
//! (optionally) decides the offers for its channel, recording the impression, and
//! delivers one JSON document to its webhook. The server's trigger runner
//! (`server::triggers`) does that; here the table is only checked and compiled.
//!
//! ```toml
//! [triggers]
//! stream = ["cart_abandoners", "lapsed"]   # or ["*"]: every segment
//! retention = "7d"                         # the default
//!
//! [triggers.cart_reminder]
//! on = "enter cart_abandoners"             # or "exit SEGMENT"
//! after = "1d"                             # optional: wait, then act if still a member
//! rule = "attr.email_opt_in == true"       # optional: must hold when acting
//! channel = "email"
//! quiet_hours = "21:00-08:00"              # optional, in the customer's time zone:
//! time_zone = "time_zone"                  #   a string attribute holding an IANA name
//! default_time_zone = "Europe/Paris"       #   when the attribute is not set (UTC)
//! decide = true                            # decide the channel's offers, as if it asked
//! max_attempts = 8                         # then the delivery is a dead letter
//! backoff = "30s"                          # first retry; doubles, at most 1h
//! webhook = { url = "http://mailer:8080/omnia", headers = { Authorization = "Bearer x" }, timeout = "5s" }
//! ```
//!
//! A trigger's name cannot be `stream` or `retention`, the keys of `[triggers]` itself.

use indexmap::IndexMap;
use toml::Spanned;

use super::rule::{Compiler, Expr, Refs};
use super::{AttributeDef, Builder, ValueType};

/// Seven days, in seconds: how long changes are kept unless the config says otherwise.
pub const DEFAULT_RETENTION: u32 = 7 * 24 * 3600;
/// Attempts at a webhook before its delivery becomes a dead letter, by default.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// The wait before the first retry, by default, in seconds; it doubles at each one.
pub const DEFAULT_BACKOFF: u32 = 30;
/// The longest wait between two attempts, in seconds.
pub const MAX_BACKOFF: u32 = 3600;
/// How long a webhook has to answer, by default, in seconds.
pub const DEFAULT_TIMEOUT: u32 = 10;

/// `[triggers]` as written: its own keys, and a table per trigger.
#[derive(Debug, Default)]
pub struct RawTriggers {
    pub stream: Option<Spanned<Vec<Spanned<String>>>>,
    pub retention: Option<Spanned<String>>,
    pub triggers: IndexMap<Spanned<String>, RawTrigger>,
}

/// `[triggers.NAME]` as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrigger {
    #[serde(default)]
    pub description: Option<String>,
    pub on: Spanned<String>,
    pub after: Option<Spanned<String>>,
    pub rule: Option<Spanned<String>>,
    pub channel: Spanned<String>,
    pub quiet_hours: Option<Spanned<String>>,
    pub time_zone: Option<Spanned<String>>,
    pub default_time_zone: Option<Spanned<String>>,
    #[serde(default)]
    pub decide: bool,
    pub max_attempts: Option<Spanned<u32>>,
    pub backoff: Option<Spanned<String>>,
    pub webhook: Spanned<RawWebhook>,
}

/// A trigger's `webhook` as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: Spanned<String>,
    #[serde(default)]
    pub headers: IndexMap<Spanned<String>, Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub ca: Option<Spanned<String>>,
}

// `[triggers]` mixes keys of its own with a table per trigger, which serde's derive
// cannot say without `flatten`, and `flatten` loses the spans errors point at.
impl<'de> serde::Deserialize<'de> for RawTriggers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawTriggers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("the [triggers] table: `stream`, `retention` and a table per trigger")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawTriggers, A::Error> {
                let mut out = RawTriggers::default();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    match key.get_ref().as_str() {
                        "stream" => out.stream = Some(map.next_value()?),
                        "retention" => out.retention = Some(map.next_value()?),
                        _ => {
                            let trigger = map.next_value()?;
                            out.triggers.insert(key, trigger);
                        }
                    }
                }
                Ok(out)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// What the change stream records and what acts on it, compiled.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TriggerSettings {
    /// Per segment (config order): whether its changes are recorded.
    pub recorded: Vec<bool>,
    /// Seconds a change is kept.
    pub retention: u32,
    /// The triggers, in config order.
    pub triggers: Vec<TriggerDef>,
}

/// One trigger, compiled (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerDef {
    pub name: String,
    /// The segment it is on, by index and name.
    pub segment: usize,
    pub segment_name: String,
    /// `on = "enter ..."` (true) or `"exit ..."`.
    pub on_enter: bool,
    /// Seconds to wait after the change (0: at once).
    pub after: u32,
    /// Must hold when acting.
    pub rule: Option<(String, Expr)>,
    pub channel: usize,
    pub channel_name: String,
    pub quiet_hours: Option<QuietHours>,
    pub decide: bool,
    pub max_attempts: u32,
    /// Seconds before the first retry.
    pub backoff: u32,
    pub webhook: Webhook,
}

/// Hours of the day in which a trigger does not act: it waits for their end.
#[derive(Debug, Clone, PartialEq)]
pub struct QuietHours {
    /// Minutes after local midnight; `start > end` spans midnight (`21:00-08:00`).
    pub start: u16,
    pub end: u16,
    /// The string attribute holding the customer's time zone (an IANA name), if any.
    pub time_zone_attribute: Option<String>,
    /// The time zone when the attribute is unset or not a time zone.
    pub default_time_zone: jiff::tz::TimeZone,
    pub default_time_zone_name: String,
}

impl QuietHours {
    /// Whether `minute` (after local midnight) is quiet.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start <= self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

/// Where a trigger delivers.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    /// `http://` or `https://host:port/path`.
    pub url: String,
    /// For `https`: the PEM certificates of the only CAs its certificate may chain to
    /// (`ca`, read when the config is loaded); `None`: the system's trust store.
    pub ca: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
    /// Seconds to wait for an answer.
    pub timeout: u32,
}

impl TriggerSettings {
    /// Whether segment `segment`'s changes are recorded.
    #[inline]
    pub fn records(&self, segment: usize) -> bool {
        self.recorded.get(segment).copied().unwrap_or(false)
    }

    /// The trigger called `name`.
    pub fn trigger(&self, name: &str) -> Option<&TriggerDef> {
        self.triggers.iter().find(|t| t.name == name)
    }
}

/// Parses `HH:MM-HH:MM` into minutes after midnight.
fn parse_quiet_hours(text: &str) -> Result<(u16, u16), String> {
    let minute = |part: &str| -> Option<u16> {
        let (h, m) = part.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60 && m.to_string().len() <= 2).then_some(h * 60 + m)
    };
    let bad = || {
        format!("`{text}` is not a span of hours: write `HH:MM-HH:MM` in 24-hour time, for example `21:00-08:00`")
    };
    let (start, end) = text.split_once('-').ok_or_else(bad)?;
    let (start, end) = (minute(start).ok_or_else(bad)?, minute(end).ok_or_else(bad)?);
    if start == end {
        return Err(format!(
            "`{text}` starts and ends at the same minute: leave quiet_hours out to act at any time"
        ));
    }
    Ok((start, end))
}

/// What the trigger compiler needs of the rest of the config.
pub(super) struct TriggerNames<'a> {
    pub segments: &'a [String],
    pub channels: &'a [String],
    pub attributes: &'a [AttributeDef],
}

impl Builder<'_> {
    /// The `[triggers]` settings; `names.segments` are the names of the segments that
    /// compiled, in config order.
    pub(super) fn trigger_settings(
        &mut self,
        raw: &RawTriggers,
        names: &TriggerNames<'_>,
        compiler: &mut Compiler<'_>,
    ) -> TriggerSettings {
        let segments = names.segments;
        let retention = raw
            .retention
            .as_ref()
            .and_then(|r| self.duration(r, "triggers.retention"))
            .unwrap_or(DEFAULT_RETENTION);
        let mut recorded = vec![false; segments.len()];
        for name in raw.stream.iter().flat_map(|list| list.get_ref()) {
            if name.get_ref() == "*" {
                recorded.iter_mut().for_each(|r| *r = true);
                continue;
            }
            match segments.iter().position(|s| s == name.get_ref()) {
                Some(at) if recorded[at] => self.error(
                    name.span(),
                    format!(
                        "segment `{}` is listed twice in triggers.stream",
                        name.get_ref()
                    ),
                    None,
                ),
                Some(at) => recorded[at] = true,
                None => self.error(
                    name.span(),
                    format!(
                        "triggers.stream names `{}`, which is not a segment",
                        name.get_ref()
                    ),
                    Some(format!(
                        "the segments are: {}; `*` records them all",
                        segments.join(", ")
                    )),
                ),
            }
        }
        let mut triggers = Vec::new();
        for (name, raw) in &raw.triggers {
            if let Some(trigger) = self.trigger(name, raw, names, compiler) {
                // A trigger reads its segment's changes from the stream.
                recorded[trigger.segment] = true;
                triggers.push(trigger);
            }
        }
        TriggerSettings {
            recorded,
            retention,
            triggers,
        }
    }

    fn trigger(
        &mut self,
        name: &Spanned<String>,
        raw: &RawTrigger,
        names: &TriggerNames<'_>,
        compiler: &mut Compiler<'_>,
    ) -> Option<TriggerDef> {
        let errors_before = self.errors.len();
        self.name(name, "trigger");
        let what = |field: &str| format!("triggers.{}.{field}", name.get_ref());
        let on = raw.on.get_ref().trim();
        let (on_enter, segment_name) = match on.split_once(char::is_whitespace) {
            Some(("enter", s)) => (true, s.trim()),
            Some(("exit", s)) => (false, s.trim()),
            _ => {
                self.error(
                    raw.on.span(),
                    format!(
                        "{} is `{on}`: expected `enter SEGMENT` or `exit SEGMENT`",
                        what("on")
                    ),
                    Some("for example `on = \"enter cart_abandoners\"`".into()),
                );
                (true, "")
            }
        };
        let segment = names.segments.iter().position(|s| s == segment_name);
        if segment.is_none() && !segment_name.is_empty() {
            self.error(
                raw.on.span(),
                format!(
                    "{} names `{segment_name}`, which is not a segment",
                    what("on")
                ),
                Some(format!("the segments are: {}", names.segments.join(", "))),
            );
        }
        let after = raw
            .after
            .as_ref()
            .and_then(|a| self.duration(a, &what("after")))
            .unwrap_or(0);
        let rule = raw.rule.as_ref().and_then(|rule| {
            let mut refs = Refs::default();
            match compiler.condition(rule.get_ref(), &mut refs) {
                Ok(expr) => Some((rule.get_ref().clone(), expr)),
                Err(e) => {
                    self.rule_error(rule, e);
                    None
                }
            }
        });
        let channel = names
            .channels
            .iter()
            .position(|c| c == raw.channel.get_ref());
        if channel.is_none() {
            self.error(
                raw.channel.span(),
                format!(
                    "{} is `{}`, which is not a declared channel",
                    what("channel"),
                    raw.channel.get_ref()
                ),
                Some(format!("the channels are: {}", names.channels.join(", "))),
            );
        }
        let quiet_hours = self.quiet_hours(raw, names, &what);
        if quiet_hours.is_none() && raw.quiet_hours.is_none() {
            for key in [&raw.time_zone, &raw.default_time_zone]
                .into_iter()
                .flatten()
            {
                self.error(
                    key.span(),
                    format!("{} sets a time zone but no quiet_hours", what("")),
                    Some("time zones are read for quiet_hours only: add `quiet_hours = \"21:00-08:00\"` or leave this out".into()),
                );
            }
        }
        let max_attempts = match &raw.max_attempts {
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > 100 => {
                self.error(
                    n.span(),
                    format!(
                        "{} is {}: it must be 1 to 100",
                        what("max_attempts"),
                        n.get_ref()
                    ),
                    None,
                );
                DEFAULT_MAX_ATTEMPTS
            }
            Some(n) => *n.get_ref(),
            None => DEFAULT_MAX_ATTEMPTS,
        };
        let backoff = raw
            .backoff
            .as_ref()
            .and_then(|b| self.duration(b, &what("backoff")))
            .unwrap_or(DEFAULT_BACKOFF)
            .min(MAX_BACKOFF);
        let webhook = self.webhook(raw.webhook.get_ref(), &what("webhook"));
        if self.errors.len() > errors_before {
            return None;
        }
        Some(TriggerDef {
            name: name.get_ref().clone(),
            segment: segment?,
            segment_name: segment_name.to_string(),
            on_enter,
            after,
            rule,
            channel: channel?,
            channel_name: raw.channel.get_ref().clone(),
            quiet_hours,
            decide: raw.decide,
            max_attempts,
            backoff,
            webhook: webhook?,
        })
    }

    fn quiet_hours(
        &mut self,
        raw: &RawTrigger,
        names: &TriggerNames<'_>,
        what: &dyn Fn(&str) -> String,
    ) -> Option<QuietHours> {
        let hours = raw.quiet_hours.as_ref()?;
        let (start, end) = match parse_quiet_hours(hours.get_ref()) {
            Ok(span) => span,
            Err(e) => {
                self.error(hours.span(), format!("{}: {e}", what("quiet_hours")), None);
                return None;
            }
        };
        let time_zone_attribute = raw.time_zone.as_ref().and_then(|attr| {
            let name = attr.get_ref().strip_prefix("attr.").unwrap_or(attr.get_ref());
            match names.attributes.iter().find(|a| a.name == name) {
                Some(a) if a.ty == ValueType::String => Some(name.to_string()),
                Some(a) => {
                    self.error(
                        attr.span(),
                        format!(
                            "{} names attribute `{name}`, which is a {}; a time zone is a string such as `Europe/Paris`",
                            what("time_zone"),
                            a.ty.name()
                        ),
                        None,
                    );
                    None
                }
                None => {
                    let all: Vec<&str> = names.attributes.iter().map(|a| a.name.as_str()).collect();
                    self.error(
                        attr.span(),
                        format!("{} names `{name}`, which is not a declared attribute", what("time_zone")),
                        Some(format!("declare `{name} = \"string\"` in [attributes]; the attributes are: {}", all.join(", "))),
                    );
                    None
                }
            }
        });
        let zone_name = raw
            .default_time_zone
            .as_ref()
            .map_or("UTC".to_string(), |z| z.get_ref().clone());
        let default_time_zone = match jiff::tz::TimeZone::get(&zone_name) {
            Ok(zone) => zone,
            Err(e) => {
                let span = raw
                    .default_time_zone
                    .as_ref()
                    .map_or(hours.span(), |z| z.span());
                self.error(
                    span,
                    format!(
                        "{} is `{zone_name}`, which is not a known time zone: {e}",
                        what("default_time_zone")
                    ),
                    Some("write an IANA time zone name such as `Europe/Paris` or `UTC`".into()),
                );
                return None;
            }
        };
        Some(QuietHours {
            start,
            end,
            time_zone_attribute,
            default_time_zone,
            default_time_zone_name: zone_name,
        })
    }

    fn webhook(&mut self, raw: &RawWebhook, what: &str) -> Option<Webhook> {
        let url = raw.url.get_ref();
        let scheme = url
            .parse::<hyper::Uri>()
            .ok()
            .filter(|uri| uri.authority().is_some())
            .and_then(|uri| uri.scheme_str().map(str::to_string));
        let url_ok = matches!(scheme.as_deref(), Some("http" | "https"));
        if !url_ok {
            self.error(
                raw.url.span(),
                format!("{what}.url is `{url}`, which is not an http or https URL"),
                Some("write for example `https://mailer.example.com/omnia/triggers`".into()),
            );
        }
        let ca = raw.ca.as_ref().and_then(|ca| {
            if url_ok && scheme.as_deref() != Some("https") {
                self.error(
                    ca.span(),
                    format!("{what}.ca is set, but {what}.url is not https"),
                    Some("a CA checks an https receiver's certificate: use an `https://` URL or leave `ca` out".into()),
                );
                return None;
            }
            // Relative to the config file, as `[security] credentials` is.
            let dir = std::path::Path::new(&self.source.name)
                .parent()
                .unwrap_or(std::path::Path::new(""));
            let path = dir.join(ca.get_ref());
            match crate::tls::pem_certificates(&path) {
                Ok(pem) => Some(pem),
                Err(e) => {
                    self.error(ca.span(), format!("{what}.ca: {e}"), None);
                    None
                }
            }
        });
        let mut headers = Vec::new();
        for (name, value) in &raw.headers {
            let valid_name =
                hyper::header::HeaderName::from_bytes(name.get_ref().as_bytes()).is_ok();
            let valid_value = hyper::header::HeaderValue::from_str(value.get_ref()).is_ok();
            if !valid_name {
                self.error(
                    name.span(),
                    format!(
                        "`{}` is not a valid HTTP header name in {what}.headers",
                        name.get_ref()
                    ),
                    None,
                );
            } else if !valid_value {
                self.error(value.span(), format!("the value of header `{}` in {what}.headers is not a valid HTTP header value", name.get_ref()), Some("header values are visible ASCII; no line breaks".into()));
            } else if matches!(
                name.get_ref().to_ascii_lowercase().as_str(),
                "content-type" | "content-length" | "host" | "idempotency-key"
            ) {
                self.error(
                    name.span(),
                    format!(
                        "header `{}` in {what}.headers is set by omnia",
                        name.get_ref()
                    ),
                    None,
                );
            } else {
                headers.push((name.get_ref().clone(), value.get_ref().clone()));
            }
        }
        let timeout = raw
            .timeout
            .as_ref()
            .and_then(|t| self.duration(t, &format!("{what}.timeout")))
            .unwrap_or(DEFAULT_TIMEOUT);
        url_ok.then(|| Webhook {
            url: url.clone(),
            ca,
            headers,
            timeout,
        })
    }
}
