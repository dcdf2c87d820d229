//! Typed requests and responses, and their body layouts.
//!
//! Every operation's layout is written next to its variant; `docs/protocol.md` has the
//! same with hex examples. Decoding checks every length and that the body ends exactly
//! where the layout does.

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{DecodeError, Reader, Write};
use super::opcode;
use super::{ErrorCode, PROTOCOL_VERSION};
use crate::codec::events::Layout;
use crate::field;
use crate::model::decision::{
    ArmAssignment, Considered, Content, Coupon, Decision, DecisionRequest, FeedbackKind,
    FeedbackResult, FeedbackTarget, OfferStats, Outcome, RankedOffer, Redeemed,
};
use crate::model::reload::ReloadReport;
use crate::model::{
    Cause, ChangeKind, ProfileView, RawEvent, RawValue, StreamedChange, MAX_MESSAGE_ID,
};
use std::time::Duration;

/// DECIDE flag bits.
pub mod decide_flags {
    /// Record an impression of every returned offer.
    pub const RECORD_IMPRESSION: u8 = 1;
    /// Explain every offer considered.
    pub const EXPLAIN: u8 = 2;
}

/// A request from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `u16 min_version, u16 max_version, str client_name`
    Hello {
        min_version: u16,
        max_version: u16,
        client: String,
    },
    /// empty
    Ping,
    /// `str token`: who the client is (a token from `omnia credentials add`).
    Auth { token: String },
    /// `str key`: forget the customer this key belongs to, every key of it.
    Forget { key: String },
    /// `u64 erasure_id`: whether a FORGET's erasure from disk is done.
    ForgetStatus { erasure_id: u64 },
    /// `str key`: everything held on the customer this key belongs to.
    Export { key: String },
    /// `u32 count`, then per event: `str event, str channel, i64 timestamp_ms,
    /// u8 key_count, str key × key_count, u8 property_count, (str name, value) ×
    /// property_count, u8 attribute_count, (str name, value) × attribute_count`
    Ingest { events: Vec<RawEvent> },
    /// The whole body is JSON text: one event object, an array of them, or
    /// `{"batch": [...]}`, in the Segment Spec shape.
    IngestJson { json: Bytes },
    /// `str key`
    Profile { key: String },
    /// `str query` (a segment name or set algebra over segment names)
    SegmentCount { query: String },
    /// `str query, u32 cursor, u32 limit`
    SegmentMembers {
        query: String,
        cursor: u32,
        limit: u32,
    },
    /// `str segment, str key`
    SegmentContains { segment: String, key: String },
    /// empty, or `u8 sections` (bit 0: per-offer counters, bit 1: drift, bit 2:
    /// triggers, bit 3: experiments)
    Stats {
        offers: bool,
        drift: bool,
        triggers: bool,
        experiments: bool,
    },
    /// `str key, str channel, u8 top, u8 flags (1 record impression, 2 explain),
    /// u8 context_count, (str name, value) × context_count`
    Decide(DecisionRequest),
    /// `u8 kind (1 impression, 2 click, 3 accept, 4 dismiss), u8 target`, then for
    /// target 1 `u64 decision_id, str offer`, for target 2 `str key, str offer,
    /// str channel`
    Feedback {
        kind: FeedbackKind,
        target: FeedbackTarget,
    },
    /// `str code, str channel, f64 order_value (NaN: none)`: redeem a coupon by its
    /// code, once
    Redeem {
        code: String,
        channel: String,
        order_value: Option<f64>,
    },
    /// empty: re-read the server's config file and swap it in
    Reload,
    /// `str name (empty: an unnamed subscription), u8 from (0 position, 1 now,
    /// 2 earliest), u64 position (read for from = 0, else 0), u16 n, str segment × n`
    /// (n = 0: every segment on the stream). Turns the connection into a streaming
    /// one: the server answers SUBSCRIBED, then pushes CHANGES frames; the client sends
    /// only ACK and PING after it.
    Subscribe {
        name: String,
        from: StreamFrom,
        segments: Vec<String>,
    },
    /// `u64 position`: every change up to `position` is handled. Remembered for a
    /// named subscription, which resumes after it. No reply unless it is refused.
    Ack { position: u64 },
}

/// Where a subscription starts reading the change stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFrom {
    /// At this position (the first change at or after it). For a named subscription
    /// this replaces the position it acknowledged.
    Position(u64),
    /// With the next change. A named subscription that acknowledged a position
    /// resumes after it instead.
    Now,
    /// With the oldest change the stream keeps. A named subscription that
    /// acknowledged a position resumes after it instead.
    Earliest,
}

/// One event of a batch that was not accepted.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Rejected {
    /// Index of the event in the batch, from 0.
    pub index: u32,
    pub code: u16,
    pub message: String,
}

/// Server counters, as STATS returns them.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Stats {
    pub uptime_ms: u64,
    pub config_version: u32,
    pub customers: u64,
    pub keys: u64,
    pub events_ingested: u64,
    pub events_rejected: u64,
    pub merges: u64,
    pub connections: u32,
    /// Reloads of the config completed since the server started.
    pub reloads: u32,
    /// While a reload runs: the percentage of customers moved into the new config.
    pub reload_progress: Option<u8>,
    pub segments: Vec<(String, u64)>,
    /// Per offer, channel and arm; only when asked for (empty otherwise, but the count
    /// is always on the wire).
    pub offers: Vec<OfferStats>,
    /// What ingest dropped or refused by name; only when asked for (and then at the
    /// end of the body, so a client that never asks reads the body it always read).
    pub drift: Option<StatsDrift>,
    /// The trigger runner's status (`server::triggers::TriggerStatus::json`): its
    /// stream position, counts by trigger, the newest dead letters; only when asked
    /// for, after the drift section (sent empty when only this was asked for), as
    /// `lstr json`. `null` when the server runs no triggers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub triggers: Option<serde_json::Value>,
    /// The report of every measured experiment (`decide::report`); only when asked
    /// for, after the triggers section (sent as `null` when only this was asked for),
    /// as `lstr json`, a list of `model::experiment::ExperimentReport`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experiments: Option<Vec<crate::model::experiment::ExperimentReport>>,
}

/// Tracking-plan drift, as STATS returns it (see `engine::drift`).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct StatsDrift {
    /// `(event type, property, count)` of properties dropped; an attribute is
    /// `attr.NAME`.
    pub ignored: Vec<(String, String, u64)>,
    /// `(name, count)` of events refused for an undeclared event type.
    pub unknown_events: Vec<(String, u64)>,
}

/// What a server says in HELLO: the agreed version and its limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerHello {
    pub version: u16,
    pub max_frame: u32,
    pub max_in_flight: u32,
    pub config_version: u32,
    pub server: String,
}

/// A response from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// `u16 version, u32 max_frame, u32 max_in_flight, u32 config_version, str server`
    Hello(ServerHello),
    /// empty
    Pong,
    /// `str principal, u8 roles` (bit 0 ingest, 1 decide, 2 read, 3 admin)
    Authenticated { principal: String, roles: u8 },
    /// `u64 erasure_id, u16 keys`: the FORGET's id (its log sequence) and how many keys
    /// the customer was known by
    Forgotten { erasure_id: u64, keys: u16 },
    /// `u8 erased, i64 erased_at_ms` (0 when not erased, or erased before this process
    /// started)
    ErasureStatus { erased: bool, erased_at_ms: i64 },
    /// `lstr json`: the export document (`model::export::Export`)
    Exported { json: String },
    /// `u32 accepted, u32 rejected_count, (u32 index, u16 code, str message) × rejected_count`
    Ingested {
        accepted: u32,
        rejected: Vec<Rejected>,
    },
    /// `u8 found`; if 1: `u32 customer, str primary_key, u16 n, str key × n, u32
    /// first_seen, u32 last_seen, u32 as_of, u16 n, (str channel, u32 last_seen) × n,
    /// u16 n, (str label, f64 value) × n, u16 n, (str name, value) × n, u16 n, (str name,
    /// f64 score) × n, u16 n, str segment × n`
    Profile(Option<Box<ProfileView>>),
    /// `u64 count` (SEGMENT_COUNT)
    Count(u64),
    /// `u32 n, (u32 customer, str primary_key) × n, u8 more, u32 next_cursor`
    Members {
        members: Vec<(u32, String)>,
        next_cursor: Option<u32>,
    },
    /// `u8 member` (SEGMENT_CONTAINS)
    Contains(bool),
    /// `u64 uptime_ms, u32 config_version, u64 customers, u64 keys, u64 events_ingested,
    /// u64 events_rejected, u64 merges, u32 connections, u32 reloads, u8 reload_progress
    /// (255: no reload running), u16 n, (str segment, u64 count) × n,
    /// u32 m, (str offer, str channel, str experiment, str arm, u64 decisions,
    /// u64 impressions, u64 clicks, u64 accepts, u64 dismisses) × m`; `m` is 0 unless the
    /// request asked for offers; an empty experiment and arm are the totals
    Stats(Stats),
    /// `u64 decision_id, u8 known_customer, u8 offer_count, (str offer, f64 score,
    /// i32 priority, u8 sticky) × offer_count, u8 arm_count, (str experiment, str arm) ×
    /// arm_count, u16 coupon_count, coupon × coupon_count, u16 explained_count,
    /// (str offer, u8 outcome, f64 score, str detail) × explained_count`; a coupon is
    /// `str offer, str code, u32 issued, u32 expires`
    Decision(Box<Decision>),
    /// `u64 decision_id, u8 has_coupon, [coupon]`
    Feedback(FeedbackResult),
    /// `str offer, str code, str key, u32 issued, u32 expires, u32 redeemed_at, str
    /// channel, u64 decision_id`
    Redeemed(Redeemed),
    /// `u32 config_version, u64 customers, u64 replayed, u32 took_ms, u32 paused_ms`,
    /// then five lists, each `u16 n, str × n`: segments added, changed, removed, offers
    /// added, removed; then `u16 n, (str aggregate, u16 m, str reader × m) × n`: the
    /// aggregates that count from the reload and the rules that read them
    Reloaded(Box<ReloadReport>),
    /// `u64 from, u64 earliest, u64 stream_position`: the first position this
    /// subscription reads, the oldest the stream keeps, and the last it has (SUBSCRIBE)
    Subscribed {
        from: u64,
        earliest: u64,
        position: u64,
    },
    /// Pushed on a streaming connection with opcode `CHANGES | 0x80` and the
    /// SUBSCRIBE's request id: `u64 through, u32 n, (u64 position, u32 time,
    /// u32 customer, u8 kind (1 enter, 2 exit, 3 reset), u8 cause (1 event, 2 time,
    /// 3 merge, 4 forget, 5 recovery), str segment, str event, u16 k, str key × k) × n`.
    /// Every change up to `through` was sent (those of other segments skipped); an
    /// ACK of `through` resumes after it. A frame with no changes moves `through` on.
    Changes {
        through: u64,
        changes: Vec<StreamedChange>,
    },
    /// `u16 code, str message` (opcode 0xFF)
    Error { code: u16, message: String },
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error {
            code: code as u16,
            message: message.into(),
        }
    }
}

fn count_u8(n: usize, what: &str) -> Result<u8, String> {
    u8::try_from(n).map_err(|_| format!("{n} {what} in one event; at most 255"))
}

impl Request {
    pub fn opcode(&self) -> u8 {
        match self {
            Request::Hello { .. } => opcode::HELLO,
            Request::Ping => opcode::PING,
            Request::Auth { .. } => opcode::AUTH,
            Request::Forget { .. } => opcode::FORGET,
            Request::ForgetStatus { .. } => opcode::FORGET_STATUS,
            Request::Export { .. } => opcode::EXPORT,
            Request::Ingest { .. } => opcode::INGEST,
            Request::IngestJson { .. } => opcode::INGEST_JSON,
            Request::Profile { .. } => opcode::PROFILE,
            Request::SegmentCount { .. } => opcode::SEGMENT_COUNT,
            Request::SegmentMembers { .. } => opcode::SEGMENT_MEMBERS,
            Request::SegmentContains { .. } => opcode::SEGMENT_CONTAINS,
            Request::Stats { .. } => opcode::STATS,
            Request::Decide(_) => opcode::DECIDE,
            Request::Feedback { .. } => opcode::FEEDBACK,
            Request::Redeem { .. } => opcode::REDEEM,
            Request::Reload => opcode::RELOAD,
            Request::Subscribe { .. } => opcode::SUBSCRIBE,
            Request::Ack { .. } => opcode::ACK,
        }
    }

    /// The body in the newest protocol version ([`PROTOCOL_VERSION`]).
    pub fn encode(&self) -> Result<Bytes, String> {
        self.encode_in(PROTOCOL_VERSION)
    }

    /// The body in protocol `version`. Fails for events with more than 255 keys,
    /// properties or attributes, a message id longer than [`MAX_MESSAGE_ID`] bytes, or
    /// a message id in version 1, which cannot carry one.
    pub fn encode_in(&self, version: u8) -> Result<Bytes, String> {
        let mut b = BytesMut::new();
        match self {
            Request::Hello {
                min_version,
                max_version,
                client,
            } => {
                b.put_u16_le(*min_version);
                b.put_u16_le(*max_version);
                b.str(client);
            }
            Request::Ping
            | Request::Stats {
                offers: false,
                drift: false,
                triggers: false,
                experiments: false,
            } => {}
            Request::Stats {
                offers,
                drift,
                triggers,
                experiments,
            } => b.put_u8(
                *offers as u8
                    | (*drift as u8) << 1
                    | (*triggers as u8) << 2
                    | (*experiments as u8) << 3,
            ),
            Request::Decide(d) => {
                b.str(&d.key);
                b.str(&d.channel);
                b.put_u8(d.top);
                b.put_u8(
                    if d.record_impression {
                        decide_flags::RECORD_IMPRESSION
                    } else {
                        0
                    } | if d.explain { decide_flags::EXPLAIN } else { 0 },
                );
                b.put_u8(count_u8(d.context.len(), "context fields")?);
                for (name, value) in &d.context {
                    b.str(name);
                    b.value(value);
                }
            }
            Request::Feedback { kind, target } => {
                b.put_u8(*kind as u8);
                match target {
                    FeedbackTarget::Decision { decision_id, offer } => {
                        b.put_u8(1);
                        b.put_u64_le(*decision_id);
                        b.str(offer);
                    }
                    FeedbackTarget::Customer {
                        key,
                        offer,
                        channel,
                    } => {
                        b.put_u8(2);
                        b.str(key);
                        b.str(offer);
                        b.str(channel);
                    }
                }
            }
            Request::Redeem {
                code,
                channel,
                order_value,
            } => {
                b.str(code);
                b.str(channel);
                b.put_f64_le(order_value.unwrap_or(f64::NAN));
            }
            Request::Ingest { events } => {
                let layout = Layout::of_protocol(version);
                b.put_u32_le(events.len() as u32);
                for (i, e) in events.iter().enumerate() {
                    let id = e.message_id.as_deref().unwrap_or("");
                    if id.len() > MAX_MESSAGE_ID {
                        return Err(format!(
                            "event {i}: its message id is {} bytes; at most {MAX_MESSAGE_ID}",
                            id.len()
                        ));
                    }
                    match layout {
                        Layout::V2 => b.str(id),
                        Layout::V1 if id.is_empty() => {}
                        Layout::V1 => {
                            return Err(format!(
                                "event {i} has a message id, which protocol version 1 cannot carry: the server speaks only version 1; upgrade it, or send the event without one"
                            ))
                        }
                    }
                    b.str(&e.event);
                    b.str(&e.channel);
                    b.put_i64_le(e.timestamp_ms);
                    b.put_u8(count_u8(e.keys.len(), "keys")?);
                    for k in &e.keys {
                        b.str(k);
                    }
                    b.put_u8(count_u8(e.properties.len(), "properties")?);
                    for (name, value) in &e.properties {
                        b.str(name);
                        b.value(value);
                    }
                    b.put_u8(count_u8(e.attributes.len(), "attributes")?);
                    for (name, value) in &e.attributes {
                        b.str(name);
                        b.value(value);
                    }
                }
            }
            Request::IngestJson { json } => b.put_slice(json),
            Request::Profile { key } => b.str(key),
            Request::SegmentCount { query } => b.str(query),
            Request::SegmentMembers {
                query,
                cursor,
                limit,
            } => {
                b.str(query);
                b.put_u32_le(*cursor);
                b.put_u32_le(*limit);
            }
            Request::SegmentContains { segment, key } => {
                b.str(segment);
                b.str(key);
            }
            Request::Reload => {}
            Request::Auth { token } => b.str(token),
            Request::Forget { key } => b.str(key),
            Request::ForgetStatus { erasure_id } => b.put_u64_le(*erasure_id),
            Request::Export { key } => b.str(key),
            Request::Subscribe {
                name,
                from,
                segments,
            } => {
                b.str(name);
                let (code, position) = match from {
                    StreamFrom::Position(p) => (0, *p),
                    StreamFrom::Now => (1, 0),
                    StreamFrom::Earliest => (2, 0),
                };
                b.put_u8(code);
                b.put_u64_le(position);
                let n = u16::try_from(segments.len())
                    .map_err(|_| format!("{} segments; at most 65535", segments.len()))?;
                b.put_u16_le(n);
                for segment in segments {
                    b.str(segment);
                }
            }
            Request::Ack { position } => b.put_u64_le(*position),
        }
        Ok(b.freeze())
    }

    /// Decodes a request body for `op` in the newest protocol version. `Ok(None)` for an
    /// opcode this version does not know.
    pub fn decode(op: u8, body: &Bytes) -> Result<Option<Request>, DecodeError> {
        Request::decode_in(PROTOCOL_VERSION, op, body)
    }

    /// Decodes a request body for `op` in protocol `version` (the versions differ only
    /// in INGEST's event layout).
    pub fn decode_in(version: u8, op: u8, body: &Bytes) -> Result<Option<Request>, DecodeError> {
        let mut r = Reader::new(body);
        let request = match op {
            opcode::HELLO => Request::Hello {
                min_version: r.u16(field!("min_version"))?,
                max_version: r.u16(field!("max_version"))?,
                client: r.str(field!("client_name"))?.to_string(),
            },
            opcode::PING => Request::Ping,
            opcode::AUTH => Request::Auth {
                token: r.str(field!("token"))?.to_string(),
            },
            opcode::FORGET => Request::Forget {
                key: r.str(field!("key"))?.to_string(),
            },
            opcode::FORGET_STATUS => Request::ForgetStatus {
                erasure_id: r.u64(field!("erasure_id"))?,
            },
            opcode::EXPORT => Request::Export {
                key: r.str(field!("key"))?.to_string(),
            },
            opcode::RELOAD => Request::Reload,
            opcode::STATS => {
                let sections = if body.is_empty() {
                    0
                } else {
                    r.u8(field!("sections"))?
                };
                Request::Stats {
                    offers: sections & 1 != 0,
                    drift: sections & 2 != 0,
                    triggers: sections & 4 != 0,
                    experiments: sections & 8 != 0,
                }
            }
            opcode::DECIDE => {
                let key = r.str(field!("key"))?.to_string();
                let channel = r.str(field!("channel"))?.to_string();
                let top = r.u8(field!("top"))?;
                let flags = r.u8(field!("flags"))?;
                let n = r.u8(field!("context count"))?;
                let context = (0..n)
                    .map(|i| {
                        Ok((
                            r.str(field!("context field {i}"))?.to_string(),
                            r.value(field!("value of context field {i}"))?,
                        ))
                    })
                    .collect::<Result<_, DecodeError>>()?;
                Request::Decide(DecisionRequest {
                    key,
                    channel,
                    top,
                    record_impression: flags & decide_flags::RECORD_IMPRESSION != 0,
                    explain: flags & decide_flags::EXPLAIN != 0,
                    context,
                })
            }
            opcode::FEEDBACK => {
                let at = r.offset();
                let kind = r.u8(field!("kind"))?;
                let kind = FeedbackKind::from_u8(kind).ok_or_else(|| DecodeError::Invalid {
                    field: "kind".into(),
                    offset: at,
                    message: format!("{kind} is not a kind of feedback (1 impression, 2 click, 3 accept, 4 dismiss)"),
                })?;
                let at = r.offset();
                let target = match r.u8(field!("target"))? {
                    1 => FeedbackTarget::Decision {
                        decision_id: r.u64(field!("decision_id"))?,
                        offer: r.str(field!("offer"))?.to_string(),
                    },
                    2 => FeedbackTarget::Customer {
                        key: r.str(field!("key"))?.to_string(),
                        offer: r.str(field!("offer"))?.to_string(),
                        channel: r.str(field!("channel"))?.to_string(),
                    },
                    other => {
                        return Err(DecodeError::Invalid {
                            field: "target".into(),
                            offset: at,
                            message: format!(
                                "{other} is not a feedback target (1 decision, 2 customer)"
                            ),
                        })
                    }
                };
                Request::Feedback { kind, target }
            }
            opcode::REDEEM => Request::Redeem {
                code: r.str(field!("code"))?.to_string(),
                channel: r.str(field!("channel"))?.to_string(),
                order_value: Some(r.f64(field!("order_value"))?).filter(|v| !v.is_nan()),
            },
            opcode::INGEST => {
                // One parser for INGEST bodies: the server reads the same view in place.
                let batch = super::IngestBatch::decode(body, Layout::of_protocol(version))?;
                Request::Ingest {
                    events: batch.iter().map(|e| e.to_owned()).collect(),
                }
            }
            opcode::INGEST_JSON => Request::IngestJson { json: body.clone() },
            opcode::PROFILE => Request::Profile {
                key: r.str(field!("key"))?.to_string(),
            },
            opcode::SEGMENT_COUNT => Request::SegmentCount {
                query: r.str(field!("query"))?.to_string(),
            },
            opcode::SEGMENT_MEMBERS => Request::SegmentMembers {
                query: r.str(field!("query"))?.to_string(),
                cursor: r.u32(field!("cursor"))?,
                limit: r.u32(field!("limit"))?,
            },
            opcode::SEGMENT_CONTAINS => Request::SegmentContains {
                segment: r.str(field!("segment"))?.to_string(),
                key: r.str(field!("key"))?.to_string(),
            },
            opcode::SUBSCRIBE => {
                let name = r.str(field!("name"))?.to_string();
                let at = r.offset();
                let code = r.u8(field!("from"))?;
                let position = r.u64(field!("position"))?;
                let from = match code {
                    0 => StreamFrom::Position(position),
                    1 => StreamFrom::Now,
                    2 => StreamFrom::Earliest,
                    other => {
                        return Err(DecodeError::Invalid {
                            field: "from".into(),
                            offset: at,
                            message: format!(
                                "{other} is not where a subscription starts (0 position, 1 now, 2 earliest)"
                            ),
                        })
                    }
                };
                let n = r.u16(field!("segment count"))?;
                let segments = (0..n)
                    .map(|i| r.str(field!("segment {i}")).map(str::to_string))
                    .collect::<Result<_, _>>()?;
                Request::Subscribe {
                    name,
                    from,
                    segments,
                }
            }
            opcode::ACK => Request::Ack {
                position: r.u64(field!("position"))?,
            },
            _ => return Ok(None),
        };
        if op != opcode::INGEST_JSON && op != opcode::INGEST {
            r.finish()?;
        }
        Ok(Some(request))
    }
}

fn put_coupon(b: &mut BytesMut, c: &Coupon) {
    b.str(&c.offer);
    b.str(&c.code);
    b.put_u32_le(c.issued);
    b.put_u32_le(c.expires);
}

fn read_coupon(r: &mut Reader<'_>) -> Result<Coupon, DecodeError> {
    Ok(Coupon {
        offer: r.str(field!("coupon offer"))?.to_string(),
        code: r.str(field!("coupon code"))?.to_string(),
        issued: r.u32(field!("coupon issued"))?,
        expires: r.u32(field!("coupon expires"))?,
    })
}

fn put_len16(b: &mut BytesMut, n: usize) {
    b.put_u16_le(n.min(u16::MAX as usize) as u16);
}

impl Response {
    /// The opcode this response travels with, for a request with `request_op`.
    pub fn opcode(&self, request_op: u8) -> u8 {
        match self {
            Response::Error { .. } => opcode::ERROR,
            Response::Changes { .. } => opcode::CHANGES | opcode::RESPONSE_BIT,
            _ => request_op | opcode::RESPONSE_BIT,
        }
    }

    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        match self {
            Response::Hello(ServerHello {
                version,
                max_frame,
                max_in_flight,
                config_version,
                server,
            }) => {
                b.put_u16_le(*version);
                b.put_u32_le(*max_frame);
                b.put_u32_le(*max_in_flight);
                b.put_u32_le(*config_version);
                b.str(server);
            }
            Response::Pong => {}
            Response::Authenticated { principal, roles } => {
                b.str(principal);
                b.put_u8(*roles);
            }
            Response::Forgotten { erasure_id, keys } => {
                b.put_u64_le(*erasure_id);
                b.put_u16_le(*keys);
            }
            Response::ErasureStatus {
                erased,
                erased_at_ms,
            } => {
                b.put_u8(*erased as u8);
                b.put_i64_le(*erased_at_ms);
            }
            Response::Exported { json } => b.lstr(json),
            Response::Subscribed {
                from,
                earliest,
                position,
            } => {
                b.put_u64_le(*from);
                b.put_u64_le(*earliest);
                b.put_u64_le(*position);
            }
            Response::Changes { through, changes } => {
                b.put_u64_le(*through);
                b.put_u32_le(changes.len() as u32);
                for c in changes {
                    b.put_u64_le(c.position);
                    b.put_u32_le(c.time);
                    b.put_u32_le(c.customer);
                    b.put_u8(c.kind.code());
                    b.put_u8(c.cause.code());
                    b.str(&c.segment);
                    b.str(&c.event);
                    b.put_u16_le(c.keys.len().min(u16::MAX as usize) as u16);
                    for k in c.keys.iter().take(u16::MAX as usize) {
                        b.str(k);
                    }
                }
            }
            Response::Ingested { accepted, rejected } => {
                b.put_u32_le(*accepted);
                b.put_u32_le(rejected.len() as u32);
                for r in rejected {
                    b.put_u32_le(r.index);
                    b.put_u16_le(r.code);
                    b.str(&r.message);
                }
            }
            Response::Profile(None) => b.put_u8(0),
            Response::Profile(Some(p)) => {
                b.put_u8(1);
                b.put_u32_le(p.customer);
                b.str(&p.primary_key);
                put_len16(&mut b, p.keys.len());
                p.keys.iter().take(u16::MAX as usize).for_each(|k| b.str(k));
                b.put_u32_le(p.first_seen);
                b.put_u32_le(p.last_seen);
                b.put_u32_le(p.as_of);
                put_len16(&mut b, p.channels.len());
                for (c, t) in p.channels.iter().take(u16::MAX as usize) {
                    b.str(c);
                    b.put_u32_le(*t);
                }
                put_len16(&mut b, p.aggregates.len());
                for (label, v) in p.aggregates.iter().take(u16::MAX as usize) {
                    b.str(label);
                    b.put_f64_le(*v);
                }
                put_len16(&mut b, p.attributes.len());
                for (name, v) in p.attributes.iter().take(u16::MAX as usize) {
                    b.str(name);
                    b.value(v);
                }
                put_len16(&mut b, p.scores.len());
                for (name, v) in p.scores.iter().take(u16::MAX as usize) {
                    b.str(name);
                    b.put_f64_le(*v);
                }
                put_len16(&mut b, p.segments.len());
                p.segments
                    .iter()
                    .take(u16::MAX as usize)
                    .for_each(|s| b.str(s));
                // Last, and read only when present: clients from before it stop above.
                put_len16(&mut b, p.texts.len());
                for (label, v) in p.texts.iter().take(u16::MAX as usize) {
                    b.str(label);
                    b.str(v);
                }
            }
            Response::Count(n) => b.put_u64_le(*n),
            Response::Members {
                members,
                next_cursor,
            } => {
                b.put_u32_le(members.len() as u32);
                for (id, key) in members {
                    b.put_u32_le(*id);
                    b.str(key);
                }
                b.put_u8(next_cursor.is_some() as u8);
                b.put_u32_le(next_cursor.unwrap_or(0));
            }
            Response::Contains(member) => b.put_u8(*member as u8),
            Response::Stats(s) => {
                b.put_u64_le(s.uptime_ms);
                b.put_u32_le(s.config_version);
                b.put_u64_le(s.customers);
                b.put_u64_le(s.keys);
                b.put_u64_le(s.events_ingested);
                b.put_u64_le(s.events_rejected);
                b.put_u64_le(s.merges);
                b.put_u32_le(s.connections);
                b.put_u32_le(s.reloads);
                b.put_u8(s.reload_progress.map_or(u8::MAX, |p| p.min(100)));
                put_len16(&mut b, s.segments.len());
                for (name, n) in s.segments.iter().take(u16::MAX as usize) {
                    b.str(name);
                    b.put_u64_le(*n);
                }
                b.put_u32_le(s.offers.len() as u32);
                for o in &s.offers {
                    b.str(&o.offer);
                    b.str(&o.channel);
                    b.str(o.experiment.as_deref().unwrap_or(""));
                    b.str(o.arm.as_deref().unwrap_or(""));
                    for n in [o.decisions, o.impressions, o.clicks, o.accepts, o.dismisses] {
                        b.put_u64_le(n);
                    }
                }
                let no_drift = StatsDrift::default();
                let later = s.triggers.is_some() || s.experiments.is_some();
                let drift = s.drift.as_ref().or(later.then_some(&no_drift));
                if let Some(d) = drift {
                    b.put_u32_le(d.ignored.len() as u32);
                    for (event, property, n) in &d.ignored {
                        b.str(event);
                        b.str(property);
                        b.put_u64_le(*n);
                    }
                    b.put_u32_le(d.unknown_events.len() as u32);
                    for (name, n) in &d.unknown_events {
                        b.str(name);
                        b.put_u64_le(*n);
                    }
                }
                match (&s.triggers, &s.experiments) {
                    (Some(triggers), _) => b.lstr(&triggers.to_string()),
                    (None, Some(_)) => b.lstr("null"),
                    (None, None) => {}
                }
                if let Some(experiments) = &s.experiments {
                    // Plain data with string keys: serializing it cannot fail.
                    b.lstr(&serde_json::to_string(experiments).unwrap_or_default());
                }
            }
            Response::Decision(d) => {
                b.put_u64_le(d.decision_id);
                b.put_u8(d.known_customer as u8);
                b.put_u8(d.offers.len().min(255) as u8);
                for o in d.offers.iter().take(255) {
                    b.str(&o.offer);
                    b.put_f64_le(o.score);
                    b.put_i32_le(o.priority);
                    b.put_u8(o.sticky as u8);
                }
                b.put_u8(d.arms.len().min(255) as u8);
                for a in d.arms.iter().take(255) {
                    b.str(&a.experiment);
                    b.str(&a.arm);
                }
                put_len16(&mut b, d.coupons.len());
                for c in d.coupons.iter().take(u16::MAX as usize) {
                    put_coupon(&mut b, c);
                }
                put_len16(&mut b, d.explanation.len());
                for e in d.explanation.iter().take(u16::MAX as usize) {
                    b.str(&e.offer);
                    b.put_u8(e.outcome as u8);
                    b.put_f64_le(e.score);
                    b.str(&e.detail);
                }
                // Last, and only when some offer has content: clients from before it
                // stop above.
                let with_content: Vec<(usize, &Content)> = d
                    .offers
                    .iter()
                    .take(255)
                    .enumerate()
                    .filter_map(|(i, o)| Some((i, o.content.as_ref()?)))
                    .collect();
                if !with_content.is_empty() {
                    b.put_u8(with_content.len() as u8);
                    for (i, c) in with_content {
                        b.put_u8(i as u8);
                        let fields = c.fields();
                        let mask = fields
                            .iter()
                            .enumerate()
                            .fold(0u8, |m, (k, f)| m | ((f.is_some() as u8) << k));
                        b.put_u8(mask);
                        for f in fields.into_iter().flatten() {
                            b.str(f);
                        }
                    }
                }
            }
            Response::Feedback(f) => {
                b.put_u64_le(f.decision_id);
                b.put_u8(f.coupon.is_some() as u8);
                if let Some(c) = &f.coupon {
                    put_coupon(&mut b, c);
                }
            }
            Response::Redeemed(x) => {
                b.str(&x.offer);
                b.str(&x.code);
                b.str(&x.key);
                b.put_u32_le(x.issued);
                b.put_u32_le(x.expires);
                b.put_u32_le(x.redeemed_at);
                b.str(&x.channel);
                b.put_u64_le(x.decision_id);
            }
            Response::Reloaded(report) => {
                b.put_u32_le(report.config_version);
                b.put_u64_le(report.customers);
                b.put_u64_le(report.replayed);
                b.put_u32_le(report.took.as_millis().min(u32::MAX as u128) as u32);
                b.put_u32_le(report.paused.as_millis().min(u32::MAX as u128) as u32);
                for list in [
                    &report.segments_added,
                    &report.segments_changed,
                    &report.segments_removed,
                    &report.offers_added,
                    &report.offers_removed,
                ] {
                    put_len16(&mut b, list.len());
                    for name in list.iter().take(u16::MAX as usize) {
                        b.str(name);
                    }
                }
                put_len16(&mut b, report.new_aggregates.len());
                for (aggregate, readers) in report.new_aggregates.iter().take(u16::MAX as usize) {
                    b.str(aggregate);
                    put_len16(&mut b, readers.len());
                    for reader in readers.iter().take(u16::MAX as usize) {
                        b.str(reader);
                    }
                }
                put_len16(&mut b, report.experiments_reset.len());
                for name in report.experiments_reset.iter().take(u16::MAX as usize) {
                    b.str(name);
                }
            }
            Response::Error { code, message } => {
                b.put_u16_le(*code);
                b.str(message);
            }
        }
        b.freeze()
    }

    /// Decodes a response body that came with `op` (the response opcode).
    pub fn decode(op: u8, body: &[u8]) -> Result<Response, DecodeError> {
        let mut r = Reader::new(body);
        let strings = |r: &mut Reader, what: &str| -> Result<Vec<String>, DecodeError> {
            let n = r.u16(field!("{what} count"))?;
            (0..n)
                .map(|i| r.str(field!("{what} {i}")).map(str::to_string))
                .collect()
        };
        let response = if op == opcode::ERROR {
            Response::Error {
                code: r.u16(field!("error code"))?,
                message: r.str(field!("error message"))?.to_string(),
            }
        } else {
            match op & !opcode::RESPONSE_BIT {
                opcode::HELLO => Response::Hello(ServerHello {
                    version: r.u16(field!("version"))?,
                    max_frame: r.u32(field!("max_frame"))?,
                    max_in_flight: r.u32(field!("max_in_flight"))?,
                    config_version: r.u32(field!("config_version"))?,
                    server: r.str(field!("server"))?.to_string(),
                }),
                opcode::PING => Response::Pong,
                opcode::AUTH => Response::Authenticated {
                    principal: r.str(field!("principal"))?.to_string(),
                    roles: r.u8(field!("roles"))?,
                },
                opcode::FORGET => Response::Forgotten {
                    erasure_id: r.u64(field!("erasure_id"))?,
                    keys: r.u16(field!("keys"))?,
                },
                opcode::FORGET_STATUS => Response::ErasureStatus {
                    erased: r.u8(field!("erased"))? != 0,
                    erased_at_ms: r.i64(field!("erased_at_ms"))?,
                },
                opcode::EXPORT => Response::Exported {
                    json: r.lstr(field!("json"))?.to_string(),
                },
                opcode::SUBSCRIBE => Response::Subscribed {
                    from: r.u64(field!("from"))?,
                    earliest: r.u64(field!("earliest"))?,
                    position: r.u64(field!("stream_position"))?,
                },
                opcode::CHANGES => {
                    let through = r.u64(field!("through"))?;
                    let n = r.u32(field!("change count"))?;
                    let mut changes = Vec::with_capacity((n as usize).min(body.len() / 24 + 1));
                    for i in 0..n {
                        let position = r.u64(field!("position of change {i}"))?;
                        let time = r.u32(field!("time of change {i}"))?;
                        let customer = r.u32(field!("customer of change {i}"))?;
                        let at = r.offset();
                        let code = r.u8(field!("kind of change {i}"))?;
                        let kind =
                            ChangeKind::from_code(code).ok_or_else(|| DecodeError::Invalid {
                                field: format!("kind of change {i}"),
                                offset: at,
                                message: format!(
                                    "{code} is not a kind of change (1 enter, 2 exit, 3 reset)"
                                ),
                            })?;
                        let at = r.offset();
                        let code = r.u8(field!("cause of change {i}"))?;
                        let cause = Cause::from_code(code).ok_or_else(|| DecodeError::Invalid {
                            field: format!("cause of change {i}"),
                            offset: at,
                            message: format!("{code} is not a cause (1 event, 2 time, 3 merge, 4 forget, 5 recovery)"),
                        })?;
                        let segment = r.str(field!("segment of change {i}"))?.to_string();
                        let event = r.str(field!("event of change {i}"))?.to_string();
                        let k = r.u16(field!("key count of change {i}"))?;
                        let keys = (0..k)
                            .map(|j| r.str(field!("key {j} of change {i}")).map(str::to_string))
                            .collect::<Result<_, _>>()?;
                        changes.push(StreamedChange {
                            position,
                            time,
                            customer,
                            segment,
                            kind,
                            cause,
                            event,
                            keys,
                        });
                    }
                    Response::Changes { through, changes }
                }
                opcode::INGEST | opcode::INGEST_JSON => {
                    let accepted = r.u32(field!("accepted"))?;
                    let n = r.u32(field!("rejected count"))?;
                    let mut rejected = Vec::with_capacity((n as usize).min(body.len() / 8 + 1));
                    for i in 0..n {
                        rejected.push(Rejected {
                            index: r.u32(field!("index of rejection {i}"))?,
                            code: r.u16(field!("code of rejection {i}"))?,
                            message: r.str(field!("message of rejection {i}"))?.to_string(),
                        });
                    }
                    Response::Ingested { accepted, rejected }
                }
                opcode::PROFILE => {
                    if r.u8(field!("found"))? == 0 {
                        Response::Profile(None)
                    } else {
                        let customer = r.u32(field!("customer"))?;
                        let primary_key = r.str(field!("primary key"))?.to_string();
                        let keys = strings(&mut r, "key")?;
                        let first_seen = r.u32(field!("first_seen"))?;
                        let last_seen = r.u32(field!("last_seen"))?;
                        let as_of = r.u32(field!("as_of"))?;
                        let n = r.u16(field!("channel count"))?;
                        let channels = (0..n)
                            .map(|i| {
                                Ok((
                                    r.str(field!("channel {i}"))?.to_string(),
                                    r.u32(field!("last seen of channel {i}"))?,
                                ))
                            })
                            .collect::<Result<_, DecodeError>>()?;
                        let n = r.u16(field!("aggregate count"))?;
                        let aggregates = (0..n)
                            .map(|i| {
                                Ok((
                                    r.str(field!("aggregate {i}"))?.to_string(),
                                    r.f64(field!("value of aggregate {i}"))?,
                                ))
                            })
                            .collect::<Result<_, DecodeError>>()?;
                        let n = r.u16(field!("attribute count"))?;
                        let attributes = (0..n)
                            .map(|i| {
                                Ok((
                                    r.str(field!("attribute {i}"))?.to_string(),
                                    r.value(field!("value of attribute {i}"))?,
                                ))
                            })
                            .collect::<Result<Vec<(String, RawValue)>, DecodeError>>()?;
                        let n = r.u16(field!("score count"))?;
                        let scores = (0..n)
                            .map(|i| {
                                Ok((
                                    r.str(field!("score {i}"))?.to_string(),
                                    r.f64(field!("value of score {i}"))?,
                                ))
                            })
                            .collect::<Result<_, DecodeError>>()?;
                        let segments = strings(&mut r, "segment")?;
                        let mut texts = Vec::new();
                        if r.remaining() > 0 {
                            let n = r.u16(field!("text aggregate count"))?;
                            for i in 0..n {
                                texts.push((
                                    r.str(field!("text aggregate {i}"))?.to_string(),
                                    r.str(field!("value of text aggregate {i}"))?.to_string(),
                                ));
                            }
                        }
                        Response::Profile(Some(Box::new(ProfileView {
                            customer,
                            primary_key,
                            keys,
                            first_seen,
                            last_seen,
                            channels,
                            aggregates,
                            texts,
                            attributes,
                            scores,
                            segments,
                            as_of,
                        })))
                    }
                }
                opcode::SEGMENT_COUNT => Response::Count(r.u64(field!("count"))?),
                opcode::SEGMENT_MEMBERS => {
                    let n = r.u32(field!("member count"))?;
                    let mut members = Vec::with_capacity((n as usize).min(body.len() / 6 + 1));
                    for i in 0..n {
                        members.push((
                            r.u32(field!("customer of member {i}"))?,
                            r.str(field!("key of member {i}"))?.to_string(),
                        ));
                    }
                    let more = r.u8(field!("more"))? != 0;
                    let next = r.u32(field!("next_cursor"))?;
                    Response::Members {
                        members,
                        next_cursor: more.then_some(next),
                    }
                }
                opcode::SEGMENT_CONTAINS => Response::Contains(r.u8(field!("member"))? != 0),
                opcode::STATS => {
                    let mut s = Stats {
                        uptime_ms: r.u64(field!("uptime_ms"))?,
                        config_version: r.u32(field!("config_version"))?,
                        customers: r.u64(field!("customers"))?,
                        keys: r.u64(field!("keys"))?,
                        events_ingested: r.u64(field!("events_ingested"))?,
                        events_rejected: r.u64(field!("events_rejected"))?,
                        merges: r.u64(field!("merges"))?,
                        connections: r.u32(field!("connections"))?,
                        reloads: r.u32(field!("reloads"))?,
                        reload_progress: match r.u8(field!("reload_progress"))? {
                            u8::MAX => None,
                            percent => Some(percent),
                        },
                        segments: Vec::new(),
                        offers: Vec::new(),
                        drift: None,
                        triggers: None,
                        experiments: None,
                    };
                    let n = r.u16(field!("segment count"))?;
                    for i in 0..n {
                        s.segments.push((
                            r.str(field!("segment {i}"))?.to_string(),
                            r.u64(field!("count of segment {i}"))?,
                        ));
                    }
                    let n = r.u32(field!("offer row count"))?;
                    for i in 0..n {
                        let offer = r.str(field!("offer of row {i}"))?.to_string();
                        let channel = r.str(field!("channel of row {i}"))?.to_string();
                        let experiment = r.str(field!("experiment of row {i}"))?;
                        let arm = r.str(field!("arm of row {i}"))?;
                        let mut n = [0u64; 5];
                        for v in &mut n {
                            *v = r.u64(field!("counters of row {i}"))?;
                        }
                        s.offers.push(OfferStats {
                            offer,
                            channel,
                            experiment: (!experiment.is_empty()).then(|| experiment.to_string()),
                            arm: (!arm.is_empty()).then(|| arm.to_string()),
                            decisions: n[0],
                            impressions: n[1],
                            clicks: n[2],
                            accepts: n[3],
                            dismisses: n[4],
                        });
                    }
                    if r.remaining() > 0 {
                        let mut d = StatsDrift::default();
                        for i in 0..r.u32(field!("ignored count"))? {
                            d.ignored.push((
                                r.str(field!("event of ignored {i}"))?.to_string(),
                                r.str(field!("property of ignored {i}"))?.to_string(),
                                r.u64(field!("count of ignored {i}"))?,
                            ));
                        }
                        for i in 0..r.u32(field!("unknown event count"))? {
                            d.unknown_events.push((
                                r.str(field!("unknown event {i}"))?.to_string(),
                                r.u64(field!("count of unknown event {i}"))?,
                            ));
                        }
                        s.drift = Some(d);
                    }
                    if r.remaining() > 0 {
                        let offset = r.offset();
                        let text = r.lstr(field!("triggers"))?;
                        let value =
                            serde_json::from_str(text).map_err(|e| DecodeError::Invalid {
                                field: "triggers".into(),
                                offset,
                                message: format!("not a JSON document: {e}"),
                            })?;
                        s.triggers = Some(value);
                    }
                    if r.remaining() > 0 {
                        let offset = r.offset();
                        let text = r.lstr(field!("experiments"))?;
                        let reports =
                            serde_json::from_str(text).map_err(|e| DecodeError::Invalid {
                                field: "experiments".into(),
                                offset,
                                message: format!("not an experiment report: {e}"),
                            })?;
                        s.experiments = Some(reports);
                    }
                    Response::Stats(s)
                }
                opcode::DECIDE => {
                    let decision_id = r.u64(field!("decision_id"))?;
                    let known_customer = r.u8(field!("known_customer"))? != 0;
                    let n = r.u8(field!("offer count"))?;
                    let offers = (0..n)
                        .map(|i| {
                            Ok(RankedOffer {
                                offer: r.str(field!("offer {i}"))?.to_string(),
                                score: r.f64(field!("score of offer {i}"))?,
                                priority: r.u32(field!("priority of offer {i}"))? as i32,
                                sticky: r.u8(field!("sticky of offer {i}"))? != 0,
                                content: None,
                            })
                        })
                        .collect::<Result<_, DecodeError>>()?;
                    let n = r.u8(field!("arm count"))?;
                    let arms = (0..n)
                        .map(|i| {
                            Ok(ArmAssignment {
                                experiment: r.str(field!("experiment {i}"))?.to_string(),
                                arm: r.str(field!("arm {i}"))?.to_string(),
                            })
                        })
                        .collect::<Result<_, DecodeError>>()?;
                    let n = r.u16(field!("coupon count"))?;
                    let coupons = (0..n)
                        .map(|_| read_coupon(&mut r))
                        .collect::<Result<_, DecodeError>>()?;
                    let n = r.u16(field!("explained count"))?;
                    let explanation = (0..n)
                        .map(|i| {
                            let offer = r.str(field!("explained offer {i}"))?.to_string();
                            let at = r.offset();
                            let code = r.u8(field!("outcome of explained offer {i}"))?;
                            let outcome =
                                Outcome::from_u8(code).ok_or_else(|| DecodeError::Invalid {
                                    field: format!("outcome of explained offer {i}"),
                                    offset: at,
                                    message: format!("{code} is not an outcome code"),
                                })?;
                            Ok(Considered {
                                offer,
                                outcome,
                                score: r.f64(field!("score of explained offer {i}"))?,
                                detail: r.str(field!("detail of explained offer {i}"))?.to_string(),
                            })
                        })
                        .collect::<Result<_, DecodeError>>()?;
                    let mut offers: Vec<RankedOffer> = offers;
                    if r.remaining() > 0 {
                        let n = r.u8(field!("content count"))?;
                        for k in 0..n {
                            let at = r.offset();
                            let i = r.u8(field!("offer of content {k}"))? as usize;
                            let mask = r.u8(field!("fields of content {k}"))?;
                            let Some(offer) = offers.get_mut(i) else {
                                return Err(DecodeError::Invalid {
                                    field: format!("offer of content {k}"),
                                    offset: at,
                                    message: format!("offer {i} of {}", offers.len()),
                                });
                            };
                            let mut content = Content::default();
                            for (bit, f) in content.fields_mut().into_iter().enumerate() {
                                if mask & (1 << bit) != 0 {
                                    *f =
                                        Some(r.str(field!("content {k} field {bit}"))?.to_string());
                                }
                            }
                            offer.content = Some(content);
                        }
                    }
                    Response::Decision(Box::new(Decision {
                        decision_id,
                        offers,
                        arms,
                        coupons,
                        known_customer,
                        explanation,
                    }))
                }
                opcode::FEEDBACK => {
                    let decision_id = r.u64(field!("decision_id"))?;
                    let coupon = if r.u8(field!("has_coupon"))? != 0 {
                        Some(read_coupon(&mut r)?)
                    } else {
                        None
                    };
                    Response::Feedback(FeedbackResult {
                        decision_id,
                        coupon,
                    })
                }
                opcode::REDEEM => Response::Redeemed(Redeemed {
                    offer: r.str(field!("offer"))?.to_string(),
                    code: r.str(field!("code"))?.to_string(),
                    key: r.str(field!("key"))?.to_string(),
                    issued: r.u32(field!("issued"))?,
                    expires: r.u32(field!("expires"))?,
                    redeemed_at: r.u32(field!("redeemed_at"))?,
                    channel: r.str(field!("channel"))?.to_string(),
                    decision_id: r.u64(field!("decision_id"))?,
                }),
                opcode::RELOAD => {
                    let config_version = r.u32(field!("config_version"))?;
                    let customers = r.u64(field!("customers"))?;
                    let replayed = r.u64(field!("replayed"))?;
                    let took = Duration::from_millis(r.u32(field!("took_ms"))? as u64);
                    let paused = Duration::from_millis(r.u32(field!("paused_ms"))? as u64);
                    let segments_added = strings(&mut r, "segment added")?;
                    let segments_changed = strings(&mut r, "segment changed")?;
                    let segments_removed = strings(&mut r, "segment removed")?;
                    let offers_added = strings(&mut r, "offer added")?;
                    let offers_removed = strings(&mut r, "offer removed")?;
                    let n = r.u16(field!("new aggregate count"))?;
                    let new_aggregates = (0..n)
                        .map(|i| {
                            let aggregate = r.str(field!("new aggregate {i}"))?.to_string();
                            let readers = strings(&mut r, "reader")?;
                            Ok((aggregate, readers))
                        })
                        .collect::<Result<_, DecodeError>>()?;
                    // Added after the first release of RELOAD: a server without it
                    // ends here.
                    let experiments_reset = if r.remaining() > 0 {
                        strings(&mut r, "experiment reset")?
                    } else {
                        Vec::new()
                    };
                    Response::Reloaded(Box::new(ReloadReport {
                        config_version,
                        customers,
                        segments_added,
                        segments_changed,
                        segments_removed,
                        offers_added,
                        offers_removed,
                        new_aggregates,
                        experiments_reset,
                        replayed,
                        took,
                        paused,
                    }))
                }
                other => {
                    return Err(DecodeError::Invalid {
                        field: "opcode".into(),
                        offset: 0,
                        message: format!("no response is defined for opcode {other:#04x}"),
                    })
                }
            }
        };
        r.finish()?;
        Ok(response)
    }
}
