//! Bad input against the real server, byte by byte: every row of the error table is
//! provoked by a real byte sequence on a raw socket and answered as documented, and the
//! connection survives wherever framing is still intact.
//!
//! Two rows are not provoked here: CAPACITY (20) needs a shard's full id range (2^28
//! customers with 16 shards) and is covered by the engine's allocation code path;
//! NOT_IMPLEMENTED (7) is reserved, and no version-1 operation answers with it.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::raw::{assert_error, Raw};
use common::{TestServer, START_MS};
use omnia::model::RawEvent;
use omnia::protocol::{opcode, ErrorCode, Request, Response};
use omnia::server::Limits;

fn body(f: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut b = BytesMut::new();
    f(&mut b);
    b.freeze()
}

#[tokio::test]
async fn hello_is_required_first_and_versions_are_checked() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(&server.addr).await;
    let reply = raw.request(opcode::PING, 5, Bytes::new()).await;
    assert_error(
        &reply,
        5,
        ErrorCode::HelloRequired,
        "first request on a connection must be HELLO",
    );
    let future = Request::Hello {
        min_version: 3,
        max_version: 4,
        client: "future".into(),
    };
    let reply = raw
        .request(opcode::HELLO, 6, future.encode().unwrap())
        .await;
    assert_error(
        &reply,
        6,
        ErrorCode::UnsupportedVersion,
        "client `future` speaks versions 3 to 4; this server speaks versions 1 to 2",
    );
    let mut raw = Raw::greeted(&server.addr).await;
    // A frame of another protocol version.
    raw.send(&[8, 0, 0, 0, 9, opcode::PING, 0, 0, 7, 0, 0, 0])
        .await;
    assert_error(
        &raw.frame().await.unwrap(),
        7,
        ErrorCode::UnsupportedVersion,
        "frame has protocol version 9",
    );
    raw.still_alive().await;
    server.shutdown().await;
}

#[tokio::test]
async fn bodies_that_do_not_decode_are_answered_and_the_connection_survives() {
    let server = TestServer::start().await;
    let mut raw = Raw::greeted(&server.addr).await;
    // PROFILE whose key says 5 bytes but carries 1.
    let reply = raw
        .request(opcode::PROFILE, 10, Bytes::from_static(&[5, 0, b'a']))
        .await;
    assert_error(
        &reply,
        10,
        ErrorCode::MalformedFrame,
        "profile request: body ends at byte 3 while reading key (4 more bytes needed)",
    );
    raw.still_alive().await;
    // Bytes left over after a complete body.
    let reply = raw
        .request(opcode::PING, 11, Bytes::from_static(b"xyz"))
        .await;
    assert_error(
        &reply,
        11,
        ErrorCode::MalformedFrame,
        "3 unexpected bytes after the body, from byte 0",
    );
    // A key that is not UTF-8.
    let reply = raw
        .request(opcode::PROFILE, 12, Bytes::from_static(&[2, 0, 0xff, 0xfe]))
        .await;
    assert_error(
        &reply,
        12,
        ErrorCode::InvalidUtf8,
        "key at byte 2 is not valid UTF-8",
    );
    // An opcode nobody defined, and a DECIDE with no body.
    assert_error(
        &raw.request(0x77, 13, Bytes::new()).await,
        13,
        ErrorCode::UnknownOpcode,
        "unknown opcode 0x77",
    );
    assert_error(
        &raw.request(opcode::DECIDE, 14, Bytes::new()).await,
        14,
        ErrorCode::MalformedFrame,
        "decide request: body ends at byte 0 while reading key",
    );
    // A feedback kind that does not exist.
    assert_error(
        &raw.request(opcode::FEEDBACK, 16, Bytes::from_static(&[9, 1]))
            .await,
        16,
        ErrorCode::MalformedFrame,
        "9 is not a kind of feedback",
    );
    // An INGEST batch cut in the middle of its second event: nothing of it is applied.
    let batch = Request::Ingest {
        events: vec![
            RawEvent::new("page_view", "web", START_MS).key("anon:a"),
            RawEvent::new("page_view", "web", START_MS).key("anon:b"),
        ],
    };
    let encoded = batch.encode().unwrap();
    let reply = raw
        .request(opcode::INGEST, 15, encoded.slice(..encoded.len() - 4))
        .await;
    assert_error(&reply, 15, ErrorCode::MalformedFrame, "of event 1");
    assert_eq!(
        server.node.stats().customers,
        0,
        "a malformed batch applies nothing"
    );
    raw.still_alive().await;
    server.shutdown().await;
}

#[tokio::test]
async fn every_rejected_event_is_reported_by_index_with_its_code() {
    // A strict tracking plan, so that an undeclared attribute is rejected too.
    let server = TestServer::with_config(common::strict_retail()).await;
    let mut raw = Raw::greeted(&server.addr).await;
    let events = vec![
        RawEvent::new("page_view", "web", START_MS).key("anon:ok"),
        RawEvent::new("purchse", "web", START_MS).key("anon:x"),
        RawEvent::new("purchase", "fax", START_MS).key("anon:x"),
        RawEvent::new("purchase", "web", START_MS),
        RawEvent::new("purchase", "web", START_MS).key("fax:1"),
        RawEvent::new("purchase", "web", START_MS)
            .key("anon:x")
            .prop("amount", "ten"),
        RawEvent::new("identify", "web", START_MS)
            .key("anon:x")
            .attr("shoe_size", 39.0),
        RawEvent::new("purchase", "web", 0).key("anon:x"),
        RawEvent::new("purchase", "web", START_MS + 3_600_000).key("anon:x"),
    ];
    let reply = raw
        .request(
            opcode::INGEST,
            20,
            Request::Ingest { events }.encode().unwrap(),
        )
        .await;
    let Response::Ingested { accepted, rejected } =
        Response::decode(reply.opcode, &reply.body).unwrap()
    else {
        panic!("{reply:?}")
    };
    assert_eq!(accepted, 1);
    let got: Vec<(u32, Option<ErrorCode>)> = rejected
        .iter()
        .map(|r| (r.index, ErrorCode::from_u16(r.code)))
        .collect();
    use ErrorCode::*;
    assert_eq!(
        got,
        vec![
            (1, Some(UnknownEventType)),
            (2, Some(UnknownChannel)),
            (3, Some(BadKey)),
            (4, Some(BadKey)),
            (5, Some(BadProperty)),
            (6, Some(BadAttribute)),
            (7, Some(BadTimestamp)),
            (8, Some(FutureTimestamp)),
        ]
    );
    assert_eq!(rejected[1].message, "unknown channel `fax` in event `purchase`; declared channels: web, app, email, sms, store, call_center");
    assert_eq!(
        server.node.stats().customers,
        1,
        "only the good event was applied"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn json_errors_name_the_event_and_the_field() {
    // A strict tracking plan: an undeclared property with an array value is rejected.
    let server = TestServer::with_config(common::strict_retail()).await;
    let mut raw = Raw::greeted(&server.addr).await;
    let reply = raw
        .request(opcode::INGEST_JSON, 30, Bytes::from_static(b"{\"type\": "))
        .await;
    assert_error(&reply, 30, ErrorCode::BadJson, "bad JSON");
    let json = br#"[{"type":"track","event":"purchase","userId":"1","properties":{"amount":"x"},"context":{"channel":"web"}},{"type":"track","event":"purchase","userId":"1","properties":{"items":[1,2]},"context":{"channel":"web"}}]"#;
    let reply = raw
        .request(opcode::INGEST_JSON, 31, Bytes::from_static(json))
        .await;
    let Response::Ingested { accepted, rejected } =
        Response::decode(reply.opcode, &reply.body).unwrap()
    else {
        panic!()
    };
    assert_eq!(accepted, 0);
    assert_eq!(
        rejected[0].message,
        "property `amount` of event `purchase` must be a number, found a string"
    );
    assert_eq!(rejected[1].message, "event 1: field `properties.items`: objects and arrays are not supported: send numbers, strings or booleans");
    raw.still_alive().await;
    server.shutdown().await;
}

#[tokio::test]
async fn query_errors_name_the_segment_or_the_column() {
    let server = TestServer::start().await;
    let mut raw = Raw::greeted(&server.addr).await;
    let count = |q: &str| Request::SegmentCount { query: q.into() }.encode().unwrap();
    assert_error(
        &raw.request(opcode::SEGMENT_COUNT, 40, count("cart_abandoners and vips"))
            .await,
        40,
        ErrorCode::UnknownSegment,
        "unknown segment `vips`",
    );
    assert_error(
        &raw.request(
            opcode::SEGMENT_COUNT,
            41,
            count("new_visitors and count(purchase, 1d) > 0"),
        )
        .await,
        41,
        ErrorCode::BadQuery,
        "column 18",
    );
    let contains = Request::SegmentContains {
        segment: "nope".into(),
        key: "user:1".into(),
    }
    .encode()
    .unwrap();
    assert_error(
        &raw.request(opcode::SEGMENT_CONTAINS, 42, contains).await,
        42,
        ErrorCode::UnknownSegment,
        "unknown segment `nope`",
    );
    raw.still_alive().await;
    server.shutdown().await;
}

#[tokio::test]
async fn broken_framing_is_answered_then_the_connection_is_closed() {
    let server = TestServer::with_limits(Limits {
        max_frame: 1024,
        ..Limits::default()
    })
    .await;
    // A frame larger than the limit: the error carries the request id, then EOF.
    let mut raw = Raw::greeted(&server.addr).await;
    raw.send(&body(|b| {
        b.put_u32_le(5000);
        b.put_slice(&[1, opcode::INGEST, 0, 0]);
        b.put_u32_le(77);
    }))
    .await;
    assert_error(
        &raw.frame().await.unwrap(),
        77,
        ErrorCode::FrameTooLarge,
        "frame of 5000 bytes is larger than the limit of 1024 bytes",
    );
    assert!(
        raw.frame().await.is_none(),
        "the server closes the connection"
    );
    // A length shorter than the header.
    let mut raw = Raw::greeted(&server.addr).await;
    raw.send(&[3, 0, 0, 0, 1, 2, 0]).await;
    assert_error(
        &raw.frame().await.unwrap(),
        0,
        ErrorCode::MalformedFrame,
        "frame length 3 is shorter than the 8-byte header",
    );
    assert!(raw.frame().await.is_none());
    // A client that hangs up mid-frame, and one that sends noise, harm nobody else.
    let mut raw = Raw::greeted(&server.addr).await;
    raw.send(&[200, 0, 0, 0, 1, 2]).await;
    drop(raw);
    let mut noise = Raw::connect(&server.addr).await;
    noise
        .send(&[0x13, 0x37, 0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7])
        .await;
    while noise.frame().await.is_some() {}
    Raw::greeted(&server.addr).await.still_alive().await;
    server.shutdown().await;
}

const DECISION_CONFIG: &str = r#"
channels = ["web"]
[identity]
namespaces = ["user"]
[events.view]
[events.offer_accept]
[decisions]
context = { page = "string" }
feedback_events = { accept = "offer_accept" }
[offers.one_left]
budget = { accepts = 1 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_errors_name_the_offer_the_decision_or_the_field() {
    use omnia::model::decision::{DecisionRequest, FeedbackKind, FeedbackTarget};
    let config = omnia::config::Config::from_source(&omnia::config::Source::new(
        "decisions.toml",
        DECISION_CONFIG,
    ))
    .unwrap();
    let server = TestServer::with_config(config).await;
    let mut raw = Raw::greeted(&server.addr).await;
    let by_customer = |kind, key: &str, offer: &str| Request::Feedback {
        kind,
        target: FeedbackTarget::Customer {
            key: key.into(),
            offer: offer.into(),
            channel: "web".into(),
        },
    };
    let send = |r: Request| r.encode().unwrap();

    let reply = raw
        .request(
            opcode::FEEDBACK,
            40,
            send(by_customer(FeedbackKind::Accept, "user:1", "nope")),
        )
        .await;
    assert_error(
        &reply,
        40,
        ErrorCode::UnknownOffer,
        "unknown offer `nope`; declared offers: one_left",
    );

    let reply = raw
        .request(
            opcode::FEEDBACK,
            41,
            send(Request::Feedback {
                kind: FeedbackKind::Click,
                target: FeedbackTarget::Decision {
                    decision_id: 12,
                    offer: "one_left".into(),
                },
            }),
        )
        .await;
    assert_error(
        &reply,
        41,
        ErrorCode::UnknownDecision,
        "decision 12 is unknown",
    );

    let accept = send(by_customer(FeedbackKind::Accept, "user:1", "one_left"));
    let first = raw.request(opcode::FEEDBACK, 42, accept.clone()).await;
    assert_eq!(first.opcode, opcode::FEEDBACK | opcode::RESPONSE_BIT);
    let reply = raw.request(opcode::FEEDBACK, 43, accept).await;
    assert_error(
        &reply,
        43,
        ErrorCode::BudgetSpent,
        "the budget of offer `one_left` is spent: 1 accepts",
    );

    let decide = DecisionRequest {
        key: "user:1".into(),
        channel: "web".into(),
        top: 1,
        record_impression: false,
        explain: false,
        context: vec![("shelf".into(), omnia::model::RawValue::Str("3".into()))],
    };
    let reply = raw
        .request(opcode::DECIDE, 44, send(Request::Decide(decide)))
        .await;
    assert_error(
        &reply,
        44,
        ErrorCode::BadContext,
        "unknown context field `shelf`; declared in [decisions.context]: page",
    );

    // Clicks have no event type here, so an unknown customer cannot be created.
    let reply = raw
        .request(
            opcode::FEEDBACK,
            45,
            send(by_customer(FeedbackKind::Click, "user:ghost", "one_left")),
        )
        .await;
    assert_error(
        &reply,
        45,
        ErrorCode::UnknownCustomer,
        "customer `user:ghost` is unknown",
    );
    raw.still_alive().await;
    server.shutdown().await;
}
