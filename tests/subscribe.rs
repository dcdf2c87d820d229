//! SUBSCRIBE against a real server: order, acknowledgements, resumption across a
//! reconnect and a restart, backpressure, and the errors a subscriber can meet.

use std::sync::Arc;
use std::time::Duration;

use omnia::client::{Client, Subscription};
use omnia::clock::{Clock, ManualClock};
use omnia::config::{Config, Source};
use omnia::engine::RawEvent;
use omnia::model::{ChangeKind, StreamedChange};
use omnia::protocol::message::StreamFrom;
use omnia::protocol::{ErrorCode, Response};
use omnia::store::Store;

mod common;
use common::{unsynced_wal, TempDir, TestServer, START_MS};

fn config() -> Config {
    let text = format!(
        "{}\n[triggers]\nstream = [\"cart_abandoners\", \"new_visitors\"]\n",
        omnia::config::DEFAULT_CONFIG
    );
    Config::from_source(&Source::new("subscribe.toml", text)).unwrap_or_else(|e| panic!("{e}"))
}

async fn open(dir: &TempDir, clock: &Arc<ManualClock>) -> (Store, TestServer) {
    let store = Store::open(&dir.0, config(), clock.clone(), unsynced_wal()).unwrap();
    let server = TestServer::on_store(&store, clock.clone()).await;
    (store, server)
}

async fn close(store: Store, server: TestServer) {
    server.shutdown().await;
    store.close().unwrap();
}

async fn cart(client: &Client, key: &str, now: i64) {
    let ack = client
        .ingest(vec![RawEvent::new("add_to_cart", "web", now).key(key)])
        .await
        .unwrap();
    assert_eq!(ack.accepted, 1, "{ack:?}");
}

/// The next `n` changes, waiting at most 10 s for them.
async fn take(subscription: &mut Subscription, n: usize) -> Vec<StreamedChange> {
    let mut out = Vec::new();
    while out.len() < n {
        let frame = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} changes came: {out:?}", out.len()))
            .unwrap();
        out.extend(frame.changes);
    }
    assert_eq!(out.len(), n, "{out:?}");
    out
}

fn seen(changes: &[StreamedChange]) -> Vec<(&str, ChangeKind, &str)> {
    changes
        .iter()
        .map(|c| (c.segment.as_str(), c.kind, c.keys[0].as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_subscriber_resumes_after_its_ack_across_a_reconnect_and_a_restart() {
    let dir = TempDir::new("subscribe", "resume");
    let clock = Arc::new(ManualClock::new(START_MS));
    let (store, server) = open(&dir, &clock).await;
    let client = Client::connect(&server.addr).await.unwrap();
    let mut email = client
        .subscribe("email", StreamFrom::Earliest, &["cart_abandoners".into()])
        .await
        .unwrap();
    for who in ["anon:sofia", "anon:noor", "anon:lena"] {
        cart(&client, who, clock.now_ms()).await;
    }
    // Half an hour later their timers let them in; a count runs the timers.
    clock.advance_secs(31 * 60);
    assert_eq!(client.segment_count("cart_abandoners").await.unwrap(), 3);
    let entered = take(&mut email, 3).await;
    // In position order; the timers of customers in different shards run in shard
    // order, so which came first is the engine's affair.
    let mut who: Vec<_> = seen(&entered);
    who.sort_by_key(|w| w.2);
    assert_eq!(
        who,
        [
            ("cart_abandoners", ChangeKind::Enter, "anon:lena"),
            ("cart_abandoners", ChangeKind::Enter, "anon:noor"),
            ("cart_abandoners", ChangeKind::Enter, "anon:sofia"),
        ]
    );
    assert!(entered.windows(2).all(|w| w[0].position < w[1].position));
    assert!(entered
        .iter()
        .all(|c| c.time as i64 == START_MS / 1000 + 31 * 60));
    // The first reminder is handled, the second is not: the ACK says so.
    email.ack(entered[0].position).await.unwrap();
    email.finish().await.unwrap();

    // The second buys; the subscriber comes back (with `now`, which an ACK overrides).
    let second = entered[1].keys[0].clone();
    let third = entered[2].keys[0].clone();
    client
        .ingest(vec![RawEvent::new("purchase", "app", clock.now_ms())
            .key(&second)
            .prop("amount", 20.0)])
        .await
        .unwrap();
    let mut email = client
        .subscribe("email", StreamFrom::Now, &["cart_abandoners".into()])
        .await
        .unwrap();
    assert_eq!(email.from, entered[0].position + 1);
    let again = take(&mut email, 3).await;
    assert_eq!(
        seen(&again),
        [
            ("cart_abandoners", ChangeKind::Enter, second.as_str()),
            ("cart_abandoners", ChangeKind::Enter, third.as_str()),
            ("cart_abandoners", ChangeKind::Exit, second.as_str()),
        ]
    );
    assert_eq!(again[..2], entered[1..]);
    email.ack(again[1].position).await.unwrap();
    email.finish().await.unwrap();
    drop(client);
    close(store, server).await;

    // After a restart: from after the last ACK, the second customer's exit.
    let (store, server) = open(&dir, &clock).await;
    let client = Client::connect(&server.addr).await.unwrap();
    let mut email = client
        .subscribe("email", StreamFrom::Earliest, &["cart_abandoners".into()])
        .await
        .unwrap();
    let resumed = email.from;
    let after = take(&mut email, 1).await;
    assert_eq!(after, again[2..]);
    // A second connection with the name takes it over; the first is told and ends.
    let mut taker = client
        .subscribe("email", StreamFrom::Now, &["cart_abandoners".into()])
        .await
        .unwrap();
    assert_eq!(taker.from, resumed, "nothing was acknowledged since");
    let Err(taken) = email.next().await else {
        panic!("the connection taken over goes on streaming");
    };
    assert_eq!(taken.code(), Some(ErrorCode::SubscriptionState), "{taken}");
    assert!(
        taken
            .to_string()
            .contains("subscription `email` was taken over"),
        "{taken}"
    );
    assert_eq!(take(&mut taker, 1).await, after);
    taker.finish().await.unwrap();
    drop(email);
    drop(client);
    close(store, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_to_what_is_not_streamed_are_refused_with_what_is() {
    let dir = TempDir::new("subscribe", "refused");
    let clock = Arc::new(ManualClock::new(START_MS));
    let (store, server) = open(&dir, &clock).await;
    let client = Client::connect(&server.addr).await.unwrap();
    let refused = |segments: &[&str], from: StreamFrom| {
        let segments: Vec<String> = segments.iter().map(|s| s.to_string()).collect();
        let client = client.clone();
        async move {
            match client.subscribe("", from, &segments).await {
                Ok(_) => panic!("subscribed to {segments:?}"),
                Err(e) => (e.code(), e.to_string()),
            }
        }
    };
    let (code, message) = refused(&["high_value"], StreamFrom::Now).await;
    assert_eq!(code, Some(ErrorCode::NotStreamed));
    assert!(
        message.contains("segment `high_value` is not on the change stream"),
        "{message}"
    );
    assert!(
        message.contains("cart_abandoners, new_visitors"),
        "{message}"
    );
    let (code, message) = refused(&["nope"], StreamFrom::Now).await;
    assert_eq!(code, Some(ErrorCode::UnknownSegment), "{message}");
    let (code, message) = refused(&[], StreamFrom::Position(1_000_000)).await;
    assert_eq!(code, Some(ErrorCode::SubscriptionState), "{message}");
    assert!(message.contains("ahead of the change stream"), "{message}");
    // ACK on a connection that is not streaming.
    let Err(e) = client
        .request(&omnia::protocol::Request::Ack { position: 1 })
        .await
    else {
        panic!("an ACK outside a subscription was taken");
    };
    assert_eq!(e.code(), Some(ErrorCode::SubscriptionState), "{e}");
    // On a streaming connection, other requests are refused and the stream goes on.
    let mut all = client.subscribe("", StreamFrom::Now, &[]).await.unwrap();
    cart(&client, "anon:ada", clock.now_ms()).await;
    let first = take(&mut all, 1).await;
    assert_eq!(
        seen(&first),
        [("new_visitors", ChangeKind::Enter, "anon:ada")]
    );
    all.ack(first[0].position + 5).await.unwrap();
    let Err(e) = all.next().await else {
        panic!("an ACK beyond what was sent was taken");
    };
    assert_eq!(e.code(), Some(ErrorCode::SubscriptionState), "{e}");
    assert!(e.to_string().contains("was sent positions up to"), "{e}");
    all.finish().await.unwrap();
    drop(client);
    close(store, server).await;
}

/// A subscriber that does not read falls behind in the stream's files: the server
/// reads no further than it can send, so its memory holds one batch whatever the lag.
/// Once it reads, every change comes, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_falls_behind_and_then_misses_nothing() {
    let dir = TempDir::new("subscribe", "slow");
    let clock = Arc::new(ManualClock::new(START_MS));
    let (store, server) = open(&dir, &clock).await;
    let client = Client::connect(&server.addr).await.unwrap();
    // A socket that holds 16 KiB, so what is in flight is what the server sent.
    let mut slow = common::raw::Raw::with_receive_buffer(&server.addr, 16 << 10)
        .await
        .hello()
        .await;
    let subscribe = omnia::protocol::Request::Subscribe {
        name: "slow".into(),
        from: StreamFrom::Now,
        segments: vec![],
    };
    let reply = slow
        .request(
            omnia::protocol::opcode::SUBSCRIBE,
            2,
            subscribe.encode().unwrap(),
        )
        .await;
    let Response::Subscribed { from, .. } = Response::decode(reply.opcode, &reply.body).unwrap()
    else {
        panic!("SUBSCRIBE answered {reply:?}");
    };
    const N: usize = 60_000;
    for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
        let events = chunk
            .iter()
            .map(|i| {
                RawEvent::new("page_view", "web", clock.now_ms())
                    .key(&format!("anon:{i}"))
                    .prop("path", "/")
            })
            .collect();
        client.ingest(events).await.unwrap();
    }
    // Every change is in the stream's files…
    let stream = store.stream.clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        while stream.archived() < store.wal.durable_now() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // …but the server has sent only what the sockets hold (some 60 bytes a change,
    // besides the page views' own positions in between): a small part of the N changes.
    let sent = stream.subscribers();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (name, through) = sent[0].clone();
    assert_eq!(name, "slow");
    assert!(
        through < stream.archived(),
        "sent through {through} of {} (from {from})",
        stream.archived()
    );
    // Now it reads: all N, in order, none twice.
    let mut got: Vec<StreamedChange> = Vec::new();
    while got.len() < N {
        let frame = tokio::time::timeout(Duration::from_secs(10), slow.frame())
            .await
            .unwrap()
            .expect("a frame");
        match Response::decode(frame.opcode, &frame.body).unwrap() {
            Response::Changes { changes, .. } => got.extend(changes),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got.len(), N);
    assert!(got.windows(2).all(|w| w[0].position < w[1].position));
    let in_flight = got.iter().filter(|c| c.position <= through).count();
    assert!(
        in_flight < N / 2,
        "{in_flight} of {N} changes were sent before it read"
    );
    assert!(got
        .iter()
        .all(|c| c.kind == ChangeKind::Enter && c.segment == "new_visitors"));
    drop(slow);
    drop(client);
    close(store, server).await;
}
