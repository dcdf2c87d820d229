//! The HTTP edge end to end: Segment-shaped requests over real HTTP against a server on
//! an ephemeral port, what lands in the profiles, and every kind of bad request
//! answered with its status and JSON body while the server lives on.

mod common;

use std::io::Write;

use common::{TestServer, START_MS};
use omnia::model::RawEvent;
use serde_json::{json, Value};

/// What the edge answered: status, `Retry-After` if any, JSON body.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

async fn post(server: &TestServer, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Answer {
    let url = format!("{}{path}", server.http.as_ref().expect("an HTTP edge"));
    let mut request = common::http_client().post(url).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    answer(request.send().await.expect("the server answers")).await
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = response.bytes().await.expect("a whole body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    Answer {
        status,
        retry_after,
        body,
    }
}

async fn post_json(server: &TestServer, path: &str, body: &Value) -> Answer {
    post(
        server,
        path,
        body.to_string().into_bytes(),
        &[("content-type", "application/json")],
    )
    .await
}

async fn get(server: &TestServer, path: &str) -> Answer {
    let url = format!("{}{path}", server.http.as_ref().expect("an HTTP edge"));
    answer(
        common::http_client()
            .get(url)
            .send()
            .await
            .expect("the server answers"),
    )
    .await
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// The server's clock as Segment SDKs write times.
fn at(offset_s: i64) -> String {
    jiff::Timestamp::from_millisecond(START_MS + offset_s * 1000)
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%S%.3f+00:00")
        .to_string()
}

/// What `segment-analytics-python` 2.4 posts for an anonymous page view, an identify
/// that links the cookie to an account and an e-mail address, and a purchase.
/// Now, for the servers of these tests that run on the wall clock.
fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn python_sdk_batch() -> Value {
    let library = json!({"name": "analytics-python", "version": "2.4.0"});
    json!({
        "batch": [
            {"type": "page", "anonymousId": "c-7f3", "userId": null, "name": "home",
             "properties": {"url": "/"}, "context": {"library": library}, "integrations": {},
             "messageId": "m-1", "timestamp": at(-60)},
            {"type": "identify", "anonymousId": "c-7f3", "userId": "sofia",
             "traits": {"email": "sofia@example.nl", "country": "NL"},
             "context": {"library": library}, "integrations": {}, "messageId": "m-2",
             "timestamp": at(-50)},
            {"type": "track", "event": "purchase", "userId": "sofia",
             "properties": {"amount": 59.5, "category": "shoes"},
             "context": {"library": library}, "integrations": {}, "messageId": "m-3",
             "timestamp": at(-40)},
        ],
        "sentAt": at(0),
    })
}

#[tokio::test]
async fn a_python_sdk_batch_lands_on_one_merged_profile() {
    let server = TestServer::with_http().await;
    let answer = post_json(&server, "/v1/batch", &python_sdk_batch()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"success": true, "accepted": 3, "duplicates": 0, "rejected": []})
    );
    let profile = server.node.profile("email:sofia@example.nl").unwrap();
    assert_eq!(profile.primary_key, "user:sofia");
    assert_eq!(
        profile.keys,
        ["user:sofia", "email:sofia@example.nl", "anon:c-7f3"]
    );
    assert_eq!(profile.aggregate("sum(purchase.amount, 90d)"), Some(59.5));
    // No context.channel: pages are web, the rest engine.default_channel (web).
    assert_eq!(profile.channels.len(), 1);
    assert_eq!(profile.channels[0].0, "web");
    assert_eq!(profile.first_seen as i64, START_MS / 1000 - 60);
    server.shutdown().await;
}

#[tokio::test]
async fn sent_at_corrects_the_senders_clock() {
    let server = TestServer::with_http().await;
    // The sender's clock is an hour fast: it stamps the event at +3590 s and sends it
    // at +3600 s. The event happened 10 s before the server received it.
    let answer = post_json(
        &server,
        "/v1/track",
        &json!({"event": "purchase", "userId": "late", "properties": {"amount": 5},
                "timestamp": at(3590), "sentAt": at(3600)}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let profile = server.node.profile("user:late").unwrap();
    assert_eq!(profile.last_seen as i64, START_MS / 1000 - 10);
    server.shutdown().await;
}

#[tokio::test]
async fn single_calls_take_their_type_from_the_path() {
    let server = TestServer::with_http().await;
    let calls = [
        (
            "/v1/page",
            json!({"anonymousId": "a-1", "properties": {"url": "/lp"}}),
        ),
        ("/v1/screen", json!({"anonymousId": "a-1"})),
        (
            "/v1/identify",
            json!({"userId": "u-1", "traits": {"country": "FR"}}),
        ),
        ("/v1/alias", json!({"previousId": "a-1", "userId": "u-1"})),
        (
            "/v1/track",
            json!({"event": "add_to_cart", "userId": "u-1", "properties": {"sku": "S1"}}),
        ),
    ];
    for (path, body) in calls {
        let answer = post_json(&server, path, &body).await;
        assert_eq!(
            (answer.status, &answer.body["accepted"]),
            (200, &json!(1)),
            "{path}: {}",
            answer.body
        );
    }
    // The alias merged the cookie's profile (web page, app screen) into the account.
    let profile = server.node.profile("anon:a-1").unwrap();
    assert_eq!(profile.primary_key, "user:u-1");
    let channels: Vec<&str> = profile.channels.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(channels, ["web", "app"]);
    assert_eq!(server.node.stats().customers, 1);
    // A group call is answered and applies nothing.
    let answer = post_json(
        &server,
        "/v1/group",
        &json!({"userId": "u-1", "groupId": "acme"}),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["accepted"], json!(0));
    assert!(answer.body["ignored"]
        .as_str()
        .unwrap()
        .contains("group calls are not applied"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_gzipped_body_is_read_like_a_plain_one() {
    let server = TestServer::with_http().await;
    let body = gzip(python_sdk_batch().to_string().as_bytes());
    let answer = post(
        &server,
        "/v1/batch",
        body,
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["accepted"], json!(3));
    assert!(server.node.profile("user:sofia").is_some());
    server.shutdown().await;
}

#[tokio::test]
async fn a_batchs_bad_events_are_rejected_by_index_and_the_good_ones_applied() {
    let server = TestServer::with_http().await;
    let answer = post_json(
        &server,
        "/v1/batch",
        &json!({"batch": [
            {"type": "track", "event": "purchase", "userId": "ok", "properties": {"amount": 1}},
            {"type": "track", "event": "purchase", "userId": null, "properties": {"amount": 1}},
            {"type": "track", "event": "Product Teleported", "userId": "ok"},
            {"type": "track", "event": "purchase", "userId": "ok", "timestamp": "yesterday"},
            {"type": "track", "event": "purchase", "userId": "ok", "properties": {"amount": 2}},
        ]}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["accepted"], json!(2));
    let rejected = answer.body["rejected"].as_array().unwrap();
    let codes: Vec<(u64, &str)> = rejected
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        [
            (1, "BAD_KEY"),
            (2, "UNKNOWN_EVENT_TYPE"),
            (3, "BAD_TIMESTAMP")
        ]
    );
    assert!(rejected[2]["message"]
        .as_str()
        .unwrap()
        .contains("`yesterday` is not an RFC 3339 time"));
    let profile = server.node.profile("user:ok").unwrap();
    assert_eq!(profile.aggregate("sum(purchase.amount, 90d)"), Some(3.0));
    server.shutdown().await;
}

/// A request refused as a whole: its status, its code, and nothing applied.
async fn refused(server: &TestServer, answer: Answer, status: u16, code: &str, says: &str) {
    assert_eq!(answer.status, status, "{code}: {}", answer.body);
    assert_eq!(answer.body["code"], json!(code), "{}", answer.body);
    let message = answer.body["message"].as_str().unwrap();
    assert!(message.contains(says), "{code}: {message}");
    assert_eq!(server.node.stats().customers, 0, "{code} applied something");
}

#[tokio::test]
async fn bad_requests_get_their_status_and_the_server_lives_on() {
    let server = TestServer::with_http().await;
    let json = [("content-type", "application/json")];
    let a = post(&server, "/v1/batch", b"{\"batch\": [".to_vec(), &json).await;
    refused(&server, a, 400, "BAD_JSON", "bad JSON").await;
    let a = post(
        &server,
        "/v1/batch",
        b"{\"batch\": \"nope\"}".to_vec(),
        &json,
    )
    .await;
    refused(&server, a, 400, "BAD_JSON", "`batch` must be an array").await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let a = post(&server, "/v1/batch", deep.clone().into_bytes(), &json).await;
    refused(&server, a, 400, "BAD_JSON", "nested deeper than").await;
    // Every endpoint that reads JSON checks its nesting before any parser recurses.
    for path in [
        "/v1/group",
        "/v1/track",
        "/v1/decide",
        "/v1/feedback",
        "/v1/segments/query",
    ] {
        let a = post(&server, path, deep.clone().into_bytes(), &json).await;
        refused(&server, a, 400, "BAD_JSON", "nested deeper than").await;
    }
    let a = post(
        &server,
        "/v1/track",
        b"{\"event\": \"purchase\", \"userId\": \"\xff\xfe\"}".to_vec(),
        &json,
    )
    .await;
    refused(&server, a, 400, "BAD_JSON", "").await;
    let a = post(
        &server,
        "/v1/track",
        b"{}".to_vec(),
        &[("content-type", "application/x-www-form-urlencoded")],
    )
    .await;
    refused(
        &server,
        a,
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        "send `application/json`",
    )
    .await;
    let a = post(
        &server,
        "/v1/track",
        b"{}".to_vec(),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "br"),
        ],
    )
    .await;
    refused(&server, a, 415, "UNSUPPORTED_ENCODING", "send gzip or none").await;
    let a = post(
        &server,
        "/v1/track",
        b"not gzip at all".to_vec(),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
    )
    .await;
    refused(&server, a, 400, "BAD_BODY", "damaged gzip stream").await;
    // Over 500 KB plain, and a small gzip stream that inflates past it.
    let big = format!("{{\"batch\": [], \"pad\": \"{}\"}}", "x".repeat(600 * 1024));
    let a = post(&server, "/v1/batch", big.clone().into_bytes(), &json).await;
    refused(
        &server,
        a,
        400,
        "BODY_TOO_LARGE",
        "larger than 512000 bytes",
    )
    .await;
    let bomb = gzip(big.as_bytes());
    assert!(bomb.len() < 10_000);
    let a = post(
        &server,
        "/v1/batch",
        bomb,
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
    )
    .await;
    refused(&server, a, 400, "BODY_TOO_LARGE", "after decompression").await;
    let many: Vec<Value> = (0..2501)
        .map(|i| json!({"type": "track", "event": "purchase", "userId": format!("{i}")}))
        .collect();
    let a = post_json(&server, "/v1/batch", &json!({ "batch": many })).await;
    refused(&server, a, 400, "BATCH_TOO_LARGE", "at most 2500").await;
    let a = post_json(&server, "/v1/nope", &json!({})).await;
    refused(&server, a, 404, "NOT_FOUND", "/v1/batch").await;
    let a = get(&server, "/v1/batch").await;
    refused(&server, a, 405, "METHOD_NOT_ALLOWED", "does not take GET").await;
    // Not HTTP at all: hyper answers 400 and closes; the edge serves the next request.
    let addr = server.http.as_ref().unwrap().trim_start_matches("http://");
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"HELLO OMNIA\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut reply).await;
    assert!(
        String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let a = post_json(&server, "/v1/batch", &python_sdk_batch()).await;
    assert_eq!((a.status, &a.body["accepted"]), (200, &json!(3)));
    server.shutdown().await;
}

#[tokio::test]
async fn health_answers_before_recovery_and_ingest_waits_for_it() {
    let mut server = TestServer::start().await;
    // An edge whose node is not there yet, as while `omnia serve` recovers.
    let edge = omnia::http::Edge::new(omnia::http::HttpLimits::default());
    server.serve_http(edge.clone()).await;
    assert_eq!(get(&server, "/healthz").await.body, json!({"status": "ok"}));
    let ready = get(&server, "/readyz").await;
    assert_eq!(
        (ready.status, ready.body),
        (503, json!({"status": "recovering"}))
    );
    let a = post_json(&server, "/v1/batch", &python_sdk_batch()).await;
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    refused(&server, a, 503, "NOT_READY", "still recovering").await;
    edge.ready(server.shared.clone());
    let ready = get(&server, "/readyz").await;
    assert_eq!(
        (ready.status, ready.body),
        (200, json!({"status": "ready"}))
    );
    let a = post_json(&server, "/v1/batch", &python_sdk_batch()).await;
    assert_eq!(a.status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn a_batch_acknowledged_over_http_survives_sigkill_and_its_retries_stay_duplicates() {
    use common::binary::{serve_on, serve_with, wait_ready};
    let dir = std::env::temp_dir().join(format!("omnia-http-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // `--fsync always`: a 200 means the batch is on disk.
    let mut served = serve_with(dir.clone(), &["--fsync", "always"]);
    let url = format!("http://{}/v1/batch", served.http);
    // The HTTP edge may answer a moment after the binary port: wait for /readyz.
    wait_ready(&served.http).await;
    let mut batch = python_sdk_batch();
    // The real server runs on the wall clock: no timestamps, so events are "now".
    for event in batch["batch"].as_array_mut().unwrap() {
        event.as_object_mut().unwrap().remove("timestamp");
    }
    let response = common::http_client()
        .post(&url)
        .header("content-type", "application/json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    let a = answer(response).await;
    assert_eq!(
        (a.status, &a.body["accepted"]),
        (200, &json!(3)),
        "{}",
        a.body
    );
    // A binary INGEST event with a message id, acknowledged before the kill too.
    let client = omnia::client::Client::connect(&served.addr).await.unwrap();
    let mut viewed = RawEvent::new("product_view", "app", wall_clock_ms())
        .key("user:sofia")
        .prop("sku", "SHOE-1");
    viewed.message_id = Some("bin-1".into());
    assert_eq!(
        client.ingest(vec![viewed.clone()]).await.unwrap().accepted,
        1
    );
    served.child.kill().expect("SIGKILL");
    served.child.wait().unwrap();
    std::mem::forget(served._dir);
    let post_again = |http: String| {
        let body = batch.to_string();
        async move {
            let response = common::http_client()
                .post(format!("http://{http}/v1/batch"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            answer(response).await
        }
    };
    // Recovered from the log alone: the profile, and the message ids, so the SDK's
    // retry of the same batch changes nothing.
    let mut again = serve_on(dir.clone());
    wait_ready(&again.http).await;
    let client = omnia::client::Client::connect(&again.addr).await.unwrap();
    let profile = client
        .profile("anon:c-7f3")
        .await
        .unwrap()
        .expect("recovered");
    assert_eq!(profile.primary_key, "user:sofia");
    assert_eq!(profile.aggregate("sum(purchase.amount, 90d)"), Some(59.5));
    let a = post_again(again.http.clone()).await;
    assert_eq!(
        (a.body["accepted"].clone(), a.body["duplicates"].clone()),
        (json!(0), json!(3)),
        "{}",
        a.body
    );
    let ack = client.ingest(vec![viewed]).await.unwrap();
    assert_eq!((ack.accepted, ack.rejected[0].code), (0, 31), "{ack:?}");
    assert_eq!(profile.aggregate("count(product_view, 7d)"), Some(1.0));
    // Stopped cleanly (a snapshot, the log it covers removed) and started again: the ids
    // come back from the snapshot.
    unsafe { libc::kill(again.child.id() as i32, libc::SIGTERM) };
    assert!(again.child.wait().unwrap().success());
    std::mem::forget(again._dir);
    let mut third = serve_on(dir);
    wait_ready(&third.http).await;
    let a = post_again(third.http.clone()).await;
    assert_eq!(
        (a.body["accepted"].clone(), a.body["duplicates"].clone()),
        (json!(0), json!(3)),
        "{}",
        a.body
    );
    let client = omnia::client::Client::connect(&third.addr).await.unwrap();
    let profile = client.profile("anon:c-7f3").await.unwrap().unwrap();
    assert_eq!(profile.aggregate("sum(purchase.amount, 90d)"), Some(59.5));
    third.child.kill().unwrap();
    third.child.wait().unwrap();
}

#[tokio::test]
async fn a_retried_batch_changes_every_aggregate_once() {
    let server = TestServer::with_http().await;
    let first = post_json(&server, "/v1/batch", &python_sdk_batch()).await;
    assert_eq!(first.body["accepted"], json!(3));
    for _ in 0..2 {
        let again = post_json(&server, "/v1/batch", &python_sdk_batch()).await;
        assert_eq!(
            again.body,
            json!({"success": true, "accepted": 0, "duplicates": 3, "rejected": []})
        );
    }
    // The same message ids through the binary protocol's INGEST_JSON are duplicates too.
    let client = omnia::client::Client::connect(&server.addr).await.unwrap();
    let body = python_sdk_batch().to_string();
    let ack = client.ingest_json(body.into_bytes()).await.unwrap();
    assert_eq!(ack.accepted, 0);
    assert!(ack.rejected.iter().all(|r| r.code == 31), "{ack:?}");
    // And through binary INGEST, whose events carry message ids since protocol version 2.
    let mut purchase = RawEvent::new("purchase", "web", START_MS)
        .key("user:sofia")
        .prop("amount", 59.5);
    purchase.message_id = Some("m-3".into());
    let ack = client.ingest(vec![purchase]).await.unwrap();
    assert_eq!((ack.accepted, ack.rejected[0].code), (0, 31), "{ack:?}");
    let profile = server.node.profile("user:sofia").unwrap();
    assert_eq!(profile.aggregate("sum(purchase.amount, 90d)"), Some(59.5));
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.events_ingested, 3);
    server.shutdown().await;
}

#[tokio::test]
async fn segment_ecommerce_names_reach_the_event_types_they_alias() {
    let server = TestServer::with_http().await;
    let answer = post_json(
        &server,
        "/v1/batch",
        &json!({"batch": [
            {"type": "track", "event": "Product Viewed", "userId": "e",
             "properties": {"product_id": "SHOE-1", "price": 59.5}},
            {"type": "track", "event": "Product Added", "userId": "e",
             "properties": {"product_id": "SHOE-1", "quantity": 1}},
            {"type": "track", "event": "Order Completed", "userId": "e",
             "properties": {"revenue": 30, "order_id": "o-1"}},
            // The declared name wins over an alias, whichever comes first.
            {"type": "track", "event": "Order Completed", "userId": "e",
             "properties": {"revenue": 99, "amount": 10}},
            {"type": "track", "event": "Order Completed", "userId": "e",
             "properties": {"amount": 1, "total": 99}},
        ]}),
    )
    .await;
    assert_eq!(
        answer.body,
        json!({"success": true, "accepted": 5, "duplicates": 0, "rejected": []})
    );
    let profile = server.node.profile("user:e").unwrap();
    assert_eq!(profile.aggregate("count(product_view, 7d)"), Some(1.0));
    assert_eq!(profile.aggregate("count(add_to_cart, 7d)"), Some(1.0));
    assert_eq!(profile.aggregate("sum(purchase.amount, 90d)"), Some(41.0));
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------
// HTTP/JSON for channel backends.

#[tokio::test]
async fn a_backend_decides_records_and_gives_feedback_over_json() {
    let server = TestServer::with_http().await;
    let a = post_json(
        &server,
        "/v1/track",
        &json!({"event": "add_to_cart", "userId": "b", "properties": {"sku": "S"}}),
    )
    .await;
    assert_eq!(a.status, 200);
    let d = post_json(
        &server,
        "/v1/decide",
        &json!({"key": "user:b", "channel": "web", "top": 2, "record": true, "explain": true}),
    )
    .await;
    assert_eq!(d.status, 200, "{}", d.body);
    let id = d.body["decision_id"]
        .as_str()
        .expect("a decision id as a string");
    assert!(
        id.parse::<u64>().unwrap() > 1 << 53,
        "ids exceed 2^53: {id}"
    );
    assert_eq!(d.body["known_customer"], json!(true));
    let offers = d.body["offers"].as_array().unwrap();
    assert!(!offers.is_empty(), "{}", d.body);
    let first = offers[0]["offer"].as_str().unwrap().to_string();
    let explained = d.body["explanation"].as_array().unwrap();
    assert_eq!(explained.len(), server.node.config().decisions.offers.len());
    // The recorded impression is in the profile, as on the binary protocol.
    let profile = get(&server, "/v1/profiles/user:b").await;
    assert_eq!(profile.status, 200, "{}", profile.body);
    assert_eq!(profile.body["primary_key"], json!("user:b"));
    let f = post_json(
        &server,
        "/v1/feedback",
        &json!({"kind": "click", "decision_id": id, "offer": first}),
    )
    .await;
    assert_eq!(f.status, 200, "{}", f.body);
    assert_eq!(f.body["decision_id"], json!(id));
    let f = post_json(
        &server,
        "/v1/feedback",
        &json!({"kind": "accept", "key": "user:b", "offer": first, "channel": "store"}),
    )
    .await;
    assert_eq!(f.status, 200, "{}", f.body);
    let stats = get(&server, "/v1/stats?offers=true").await;
    assert_eq!(stats.status, 200);
    let row = stats.body["offers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["offer"] == json!(first) && r["channel"] == json!("web") && r["arm"].is_null())
        .unwrap_or_else(|| panic!("{}", stats.body))
        .clone();
    assert_eq!(
        (
            row["decisions"].clone(),
            row["impressions"].clone(),
            row["clicks"].clone()
        ),
        (json!(1), json!(1), json!(1))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn segments_are_counted_paged_and_queried_over_json() {
    let server = TestServer::with_http().await;
    for i in 0..5 {
        let a = post_json(
            &server,
            "/v1/page",
            &json!({"anonymousId": format!("v{i}")}),
        )
        .await;
        assert_eq!(a.status, 200);
    }
    let c = get(&server, "/v1/segments/new_visitors/count").await;
    assert_eq!(c.body, json!({"query": "new_visitors", "count": 5}));
    let page = get(&server, "/v1/segments/new_visitors/members?limit=3").await;
    assert_eq!(page.body["members"].as_array().unwrap().len(), 3);
    let cursor = page.body["next_cursor"].as_u64().expect("a next page");
    let rest = get(
        &server,
        &format!("/v1/segments/new_visitors/members?cursor={cursor}&limit=3"),
    )
    .await;
    assert_eq!(rest.body["members"].as_array().unwrap().len(), 2);
    assert_eq!(rest.body["next_cursor"], Value::Null);
    let q = post_json(
        &server,
        "/v1/segments/query",
        &json!({"query": "new_visitors and not email_reachable"}),
    )
    .await;
    assert_eq!(q.body["count"], json!(5));
    let q = post_json(
        &server,
        "/v1/segments/query",
        &json!({"query": "new_visitors", "page": {"limit": 10}}),
    )
    .await;
    assert_eq!(q.body["members"].as_array().unwrap().len(), 5);
    server.shutdown().await;
}

#[tokio::test]
async fn backend_errors_carry_the_protocols_code_name_and_number() {
    let server = TestServer::with_http().await;
    let expect = |a: &Answer, status: u16, code: &str, number: u64, says: &str| {
        assert_eq!(a.status, status, "{code}: {}", a.body);
        assert_eq!(a.body["code"], json!(code), "{}", a.body);
        assert_eq!(a.body["number"], json!(number), "{}", a.body);
        assert!(
            a.body["message"].as_str().unwrap().contains(says),
            "{}",
            a.body
        );
    };
    let a = post_json(
        &server,
        "/v1/decide",
        &json!({"key": "user:1", "channel": "fax"}),
    )
    .await;
    expect(&a, 400, "UNKNOWN_CHANNEL", 12, "unknown channel `fax`");
    let a = post_json(
        &server,
        "/v1/decide",
        &json!({"key": "user:1", "channel": "web", "context": {"shelf": 1}}),
    )
    .await;
    expect(&a, 400, "BAD_CONTEXT", 24, "unknown context field `shelf`");
    let a = post_json(
        &server,
        "/v1/decide",
        &json!({"key": "user:1", "channel": "web", "top": 0}),
    )
    .await;
    expect(&a, 400, "BAD_QUERY", 19, "`top` is 0");
    let a = post_json(
        &server,
        "/v1/decide",
        &json!({"key": "user:1", "chanel": "web"}),
    )
    .await;
    assert_eq!(
        (a.status, a.body["code"].clone()),
        (400, json!("BAD_JSON")),
        "{}",
        a.body
    );
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `chanel`"),
        "{}",
        a.body
    );
    let a = post_json(
        &server,
        "/v1/feedback",
        &json!({"kind": "click", "decision_id": "12", "offer": "welcome_discount"}),
    )
    .await;
    expect(&a, 404, "UNKNOWN_DECISION", 22, "decision 12 is unknown");
    let a = post_json(
        &server,
        "/v1/feedback",
        &json!({"kind": "like", "decision_id": "12", "offer": "x"}),
    )
    .await;
    assert_eq!(a.body["code"], json!("BAD_JSON"));
    let a = post_json(
        &server,
        "/v1/feedback",
        &json!({"kind": "click", "offer": "nope", "key": "user:1", "channel": "web"}),
    )
    .await;
    expect(&a, 400, "UNKNOWN_OFFER", 21, "unknown offer `nope`");
    let a = get(&server, "/v1/profiles/user:nobody").await;
    expect(
        &a,
        404,
        "UNKNOWN_CUSTOMER",
        25,
        "no customer has the key `user:nobody`",
    );
    let a = get(&server, "/v1/segments/vips/count").await;
    expect(&a, 404, "UNKNOWN_SEGMENT", 18, "unknown segment `vips`");
    let a = post_json(
        &server,
        "/v1/segments/query",
        &json!({"query": "new_visitors and"}),
    )
    .await;
    expect(&a, 400, "BAD_QUERY", 19, "column");
    let a = get(&server, "/v1/stats?offers=maybe").await;
    assert_eq!(a.body["code"], json!("BAD_JSON"));
    assert_eq!(
        server.node.stats().customers,
        0,
        "no error created a customer"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_limit_get_503_and_silent_ones_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = TestServer::start().await;
    let edge = omnia::http::Edge::new(omnia::http::HttpLimits {
        max_connections: 2,
        header_timeout: std::time::Duration::from_millis(300),
        ..omnia::http::HttpLimits::default()
    });
    edge.ready(server.shared.clone());
    server.serve_http(edge).await;
    let addr = server
        .http
        .clone()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    // Two connections that send half a request and then nothing hold both slots...
    let mut silent = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        silent.push(s);
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // ... so a third is told the server is busy, in JSON, and closed.
    let mut third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut reply = String::new();
    third.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("\"code\":\"SERVER_BUSY\""), "{reply}");
    assert!(reply.contains("retry-after: 1"), "{reply}");
    // The silent ones are closed once their headers are late (300 ms here)...
    for mut s in silent {
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut rest))
                .await;
        assert!(
            read.is_ok(),
            "a connection that sent no whole request was left open"
        );
    }
    // ... which frees their slots.
    let a = get(&server, "/healthz").await;
    assert_eq!(a.status, 200);
    server.shutdown().await;
}
