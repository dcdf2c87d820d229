//! A full disk is a degraded mode, not a dead end: through the real server, with the
//! log's writes and syncs failing as on a full disk (injected, so the test needs no
//! filesystem of its own), under both `always` and `interval`:
//! - a change admitted just before the failure is kept and acknowledged once space is
//!   back; every change sent while the log fails is refused with STORAGE_FAILED and
//!   not applied (events, recorded impressions, accepts, budgets);
//! - reads go on throughout;
//! - when space comes back, writes resume without a restart;
//! - the live engine equals the one recovered from the log afterwards.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::observe::{compare, observe};
use common::{login, TempDir, TestServer, START_MS};
use omnia::client::{Client, ClientError};
use omnia::clock::ManualClock;
use omnia::config::{Config, FsyncPolicy};
use omnia::engine::{Journal, RawEvent};
use omnia::model::decision::{DecisionRequest, FeedbackKind, FeedbackTarget};
use omnia::node::Node;
use omnia::protocol::ErrorCode;
use omnia::store::wal::{Faults, WalOptions};
use omnia::store::{recover, Store};

fn wal_options(policy: FsyncPolicy, faults: &Arc<Faults>) -> WalOptions {
    WalOptions {
        faults: Some(faults.clone()),
        policy,
        interval: Duration::from_millis(5),
        segment_bytes: 1 << 20,
    }
}

fn storage_failed(result: Result<impl std::fmt::Debug, ClientError>) {
    match result {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::StorageFailed), "{e}"),
        Ok(v) => panic!("expected STORAGE_FAILED, got {v:?}"),
    }
}

fn decision(key: &str, channel: &str, record: bool) -> DecisionRequest {
    DecisionRequest {
        key: key.into(),
        channel: channel.into(),
        top: 3,
        record_impression: record,
        explain: false,
        context: Vec::new(),
    }
}

/// Polls until `what` holds (the log notices a failure when it next writes).
async fn until(what: impl Fn() -> bool) {
    for _ in 0..500 {
        if what() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the condition never held");
}

#[tokio::test]
async fn a_full_disk_refuses_changes_without_applying_them_and_writes_resume_without_a_restart() {
    for policy in [FsyncPolicy::Always, FsyncPolicy::Interval] {
        full_disk(policy).await;
    }
}

async fn full_disk(policy: FsyncPolicy) {
    let dir = TempDir::new("full-disk", policy.name());
    let clock = Arc::new(ManualClock::new(START_MS));
    let faults = Arc::new(Faults::default());
    let Store {
        data,
        node: engine,
        wal,
        ..
    } = Store::open(
        &dir.0,
        Config::embedded_default().unwrap(),
        clock.clone(),
        wal_options(policy, &faults),
    )
    .unwrap();
    let server = TestServer::serve(engine.clone(), clock.clone(), Default::default()).await;
    let client = Client::connect(&server.addr).await.unwrap();

    // Before: customers with carts, a decision with a recorded impression.
    let logins: Vec<RawEvent> = (0..20).map(|i| login(i, "web", START_MS)).collect();
    assert_eq!(client.ingest(logins).await.unwrap().accepted, 20);
    client
        .decide(decision("user:1", "email", true))
        .await
        .unwrap();

    // The disk fills. The next change is admitted (the log does not know yet) and its
    // acknowledgement waits; the log notices when it tries to store it. (On a
    // connection of its own: replies come in request order, so the requests after it on
    // its connection wait with it.)
    faults.full.store(true, Ordering::SeqCst);
    let admitted = {
        let client = Client::connect(&server.addr).await.unwrap();
        tokio::spawn(async move {
            client
                .ingest(vec![RawEvent::new("purchase", "store", START_MS)
                    .key("user:2")
                    .prop("amount", 300.0)])
                .await
        })
    };
    until(|| !wal.is_healthy()).await;
    let applied = engine.stats().events_applied;
    let offers_before = feedback_counts(&engine);
    let before = observe(&engine, 20);

    // Every change is refused, whole, and nothing of it applied.
    storage_failed(
        client
            .ingest(vec![RawEvent::new("purchase", "store", START_MS)
                .key("user:3")
                .prop("amount", 900.0)])
            .await,
    );
    storage_failed(
        client
            .ingest_json(
                r#"{"type":"track","event":"page_view","userId":"4","context":{"channel":"web"}}"#,
            )
            .await,
    );
    storage_failed(client.decide(decision("user:5", "email", true)).await);
    storage_failed(
        client
            .feedback(
                FeedbackKind::Accept,
                FeedbackTarget::Customer {
                    key: "user:6".into(),
                    offer: "welcome_discount".into(),
                    channel: "store".into(),
                },
            )
            .await,
    );
    // Reads go on: profiles, segments, decisions that record nothing, stats.
    assert!(client.profile("user:3").await.unwrap().is_some());
    client
        .decide(decision("user:5", "email", false))
        .await
        .unwrap();
    client.stats().await.unwrap();
    assert_eq!(engine.stats().events_applied, applied);
    assert_eq!(feedback_counts(&engine), offers_before);
    compare(&before, &observe(&engine, 20));

    // Space comes back: the kept change is stored and acknowledged, and writes resume.
    faults.full.store(false, Ordering::SeqCst);
    let ack = tokio::time::timeout(Duration::from_secs(30), admitted)
        .await
        .expect("the admitted change is acknowledged once the log stores it")
        .unwrap()
        .unwrap();
    assert_eq!(ack.accepted, 1);
    until(|| wal.is_healthy()).await;
    let more: Vec<RawEvent> = (20..30).map(|i| login(i, "app", START_MS)).collect();
    assert_eq!(client.ingest(more).await.unwrap().accepted, 10);
    client
        .decide(decision("user:5", "email", true))
        .await
        .unwrap();
    client
        .feedback(
            FeedbackKind::Accept,
            FeedbackTarget::Customer {
                key: "user:1".into(),
                offer: "welcome_discount".into(),
                channel: "store".into(),
            },
        )
        .await
        .unwrap();

    // What the live engine shows is what the log holds.
    drop(client);
    server.shutdown().await;
    wal.durable(wal.last_appended()).await.unwrap();
    wal.close();
    let again = Node::new(Config::embedded_default().unwrap(), clock.clone());
    recover(&data, &again).unwrap();
    assert_eq!(feedback_counts(&engine), feedback_counts(&again));
    compare(&observe(&engine, 30), &observe(&again, 30));
}

/// Feedback counted per offer, channel and arm: what the log records (decisions that
/// record nothing are counted in memory only).
fn feedback_counts(engine: &Node) -> Vec<String> {
    engine
        .offer_stats()
        .into_iter()
        .filter(|o| o.impressions + o.clicks + o.accepts + o.dismisses > 0)
        .map(|o| {
            format!(
                "{} {} {:?} {:?}: {} {} {} {}",
                o.offer,
                o.channel,
                o.experiment,
                o.arm,
                o.impressions,
                o.clicks,
                o.accepts,
                o.dismisses
            )
        })
        .collect()
}
