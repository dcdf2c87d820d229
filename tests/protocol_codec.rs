//! Every request and response survives encode, frame, parse, decode unchanged; and no
//! byte sequence makes a decoder panic.

use bytes::{Bytes, BytesMut};
use omnia::model::decision::{
    ArmAssignment, Considered, Content, Coupon, Decision, DecisionRequest, FeedbackKind,
    FeedbackResult, FeedbackTarget, OfferStats, Outcome, RankedOffer, Redeemed,
};
use omnia::model::{ProfileView, RawEvent, RawValue};
use omnia::protocol::message::{Rejected, ServerHello, Stats};
use omnia::protocol::{opcode, Frame, Request, Response, DEFAULT_MAX_FRAME};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z_:@.0-9]{0,12}", "\\PC{0,6}"]
}

fn value() -> impl Strategy<Value = RawValue> {
    prop_oneof![
        (-1e12f64..1e12).prop_map(RawValue::Num),
        text().prop_map(RawValue::Str),
        any::<bool>().prop_map(RawValue::Bool),
    ]
}

fn event() -> impl Strategy<Value = RawEvent> {
    (
        text(),
        text(),
        any::<i64>(),
        prop::collection::vec(text(), 0..4),
        prop::collection::vec((text(), value()), 0..4),
        prop::collection::vec((text(), value()), 0..3),
        prop::option::of("\\PC{1,40}"),
    )
        .prop_map(
            |(event, channel, ts, keys, properties, attributes, message_id)| RawEvent {
                message_id,
                event,
                channel,
                timestamp_ms: ts,
                keys,
                properties,
                attributes,
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), text()).prop_map(|(min_version, max_version, client)| {
            Request::Hello {
                min_version,
                max_version,
                client,
            }
        }),
        Just(Request::Ping),
        Just(Request::Reload),
        text().prop_map(|token| Request::Auth { token }),
        text().prop_map(|key| Request::Forget { key }),
        any::<u64>().prop_map(|erasure_id| Request::ForgetStatus { erasure_id }),
        text().prop_map(|key| Request::Export { key }),
        any::<(bool, bool, bool, bool)>().prop_map(|(offers, drift, triggers, experiments)| {
            Request::Stats {
                offers,
                drift,
                triggers,
                experiments,
            }
        }),
        (
            text(),
            text(),
            any::<u8>(),
            any::<(bool, bool)>(),
            prop::collection::vec((text(), value()), 0..3)
        )
            .prop_map(
                |(key, channel, top, (record_impression, explain), context)| {
                    Request::Decide(DecisionRequest {
                        key,
                        channel,
                        top,
                        record_impression,
                        explain,
                        context,
                    })
                }
            ),
        (
            prop::sample::select(FeedbackKind::ALL.to_vec()),
            any::<u64>(),
            text(),
            text(),
            prop::option::of(text())
        )
            .prop_map(
                |(kind, decision_id, offer, key, channel)| Request::Feedback {
                    kind,
                    target: match channel {
                        None => FeedbackTarget::Decision { decision_id, offer },
                        Some(channel) => FeedbackTarget::Customer {
                            key,
                            offer,
                            channel
                        },
                    },
                }
            ),
        (text(), text(), prop::option::of(-1e12f64..1e12)).prop_map(
            |(code, channel, order_value)| Request::Redeem {
                code,
                channel,
                order_value
            }
        ),
        prop::collection::vec(event(), 0..5).prop_map(|events| Request::Ingest { events }),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| Request::IngestJson {
            json: Bytes::from(b)
        }),
        text().prop_map(|key| Request::Profile { key }),
        text().prop_map(|query| Request::SegmentCount { query }),
        (text(), any::<u32>(), any::<u32>()).prop_map(|(query, cursor, limit)| {
            Request::SegmentMembers {
                query,
                cursor,
                limit,
            }
        }),
        (text(), text()).prop_map(|(segment, key)| Request::SegmentContains { segment, key }),
    ]
}

fn profile() -> impl Strategy<Value = ProfileView> {
    (
        any::<u32>(),
        text(),
        prop::collection::vec(text(), 0..3),
        any::<(u32, u32, u32)>(),
        prop::collection::vec((text(), any::<u32>()), 0..3),
        prop::collection::vec((text(), -1e9f64..1e9), 0..3),
        prop::collection::vec((text(), value()), 0..3),
        prop::collection::vec((text(), 0.0f64..1.0), 0..3),
        (
            prop::collection::vec(text(), 0..3),
            prop::collection::vec((text(), text()), 0..3),
        ),
    )
        .prop_map(
            |(
                customer,
                primary_key,
                keys,
                (first_seen, last_seen, as_of),
                channels,
                aggregates,
                attributes,
                scores,
                (segments, texts),
            )| ProfileView {
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
            },
        )
}

/// A response with the request opcode it answers.
fn response() -> impl Strategy<Value = (u8, Response)> {
    prop_oneof![
        (
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            text()
        )
            .prop_map(
                |(version, max_frame, max_in_flight, config_version, server)| (
                    opcode::HELLO,
                    Response::Hello(ServerHello {
                        version,
                        max_frame,
                        max_in_flight,
                        config_version,
                        server
                    })
                )
            ),
        Just((opcode::PING, Response::Pong)),
        (text(), any::<u8>()).prop_map(|(principal, roles)| (
            opcode::AUTH,
            Response::Authenticated { principal, roles }
        )),
        (any::<u64>(), any::<u16>()).prop_map(|(erasure_id, keys)| (
            opcode::FORGET,
            Response::Forgotten { erasure_id, keys }
        )),
        text().prop_map(|json| (opcode::EXPORT, Response::Exported { json })),
        (any::<bool>(), any::<i64>()).prop_map(|(erased, erased_at_ms)| (
            opcode::FORGET_STATUS,
            Response::ErasureStatus {
                erased,
                erased_at_ms
            }
        )),
        (
            any::<u32>(),
            prop::collection::vec((any::<u32>(), any::<u16>(), text()), 0..4)
        )
            .prop_map(|(accepted, r)| (
                opcode::INGEST,
                Response::Ingested {
                    accepted,
                    rejected: r
                        .into_iter()
                        .map(|(index, code, message)| Rejected {
                            index,
                            code,
                            message
                        })
                        .collect()
                }
            )),
        prop::option::of(profile())
            .prop_map(|p| (opcode::PROFILE, Response::Profile(p.map(Box::new)))),
        any::<u64>().prop_map(|n| (opcode::SEGMENT_COUNT, Response::Count(n))),
        (
            prop::collection::vec((any::<u32>(), text()), 0..4),
            prop::option::of(any::<u32>())
        )
            .prop_map(|(members, next_cursor)| (
                opcode::SEGMENT_MEMBERS,
                Response::Members {
                    members,
                    next_cursor
                }
            )),
        any::<bool>().prop_map(|b| (opcode::SEGMENT_CONTAINS, Response::Contains(b))),
        (
            any::<(u64, u32, u64, u64)>(),
            any::<(u64, u64, u64, u32)>(),
            (any::<u32>(), prop::option::of(0u8..=100)),
            prop::collection::vec((text(), any::<u64>()), 0..3)
        )
            .prop_map(
                |(
                    (uptime_ms, config_version, customers, keys),
                    (events_ingested, events_rejected, merges, connections),
                    (reloads, reload_progress),
                    segments,
                )| (
                    opcode::STATS,
                    Response::Stats(Stats {
                        uptime_ms,
                        config_version,
                        customers,
                        keys,
                        events_ingested,
                        events_rejected,
                        merges,
                        connections,
                        reloads,
                        reload_progress,
                        segments,
                        offers: Vec::new(),
                        drift: None,
                        triggers: None,
                        experiments: None,
                    })
                )
            ),
        (
            prop::collection::vec((text(), text(), any::<u64>()), 0..3),
            prop::collection::vec((text(), any::<u64>()), 0..3),
            prop::option::of((text(), any::<u64>())),
        )
            .prop_map(|(ignored, unknown_events, triggers)| (
                opcode::STATS,
                Response::Stats(Stats {
                    drift: Some(omnia::protocol::message::StatsDrift {
                        ignored,
                        unknown_events
                    }),
                    // A triggers section is a JSON document (the drift before it is
                    // always sent with it).
                    triggers: triggers.map(|(name, n)| serde_json::json!({
                        "cursor": n,
                        "triggers": { name: { "delivered": n } },
                    })),
                    ..Stats::default()
                })
            )),
        prop::collection::vec(
            (
                text(),
                text(),
                prop::option::of((text(), text())),
                any::<[u64; 5]>()
            ),
            0..3
        )
        .prop_map(|rows| {
            let offers = rows
                .into_iter()
                .map(|(offer, channel, arm, n)| OfferStats {
                    offer,
                    channel,
                    experiment: arm.as_ref().map(|a| format!("e{}", a.0)),
                    arm: arm.map(|a| format!("a{}", a.1)),
                    decisions: n[0],
                    impressions: n[1],
                    clicks: n[2],
                    accepts: n[3],
                    dismisses: n[4],
                })
                .collect();
            (
                opcode::STATS,
                Response::Stats(Stats {
                    offers,
                    ..Stats::default()
                }),
            )
        }),
        (
            any::<(u64, bool)>(),
            prop::collection::vec(
                (
                    text(),
                    -1e9f64..1e9,
                    any::<i32>(),
                    any::<bool>(),
                    prop::option::of((
                        prop::option::of(text()),
                        prop::option::of(text()),
                        prop::option::of(text()),
                        prop::option::of(text())
                    ))
                ),
                0..4
            ),
            prop::collection::vec((text(), text()), 0..3),
            prop::collection::vec((text(), text(), any::<(u32, u32)>()), 0..3),
            prop::collection::vec(
                (
                    text(),
                    prop::sample::select(Outcome::ALL.to_vec()),
                    -1e9f64..1e9,
                    text()
                ),
                0..4
            ),
        )
            .prop_map(
                |((decision_id, known_customer), offers, arms, coupons, explanation)| {
                    (
                        opcode::DECIDE,
                        Response::Decision(Box::new(Decision {
                            decision_id,
                            known_customer,
                            offers: offers
                                .into_iter()
                                .map(|(offer, score, priority, sticky, content)| RankedOffer {
                                    offer,
                                    score,
                                    priority,
                                    sticky,
                                    content: content.map(|(title, text, url, image)| Content {
                                        title,
                                        text,
                                        url,
                                        image,
                                    }),
                                })
                                .collect(),
                            arms: arms
                                .into_iter()
                                .map(|(experiment, arm)| ArmAssignment { experiment, arm })
                                .collect(),
                            coupons: coupons
                                .into_iter()
                                .map(|(offer, code, (issued, expires))| Coupon {
                                    offer,
                                    code,
                                    issued,
                                    expires,
                                })
                                .collect(),
                            explanation: explanation
                                .into_iter()
                                .map(|(offer, outcome, score, detail)| Considered {
                                    offer,
                                    outcome,
                                    score,
                                    detail,
                                })
                                .collect(),
                        })),
                    )
                }
            ),
        (
            any::<u64>(),
            prop::option::of((text(), text(), any::<(u32, u32)>()))
        )
            .prop_map(|(decision_id, coupon)| {
                (
                    opcode::FEEDBACK,
                    Response::Feedback(FeedbackResult {
                        decision_id,
                        coupon: coupon.map(|(offer, code, (issued, expires))| Coupon {
                            offer,
                            code,
                            issued,
                            expires,
                        }),
                    }),
                )
            }),
        (
            (text(), text(), text(), text()),
            any::<(u32, u32, u32, u64)>()
        )
            .prop_map(
                |((offer, code, key, channel), (issued, expires, redeemed_at, decision_id))| {
                    (
                        opcode::REDEEM,
                        Response::Redeemed(Redeemed {
                            offer,
                            code,
                            key,
                            issued,
                            expires,
                            redeemed_at,
                            channel,
                            decision_id,
                        }),
                    )
                }
            ),
        (
            (
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                any::<u32>()
            ),
            prop::collection::vec(prop::collection::vec(text(), 0..3), 6),
            prop::collection::vec((text(), prop::collection::vec(text(), 0..3)), 0..3),
        )
            .prop_map(
                |((version, customers, replayed, took, paused), mut lists, new)| {
                    let mut list = || lists.pop().unwrap_or_default();
                    (
                        opcode::RELOAD,
                        Response::Reloaded(Box::new(omnia::model::reload::ReloadReport {
                            config_version: version,
                            customers,
                            replayed,
                            took: std::time::Duration::from_millis(took as u64),
                            paused: std::time::Duration::from_millis(paused as u64),
                            segments_added: list(),
                            segments_changed: list(),
                            segments_removed: list(),
                            offers_added: list(),
                            offers_removed: list(),
                            new_aggregates: new,
                            experiments_reset: list(),
                        })),
                    )
                }
            ),
        (any::<u16>(), text())
            .prop_map(|(code, message)| (opcode::PING, Response::Error { code, message })),
    ]
}

/// Through a frame and back: what a peer sees.
fn over_the_wire(op: u8, id: u32, body: Bytes) -> Frame {
    let mut buf = BytesMut::new();
    Frame::new(op, id, body).write_to(&mut buf);
    let frame = Frame::parse(&mut buf, DEFAULT_MAX_FRAME)
        .unwrap()
        .expect("a whole frame");
    assert!(buf.is_empty());
    frame
}

proptest! {
    #[test]
    fn requests_round_trip(request in request(), id in any::<u32>()) {
        let frame = over_the_wire(request.opcode(), id, request.encode().unwrap());
        prop_assert_eq!(frame.request_id, id);
        prop_assert_eq!(Request::decode(frame.opcode, &frame.body).unwrap(), Some(request));
    }

    /// Version 1 requests are version 2's, but INGEST events carry no message id.
    #[test]
    fn requests_round_trip_in_version_1(request in request()) {
        let request = match request {
            Request::Ingest { mut events } => {
                events.iter_mut().for_each(|e| e.message_id = None);
                Request::Ingest { events }
            }
            other => other,
        };
        let body = request.encode_in(1).unwrap();
        prop_assert_eq!(Request::decode_in(1, request.opcode(), &body).unwrap(), Some(request));
    }

    #[test]
    fn responses_round_trip((op, response) in response(), id in any::<u32>()) {
        let frame = over_the_wire(response.opcode(op), id, response.encode());
        prop_assert_eq!(Response::decode(frame.opcode, &frame.body).unwrap(), response);
    }

    #[test]
    fn arbitrary_bytes_never_panic(op in any::<u8>(), bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let body = Bytes::from(bytes.clone());
        let _ = Request::decode(op, &body);
        let _ = Request::decode_in(1, op, &body);
        let _ = Response::decode(op, &body);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = Frame::parse(&mut buf, 64) {}
    }

    #[test]
    fn truncated_bodies_are_errors_that_say_where(request in request().prop_filter("has a body", |r| !matches!(r, Request::Ping | Request::Stats { .. } | Request::IngestJson { .. } | Request::Ingest { .. })), cut in 1usize..8) {
        let body = request.encode().unwrap();
        if body.len() >= cut {
            let short = body.slice(..body.len() - cut);
            let err = Request::decode(request.opcode(), &short).unwrap_err();
            prop_assert!(err.to_string().contains("while reading"), "{}", err);
        }
    }
}

#[test]
fn a_truncated_ingest_names_the_event_and_field() {
    let request = Request::Ingest {
        events: vec![
            RawEvent::new("page_view", "web", 1).key("anon:a"),
            RawEvent::new("purchase", "app", 2)
                .key("user:1")
                .prop("amount", 12.5),
        ],
    };
    let body = request.encode().unwrap();
    let err = Request::decode(opcode::INGEST, &body.slice(..body.len() - 3)).unwrap_err();
    assert_eq!(err.to_string(), format!("body ends at byte {} while reading value of property `amount` of event 1 (2 more bytes needed)", body.len() - 3));
}
