//! Every reply waits for exactly the log records of its own request: through the real
//! server, under `fsync = always` on a slow disk (each sync takes 5 s, injected), a
//! read-only request is answered at once while other connections' ingests wait for
//! their sync, and an acknowledgement still waits for its own.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{TempDir, TestServer, START_MS};
use omnia::client::Client;
use omnia::clock::ManualClock;
use omnia::config::{Config, FsyncPolicy};
use omnia::engine::RawEvent;
use omnia::store::wal::{Faults, WalOptions};
use omnia::store::Store;

// Two worker threads, so that one connection's read runs while another's ingest appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_request_waits_for_no_one_elses_sync() {
    let dir = TempDir::new("durable-replies", "slow-sync");
    let clock = Arc::new(ManualClock::new(START_MS));
    let faults = Arc::new(Faults::default());
    let Store {
        node: engine, wal, ..
    } = Store::open(
        &dir.0,
        Config::embedded_default().unwrap(),
        clock.clone(),
        WalOptions {
            faults: Some(faults.clone()),
            policy: FsyncPolicy::Always,
            interval: Duration::from_millis(5),
            segment_bytes: 1 << 20,
        },
    )
    .unwrap();
    let server = TestServer::serve(engine.clone(), clock, Default::default()).await;
    let reader = Client::connect(&server.addr).await.unwrap();
    let page_view = |key: &str| RawEvent::new("page_view", "web", START_MS).key(key);
    // 12,000 new visitors, so that a page of 10,000 members takes a while to answer.
    for chunk in 0..12 {
        let events = (0..1_000)
            .map(|i| page_view(&format!("anon:v{chunk}-{i}")))
            .collect();
        reader.ingest(events).await.unwrap();
    }

    // From now on every sync takes 5 s. Two hundred other connections send an ingest
    // each, a millisecond apart: the log moves all the while, and their
    // acknowledgements wait for the slow sync.
    faults.sync_delay_ms.store(5_000, Ordering::SeqCst);
    let before = wal.last_appended();
    assert_eq!(wal.durable_now(), before);
    let mut writes = Vec::new();
    for i in 0..200 {
        let writer = Client::connect(&server.addr).await.unwrap();
        writes.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i)).await;
            writer.ingest(vec![page_view(&format!("user:w{i}"))]).await
        }));
    }
    while wal.last_appended() == before {
        tokio::task::yield_now().await;
    }

    // Reads handled while the log moves are answered before any of those records is
    // stored: none of them waited for the sync.
    for _ in 0..10 {
        let (members, _) = reader
            .segment_members("new_visitors", 0, 10_000)
            .await
            .unwrap();
        assert_eq!(members.len(), 10_000);
        assert!(reader.profile("anon:v0-0").await.unwrap().is_some());
    }
    assert!(wal.last_appended() > before + 1, "the log moved meanwhile");
    assert_eq!(
        wal.durable_now(),
        before,
        "the reads were answered before the writers' first sync completed"
    );
    // An acknowledgement waits for its own record: stored once it is answered.
    faults.sync_delay_ms.store(0, Ordering::SeqCst);
    let ack = reader.ingest(vec![page_view("user:2")]).await.unwrap();
    assert_eq!(ack.accepted, 1);
    assert!(wal.durable_now() > before);
    for w in writes {
        assert_eq!(w.await.unwrap().unwrap().accepted, 1);
    }
    server.shutdown().await;
    wal.close();
}
