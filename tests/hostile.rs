//! One request must never kill omnia: hostile JSON, unit mistakes and oversized values
//! sent to the real server, each answered with an error that says what and where, with
//! the server still answering afterwards.

mod common;

use bytes::Bytes;
use common::raw::{assert_error, Raw};
use common::{TestServer, START_MS};
use omnia::model::RawEvent;
use omnia::protocol::{opcode, ErrorCode, Request, Response};

/// A JSON document nested `depth` levels deep: `[[[…]]]`.
fn nested(depth: usize) -> String {
    "[".repeat(depth) + &"]".repeat(depth)
}

/// A track call on the web for `anon:a`, with `extra` spliced into the object.
fn track(extra: &str) -> String {
    format!(
        r#"{{"type":"track","event":"page_view","anonymousId":"a","context":{{"channel":"web"}}{extra}}}"#
    )
}

async fn ingest_json(raw: &mut Raw, id: u32, json: String) -> Response {
    let body = Request::IngestJson {
        json: Bytes::from(json),
    }
    .encode()
    .unwrap();
    let reply = raw.request(opcode::INGEST_JSON, id, body).await;
    Response::decode(reply.opcode, &reply.body).unwrap()
}

/// The rejections of an acknowledgement, as (index, code, message).
fn rejections(response: &Response) -> Vec<(u32, Option<ErrorCode>, String)> {
    let Response::Ingested { rejected, .. } = response else {
        panic!("expected an acknowledgement, got {response:?}")
    };
    rejected
        .iter()
        .map(|r| (r.index, ErrorCode::from_u16(r.code), r.message.clone()))
        .collect()
}

fn accepted(response: &Response) -> u32 {
    match response {
        Response::Ingested { accepted, .. } => *accepted,
        other => panic!("expected an acknowledgement, got {other:?}"),
    }
}

#[tokio::test]
async fn json_nested_100000_levels_deep_is_refused_in_every_place_and_the_server_lives() {
    let server = TestServer::start().await;
    let mut raw = Raw::greeted(&server.addr).await;

    // A whole body: one error for the request, with the place.
    let body = Request::IngestJson {
        json: Bytes::from(nested(100_000)),
    }
    .encode()
    .unwrap();
    let reply = raw.request(opcode::INGEST_JSON, 2, body).await;
    assert_error(
        &reply,
        2,
        ErrorCode::BadJson,
        "JSON nested deeper than 64 levels at byte 64 (line 1, column 65)",
    );
    raw.still_alive().await;

    // A nested property value inside an otherwise fine event.
    let deep_property = track(&format!(r#","properties":{{"x":{}}}"#, nested(100_000)));
    let body = Request::IngestJson {
        json: Bytes::from(deep_property),
    }
    .encode()
    .unwrap();
    let reply = raw.request(opcode::INGEST_JSON, 3, body).await;
    assert_error(
        &reply,
        3,
        ErrorCode::BadJson,
        "nested deeper than 64 levels",
    );
    raw.still_alive().await;

    // One line of many: that line is rejected by its index and line, the others applied.
    let ndjson = format!("{}\n{}\n{}\n", track(""), nested(100_000), track(""));
    let response = ingest_json(&mut raw, 4, ndjson).await;
    assert_eq!(accepted(&response), 2);
    assert_eq!(
        rejections(&response),
        vec![(
            1,
            Some(ErrorCode::BadJson),
            "event 1 (line 2, column 65): JSON nested deeper than 64 levels; events are at most 64 arrays or objects deep".to_string()
        )]
    );
    raw.still_alive().await;

    // 64 levels are fine: the limit is where the docs say.
    let at_limit = track(&format!(r#","integrations":{}"#, nested(62)));
    assert_eq!(accepted(&ingest_json(&mut raw, 5, at_limit).await), 1);
}

#[tokio::test]
async fn integers_beyond_64_bits_are_ignored_where_omnia_ignores_the_field() {
    let server = TestServer::start().await;
    let mut raw = Raw::greeted(&server.addr).await;
    let huge = "123456789012345678901234567890";
    let ignored = track(&format!(r#","integrations":{{"All":{huge}}}"#));
    assert_eq!(accepted(&ingest_json(&mut raw, 2, ignored).await), 1);

    // In a field omnia reads it is that event's error, not the batch's.
    let as_timestamp = track(&format!(r#","timestamp":{huge}"#));
    let response = ingest_json(&mut raw, 3, format!("[{},{as_timestamp}]", track(""))).await;
    assert_eq!(accepted(&response), 1);
    let rejected = rejections(&response);
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        (rejected[0].0, rejected[0].1),
        (1, Some(ErrorCode::BadTimestamp))
    );
    assert!(
        rejected[0].2.contains("field `timestamp`"),
        "{}",
        rejected[0].2
    );
}

#[tokio::test]
async fn an_epoch_seconds_timestamp_is_rejected_with_a_hint() {
    let server = TestServer::start().await;
    let mut raw = Raw::greeted(&server.addr).await;
    let seconds = START_MS / 1000;
    let response = ingest_json(&mut raw, 2, track(&format!(r#","timestamp":{seconds}"#))).await;
    assert_eq!(
        rejections(&response),
        vec![(
            0,
            Some(ErrorCode::BadTimestamp),
            format!("event `page_view` has timestamp {seconds}, which looks like seconds since the Unix epoch: timestamps are milliseconds ({seconds}000), between 2001-01-01 and 2106-02-07")
        )]
    );
    // Milliseconds of the same instant are accepted.
    let millis = track(&format!(r#","timestamp":{}"#, seconds * 1000));
    assert_eq!(accepted(&ingest_json(&mut raw, 3, millis).await), 1);
    // The binary protocol says the same.
    let client = omnia::client::Client::connect(&server.addr).await.unwrap();
    let ack = client
        .ingest(vec![
            RawEvent::new("page_view", "web", seconds).key("anon:b")
        ])
        .await
        .unwrap();
    assert_eq!(ack.accepted, 0);
    assert!(ack.rejected[0].message.contains("looks like seconds"));
}

#[tokio::test]
async fn values_beyond_the_size_limits_are_rejected_by_field() {
    let server = TestServer::start().await;
    let mut raw = Raw::greeted(&server.addr).await;
    let long = "x".repeat(5_000_000);
    let trait_too_long = format!(
        r#"{{"type":"identify","userId":"s","traits":{{"country":"{long}"}},"context":{{"channel":"web"}}}}"#
    );
    let response = ingest_json(&mut raw, 2, trait_too_long).await;
    assert_eq!(
        rejections(&response),
        vec![(
            0,
            Some(ErrorCode::EventTooLarge),
            "attribute `country` of event `identify` is 5000000 bytes long; a string value is at most 4096 bytes (engine.max_value_bytes)".to_string()
        )]
    );
    // Many values each within the limit, together too large for one event.
    let client = omnia::client::Client::connect(&server.addr).await.unwrap();
    let mut event = RawEvent::new("identify", "web", START_MS).key("user:s");
    for _ in 0..9 {
        event = event.attr("country", "z".repeat(4000).as_str());
    }
    let ack = client.ingest(vec![event]).await.unwrap();
    assert_eq!(ack.accepted, 0);
    assert_eq!(ack.rejected[0].code, ErrorCode::EventTooLarge as u16);
    assert!(
        ack.rejected[0]
            .message
            .contains("an event is at most 32768 bytes"),
        "{}",
        ack.rejected[0].message
    );
    // More properties than the log's record can hold.
    let props: Vec<String> = (0..300).map(|i| format!(r#""p{i}":{i}"#)).collect();
    let many = track(&format!(r#","properties":{{{}}}"#, props.join(",")));
    let response = ingest_json(&mut raw, 3, many).await;
    assert_eq!(
        rejections(&response),
        vec![(
            0,
            Some(ErrorCode::EventTooLarge),
            "event `page_view` has 300 properties; an event has at most 255 of each".to_string()
        )]
    );
    // No profile was made from the refused events.
    assert_eq!(server.node.engine().customer_of("user:s"), None);
    raw.still_alive().await;
}

#[tokio::test]
async fn a_connection_over_the_limit_is_told_server_busy_and_closed() {
    let limits = omnia::server::Limits {
        max_connections: 64,
        ..omnia::server::Limits::default()
    };
    let server = TestServer::with_limits(limits).await;
    let mut open = Vec::new();
    for _ in 0..64 {
        open.push(Raw::greeted(&server.addr).await);
    }
    // Connection 65: its HELLO is answered with SERVER_BUSY, then the server closes it.
    let mut refused = Raw::connect(&server.addr).await;
    let hello = Request::Hello {
        min_version: 1,
        max_version: 1,
        client: "65th".into(),
    };
    let reply = refused
        .request(opcode::HELLO, 7, hello.encode().unwrap())
        .await;
    assert_error(
        &reply,
        7,
        ErrorCode::ServerBusy,
        "the server is at its limit of 64 connections; try again later",
    );
    assert!(
        refused.frame().await.is_none(),
        "then the connection closes"
    );
    // The Rust client reports it as a retriable server error.
    let err = match omnia::client::Client::connect(&server.addr).await {
        Ok(_) => panic!("connected beyond the limit"),
        Err(e) => e,
    };
    assert_eq!(err.code(), Some(ErrorCode::ServerBusy), "{err}");
    assert!(ErrorCode::ServerBusy.retriable());
    // A slot freed is a slot served.
    drop(open.pop());
    let mut again = None;
    for _ in 0..100 {
        if let Ok(client) = omnia::client::Client::connect(&server.addr).await {
            again = Some(client);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    again
        .expect("a connection once a slot is free")
        .ping()
        .await
        .unwrap();
    open[0].still_alive().await;
}

#[tokio::test]
async fn silent_sockets_are_closed_after_the_handshake_timeout_and_free_their_slots() {
    let limits = omnia::server::Limits {
        max_connections: 8,
        handshake_timeout: std::time::Duration::from_millis(300),
        ..omnia::server::Limits::default()
    };
    let server = TestServer::with_limits(limits).await;
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(Raw::connect(&server.addr).await);
    }
    for socket in &mut silent {
        let reply = socket.frame().await.expect("a parting error");
        assert_error(
            &reply,
            0,
            ErrorCode::HelloRequired,
            "no HELLO within 300ms of connecting; the connection is closed",
        );
        assert!(socket.frame().await.is_none());
    }
    // Every slot is free again.
    let client = omnia::client::Client::connect(&server.addr).await.unwrap();
    client.ping().await.unwrap();
}

#[tokio::test]
async fn shutdown_drops_a_client_that_never_reads_at_its_deadline() {
    let limits = omnia::server::Limits {
        shutdown_timeout: std::time::Duration::from_millis(500),
        ..omnia::server::Limits::default()
    };
    let mut server = TestServer::with_limits(limits).await;
    let mut greedy = Raw::greeted(&server.addr).await;
    let mut bytes = bytes::BytesMut::new();
    for id in 2..50_000 {
        let stats = Request::Stats {
            offers: true,
            drift: false,
            triggers: false,
            experiments: false,
        }
        .encode()
        .unwrap();
        omnia::protocol::Frame::new(opcode::STATS, id, stats).write_to(&mut bytes);
    }
    // Sends until the socket buffers are full both ways; never reads.
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = greedy.stream.write_all(&bytes).await;
        greedy
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    server.begin_shutdown();
    // The idle timeout is 300 s: only the shutdown deadline can end this in time.
    tokio::time::timeout(std::time::Duration::from_secs(30), server.finished())
        .await
        .expect("the server stopped at its shutdown deadline");
    writer.abort();
}

/// A big INGEST_JSON frame: `n` page views of `anon:{tag}`, about 100 bytes each.
fn big_ingest(id: u32, tag: &str, n: usize) -> bytes::BytesMut {
    let line = format!(
        "{}\n",
        track("").replace(
            "\"anonymousId\":\"a\"",
            &format!("\"anonymousId\":\"{tag}\"")
        )
    );
    let json = line.repeat(n);
    let body = Request::IngestJson {
        json: Bytes::from(json),
    }
    .encode()
    .unwrap();
    let mut frame = bytes::BytesMut::new();
    omnia::protocol::Frame::new(opcode::INGEST_JSON, id, body).write_to(&mut frame);
    frame
}

#[tokio::test]
async fn frames_beyond_the_read_budget_wait_their_turn_and_the_budget_comes_back() {
    let limits = omnia::server::Limits {
        max_frame: 1 << 20,
        read_budget: 1 << 20,
        ..omnia::server::Limits::default()
    };
    let server = TestServer::with_limits(limits).await;
    let budget = server.shared.read_budget_available();
    let mut first = Raw::greeted(&server.addr).await;
    let mut second = Raw::greeted(&server.addr).await;
    // Each frame needs most of the budget: the second can be read only once the first
    // is done.
    let a = big_ingest(2, "first", 7_000);
    let b = big_ingest(3, "second", 7_000);
    assert!(a.len() > 600_000 && a.len() < 1 << 20, "{}", a.len());
    first.send(&a[..a.len() / 2]).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    second.send(&b).await;
    first.send(&a[a.len() / 2..]).await;
    for (raw, id) in [(&mut first, 2), (&mut second, 3)] {
        let reply = raw.frame().await.expect("an acknowledgement");
        assert_eq!(reply.request_id, id);
        let response = Response::decode(reply.opcode, &reply.body).unwrap();
        assert_eq!(accepted(&response), 7_000);
    }
    first.still_alive().await;
    second.still_alive().await;
    // Buffers shrink back to their base, returning what they had reserved, when the
    // handlers next wait for a request.
    for _ in 0..100 {
        if server.shared.read_budget_available() == budget {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(server.shared.read_budget_available(), budget);
}

#[test]
fn a_config_nested_100000_levels_deep_is_an_error_with_its_place() {
    // What RELOAD and check-config read: the TOML parser bounds its own recursion.
    for value in [
        nested(100_000),
        "{a=".repeat(100_000) + &"}".repeat(100_000),
    ] {
        let text = format!("channels = [\"web\"]\nx = {value}\n");
        let source = omnia::config::Source::new("deep.toml", text);
        let error = match omnia::config::Config::from_source(&source) {
            Ok(_) => panic!("a deep config is refused"),
            Err(e) => e.to_string(),
        };
        assert!(
            error.contains("deep.toml:2:"),
            "{}",
            &error[..error.len().min(300)]
        );
        assert!(
            error.contains("recursion"),
            "{}",
            &error[..error.len().min(300)]
        );
    }
}

#[tokio::test]
async fn before_hello_a_frame_is_at_most_16_kib() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(&server.addr).await;
    let reply = raw
        .request(opcode::PING, 3, Bytes::from(vec![0u8; 20_000]))
        .await;
    assert_error(
        &reply,
        3,
        ErrorCode::FrameTooLarge,
        "frame of 20008 bytes is larger than the limit of 16384 bytes",
    );
    assert!(raw.frame().await.is_none(), "then the connection closes");
    // After HELLO the server's limit applies.
    let mut greeted = Raw::greeted(&server.addr).await;
    let big = Request::IngestJson {
        json: Bytes::from(format!("[{}]", vec![track(""); 300].join(","))),
    }
    .encode()
    .unwrap();
    assert!(big.len() > 20_000);
    let reply = greeted.request(opcode::INGEST_JSON, 4, big).await;
    let response = Response::decode(reply.opcode, &reply.body).unwrap();
    assert_eq!(accepted(&response), 300);
}
