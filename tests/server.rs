//! The server end to end, through the Rust client: the Sofia journey over TCP with
//! JSON and binary ingest mixed, pipelining, many connections at once, and graceful
//! shutdown with requests in flight.

mod common;

use bytes::Bytes;
use common::raw::{assert_error, Raw};
use common::{TestServer, START_MS};
use omnia::client::Client;
use omnia::model::RawEvent;
use omnia::protocol::message::ServerHello;
use omnia::protocol::{opcode, ErrorCode, Request, Response};
use tokio::task::JoinSet;

const MINUTE: i64 = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sofia_journey_over_tcp_with_json_and_binary_ingest() {
    let server = TestServer::start().await;
    let client = Client::connect(&server.addr).await.unwrap();
    let info = client.server_info().unwrap();
    assert_eq!(
        (info.version, info.config_version),
        (2, server.node.config().version)
    );

    // An account made a week ago in the app (binary).
    let week_ago = START_MS - 7 * 24 * 60 * MINUTE;
    let ack = client
        .ingest(vec![
            RawEvent::new("page_view", "app", week_ago).key("user:sofia")
        ])
        .await
        .unwrap();
    assert_eq!((ack.accepted, ack.rejected.len()), (1, 0));

    // Anonymous on the web from the flyer, shoes, cart (JSON, as a tracker sends it).
    let json = format!(
        r#"{{"batch":[
          {{"type":"page","anonymousId":"c-7f3","properties":{{"url":"/lp/spring","campaign":"flyer-spring"}},"timestamp":{t0}}},
          {{"type":"track","event":"product_view","anonymousId":"c-7f3","properties":{{"sku":"SHOE-42","category":"shoes","price":120}},"context":{{"channel":"web"}},"timestamp":{t1}}},
          {{"type":"track","event":"add_to_cart","anonymousId":"c-7f3","properties":{{"sku":"SHOE-42","price":120,"quantity":1}},"context":{{"channel":"web"}},"timestamp":{t2}}}
        ]}}"#,
        t0 = START_MS,
        t1 = START_MS + MINUTE,
        t2 = START_MS + 2 * MINUTE
    );
    server.clock.advance_ms(2 * MINUTE);
    let ack = client.ingest_json(json).await.unwrap();
    assert_eq!(
        (ack.accepted, ack.rejected.len()),
        (3, 0),
        "{:?}",
        ack.rejected
    );
    assert!(client
        .segment_contains("new_visitors", "anon:c-7f3")
        .await
        .unwrap());

    // She logs in on the app: the cookie's profile merges into her account (JSON identify).
    server.clock.advance_ms(10 * MINUTE);
    let ack = client
        .ingest_json(r#"{"type":"identify","userId":"sofia","anonymousId":"c-7f3","traits":{"email":"sofia@example.nl","country":"NL","email_opt_in":true},"context":{"channel":"app"}}"#)
        .await
        .unwrap();
    assert_eq!(ack.accepted, 1);
    let profile = client
        .profile("anon:c-7f3")
        .await
        .unwrap()
        .expect("merged profile");
    assert_eq!(profile.primary_key, "user:sofia");
    assert_eq!(
        profile.keys,
        vec!["user:sofia", "email:sofia@example.nl", "anon:c-7f3"]
    );
    assert_eq!(client.segment_count("all").await.unwrap(), 1);

    // 30 minutes after the cart, by the clock alone, she is a cart abandoner.
    server.clock.advance_ms(19 * MINUTE);
    assert!(!client
        .segment_contains("cart_abandoners", "user:sofia")
        .await
        .unwrap());
    server.clock.advance_ms(MINUTE + 1000);
    assert!(client
        .segment_contains("cart_abandoners", "email:sofia@example.nl")
        .await
        .unwrap());

    // The reminder e-mail, and a purchase in the app (binary).
    let now = START_MS + 34 * MINUTE;
    server.clock.set_ms(now);
    let ack = client
        .ingest(vec![
            RawEvent::new("email_click", "email", now)
                .key("email:sofia@example.nl")
                .prop("campaign", "cart-reminder"),
            RawEvent::new("purchase", "app", now)
                .key("user:sofia")
                .prop("amount", 120.0)
                .prop("category", "shoes"),
        ])
        .await
        .unwrap();
    assert_eq!(ack.accepted, 2);
    assert!(!client
        .segment_contains("cart_abandoners", "user:sofia")
        .await
        .unwrap());

    // The coupon redeemed in a store with her loyalty card.
    let ack = client.ingest_json(r#"{"type":"track","event":"coupon_redeemed","keys":["card:8812","email:sofia@example.nl"],"properties":{"coupon":"SPRING10","value":10},"context":{"channel":"store"}}"#).await.unwrap();
    assert_eq!(ack.accepted, 1);
    let profile = client.profile("card:8812").await.unwrap().unwrap();
    let channels: Vec<&str> = profile.channels.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(channels, vec!["web", "app", "email", "store"]);
    assert!(profile.in_segment("multichannel_shoppers"));
    assert_eq!(
        client
            .segment_count("multichannel_shoppers and email_reachable")
            .await
            .unwrap(),
        1
    );
    let (members, next) = client
        .segment_members("multichannel_shoppers", 0, 10)
        .await
        .unwrap();
    assert_eq!(
        (members.len(), members[0].1.as_str(), next),
        (1, "user:sofia", None)
    );
    let stats = client.stats().await.unwrap();
    assert_eq!(
        (
            stats.customers,
            stats.events_ingested,
            stats.events_rejected
        ),
        (1, 8, 0)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_in_flight_on_one_connection() {
    let server = TestServer::start().await;
    let client = Client::connect(&server.addr).await.unwrap();
    let mut tasks = JoinSet::new();
    for i in 0..1000 {
        let client = client.clone();
        tasks.spawn(async move {
            let ack = client
                .ingest(vec![
                    RawEvent::new("page_view", "web", START_MS).key(&format!("anon:p{i}"))
                ])
                .await
                .unwrap();
            let member = client
                .segment_contains("new_visitors", &format!("anon:p{i}"))
                .await
                .unwrap();
            (ack.accepted, member)
        });
    }
    let mut answered = 0;
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap(), (1, true));
        answered += 1;
    }
    assert_eq!(answered, 1000);
    assert_eq!(client.segment_count("new_visitors").await.unwrap(), 1000);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_connections_ingest_while_others_query() {
    let server = TestServer::start().await;
    let mut writers = JoinSet::new();
    for c in 0..32 {
        let addr = server.addr.clone();
        writers.spawn(async move {
            let client = Client::connect(&addr).await.unwrap();
            for batch in 0..10 {
                let events = (0..50)
                    .map(|i| {
                        RawEvent::new("purchase", "web", START_MS)
                            .key(&format!("user:c{c}-{batch}-{i}"))
                            .prop("amount", 600.0)
                    })
                    .collect();
                assert_eq!(client.ingest(events).await.unwrap().accepted, 50);
            }
        });
    }
    let mut readers = JoinSet::new();
    for _ in 0..4 {
        let addr = server.addr.clone();
        readers.spawn(async move {
            let client = Client::connect(&addr).await.unwrap();
            let mut last = 0;
            for _ in 0..50 {
                let n = client.segment_count("high_value").await.unwrap();
                assert!(n >= last, "counts only grow while purchases arrive");
                last = n;
                client.stats().await.unwrap();
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.unwrap();
    }
    while let Some(r) = readers.join_next().await {
        r.unwrap();
    }
    let client = Client::connect(&server.addr).await.unwrap();
    assert_eq!(
        client.segment_count("high_value").await.unwrap(),
        32 * 10 * 50
    );
    assert_eq!(client.stats().await.unwrap().events_ingested, 32 * 10 * 50);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_answers_every_request_in_flight() {
    let mut server = TestServer::start().await;
    let client = Client::connect(&server.addr).await.unwrap();
    let mut tasks = JoinSet::new();
    for i in 0..300 {
        let client = client.clone();
        tasks.spawn(async move {
            client
                .ingest(vec![
                    RawEvent::new("page_view", "web", START_MS).key(&format!("anon:s{i}"))
                ])
                .await
        });
    }
    // Shut down while the requests are still being sent and handled.
    tokio::task::yield_now().await;
    server.begin_shutdown();
    let mut accepted = 0;
    while let Some(result) = tasks.join_next().await {
        let ack = result
            .unwrap()
            .expect("every request sent before shutdown is answered");
        accepted += ack.accepted;
    }
    assert_eq!(accepted, 300);
    let engine = server.node.clone();
    server.finished().await;
    assert_eq!(
        engine.stats().events_applied,
        300,
        "every acknowledged event is in the engine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_hold_the_server() {
    use omnia::protocol::{Frame, Request};
    use tokio::io::AsyncWriteExt;
    let mut server = TestServer::with_limits(omnia::server::Limits {
        idle_timeout: std::time::Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let client = Client::connect(&server.addr).await.unwrap();
    let events: Vec<RawEvent> = (0..5000)
        .map(|i| RawEvent::new("page_view", "web", START_MS).key(&format!("anon:r{i}")))
        .collect();
    client.ingest(events).await.unwrap();
    // Ask for pages of 5,000 members again and again, and never read the answers:
    // far more than the socket buffers hold.
    let mut raw = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let mut bytes = bytes::BytesMut::new();
    let hello = Request::Hello {
        min_version: 1,
        max_version: 1,
        client: "greedy".into(),
    };
    Frame::new(hello.opcode(), 1, hello.encode().unwrap()).write_to(&mut bytes);
    let members = Request::SegmentMembers {
        query: "all".into(),
        cursor: 0,
        limit: 5000,
    };
    for id in 2..400 {
        Frame::new(members.opcode(), id, members.encode().unwrap()).write_to(&mut bytes);
    }
    raw.write_all(&bytes).await.unwrap();
    server.begin_shutdown();
    // Shutdown completes: the stuck write times out after the idle timeout.
    tokio::time::timeout(std::time::Duration::from_secs(30), server.finished())
        .await
        .expect("shutdown is not held by a client that does not read");
    drop(raw);
}

/// The acknowledgement in a reply frame: (accepted, the rejections' codes).
fn ack(frame: &omnia::protocol::Frame) -> (u32, Vec<u16>) {
    match Response::decode(frame.opcode, &frame.body).unwrap() {
        Response::Ingested { accepted, rejected } => {
            (accepted, rejected.iter().map(|r| r.code).collect())
        }
        other => panic!("not an acknowledgement: {other:?}"),
    }
}

#[tokio::test]
async fn version_1_clients_are_answered_in_version_1_and_version_2_carries_message_ids() {
    let server = TestServer::start().await;
    let hello = |min_version, max_version| {
        Request::Hello {
            min_version,
            max_version,
            client: "v".into(),
        }
        .encode()
        .unwrap()
    };
    // A client of version 1 agrees on version 1, in version 1 frames, and ingests
    // layout 1 events as it always did.
    let mut old = Raw::connect(&server.addr).await;
    let reply = old.request_in(1, opcode::HELLO, 1, hello(1, 1)).await;
    assert_eq!(reply.version, 1);
    let Response::Hello(ServerHello { version, .. }) =
        Response::decode(reply.opcode, &reply.body).unwrap()
    else {
        panic!("{reply:?}")
    };
    assert_eq!(version, 1);
    let event = RawEvent::new("page_view", "web", START_MS).key("anon:old");
    let body = Request::Ingest {
        events: vec![event.clone(), event.clone()],
    }
    .encode_in(1)
    .unwrap();
    let reply = old.request_in(1, opcode::INGEST, 2, body).await;
    assert_eq!((reply.version, ack(&reply)), (1, (2, vec![])));

    // Version 2: the newest both speak. Its events carry message ids; a copy of an id
    // already applied is acknowledged as DUPLICATE (31) and not applied again.
    let mut new = Raw::connect(&server.addr).await;
    let reply = new.request(opcode::HELLO, 1, hello(1, 9)).await;
    let Response::Hello(ServerHello { version, .. }) =
        Response::decode(reply.opcode, &reply.body).unwrap()
    else {
        panic!("{reply:?}")
    };
    assert_eq!(version, 2);
    let mut with_id = RawEvent::new("purchase", "store", START_MS)
        .key("user:new")
        .prop("amount", 10.0);
    with_id.message_id = Some("order-7".into());
    let body = Request::Ingest {
        events: vec![with_id.clone(), with_id.clone()],
    }
    .encode_in(2)
    .unwrap();
    let reply = new.request_in(2, opcode::INGEST, 2, body.clone()).await;
    assert_eq!((reply.version, ack(&reply)), (2, (1, vec![31])));
    let reply = new.request_in(2, opcode::INGEST, 3, body).await;
    assert_eq!(ack(&reply), (0, vec![31, 31]));
    let profile = server.node.profile("user:new").unwrap();
    assert_eq!(profile.aggregate("sum(purchase.amount, 90d)"), Some(10.0));
    assert_eq!(
        server
            .node
            .profile("anon:old")
            .unwrap()
            .aggregate("count(page_view on web, 1h)"),
        Some(2.0)
    );

    // No version in common, or a frame of a version this server does not speak.
    let mut future = Raw::connect(&server.addr).await;
    let reply = future.request_in(1, opcode::HELLO, 1, hello(3, 4)).await;
    assert_error(
        &reply,
        1,
        ErrorCode::UnsupportedVersion,
        "this server speaks versions 1 to 2",
    );
    let reply = new.request_in(3, opcode::PING, 5, Bytes::new()).await;
    assert_error(
        &reply,
        5,
        ErrorCode::UnsupportedVersion,
        "frame has protocol version 3",
    );
    assert_eq!(reply.version, 1);
    new.still_alive().await;
    server.shutdown().await;
}
