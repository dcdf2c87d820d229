//! Crash recovery of the real server: several connections ingest, the process is killed
//! with SIGKILL at moments chosen by a seeded generator, restarted on the same data
//! directory, and killed again; in the end every acknowledged event is in the profiles.
//!
//! An event is known to be stored only once its batch is acknowledged; a batch in
//! flight at the kill may or may not have been logged. So for each customer the
//! recovered count is at least what was acknowledged and at most that plus what was in
//! flight, and every segment that reads the count agrees with it.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::binary::{serve_binary, Process};
use omnia::client::Client;
use omnia::engine::RawEvent;

const CONNECTIONS: usize = 3;
const KEYS_PER_CONNECTION: usize = 12;

/// How a round ends: how long ingest runs before the kill, and the snapshot interval.
#[derive(Clone, Copy)]
struct Rounds {
    count: u64,
    /// Milliseconds of ingest before a kill: `base` plus up to `spread`.
    base: u64,
    spread: u64,
    snapshot_interval: u64,
}

impl Rounds {
    /// Kills after 100 to 500 ms, no snapshots: recovery from the log alone.
    fn quick(count: u64) -> Rounds {
        Rounds {
            count,
            base: 100,
            spread: 400,
            snapshot_interval: 0,
        }
    }
}

/// Starts the server on the data directory; its log goes beside it.
fn start(data: &Path, fsync: &str, snapshot_interval: u64) -> (Process, String) {
    let interval = snapshot_interval.to_string();
    let options = ["--fsync", fsync, "--snapshot-interval", &interval];
    let options: Vec<&std::ffi::OsStr> = options.iter().map(std::ffi::OsStr::new).collect();
    serve_binary(data, &options)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Per key: events acknowledged, and events in flight when the connection broke.
#[derive(Default)]
struct Ledger {
    acked: HashMap<String, u64>,
    in_flight: HashMap<String, u64>,
}

/// Sends batches one at a time until the connection breaks.
async fn ingest_until_killed(
    addr: String,
    connection: usize,
    seed: u64,
    ledger: Arc<Mutex<Ledger>>,
) {
    let Ok(client) = Client::connect(&addr).await else {
        return;
    };
    let mut state = seed | 1;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    loop {
        let mut batch = Vec::new();
        let mut counts: HashMap<String, u64> = HashMap::new();
        for _ in 0..(1 + next(20)) {
            let key = format!("user:c{connection}-{}", next(KEYS_PER_CONNECTION as u64));
            *counts.entry(key.clone()).or_default() += 1;
            batch.push(RawEvent::new("page_view", "web", now_ms()).key(&key));
        }
        match client.ingest(batch).await {
            Ok(ack) => {
                assert!(ack.rejected.is_empty(), "{:?}", ack.rejected);
                let mut l = ledger.lock().unwrap();
                for (k, n) in counts {
                    *l.acked.entry(k).or_default() += n;
                }
            }
            Err(_) => {
                let mut l = ledger.lock().unwrap();
                for (k, n) in counts {
                    *l.in_flight.entry(k).or_default() += n;
                }
                return;
            }
        }
    }
}

async fn crash_rounds(data: &Path, fsync: &str, rounds: Rounds, seed: u64) {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    // Events in flight at a kill that did not make it are not in flight next round.
    let mut maybe: HashMap<String, u64> = HashMap::new();
    for round in 0..rounds.count {
        let (mut child, addr) = start(data, fsync, rounds.snapshot_interval);
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|c| {
                let (addr, ledger) = (addr.clone(), ledger.clone());
                tokio::spawn(ingest_until_killed(
                    addr,
                    c,
                    seed ^ (round << 8) ^ c as u64,
                    ledger,
                ))
            })
            .collect();
        let wait = rounds.base + (seed.wrapping_mul(round + 7) % rounds.spread);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        let in_flight = std::mem::take(&mut ledger.lock().unwrap().in_flight);
        for (k, n) in in_flight {
            *maybe.entry(k).or_default() += n;
        }
    }
    let acked_by_key = std::mem::take(&mut ledger.lock().unwrap().acked);
    assert!(
        acked_by_key.values().sum::<u64>() > 0,
        "nothing was acknowledged before the kills"
    );
    let (mut child, addr) = start(data, fsync, rounds.snapshot_interval);
    verify(&addr, &acked_by_key, &maybe, fsync).await;
    if rounds.snapshot_interval > 0 {
        // Once more from a snapshot for certain: wait for one, kill, start, verify.
        let deadline = Instant::now() + Duration::from_secs(30);
        while snapshot_files(data).is_empty() {
            assert!(Instant::now() < deadline, "no snapshot was taken");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            snapshot_files(data).len(),
            1,
            "only the newest snapshot is kept"
        );
        let (restarted, addr) = start(data, fsync, rounds.snapshot_interval);
        child = restarted;
        verify(&addr, &acked_by_key, &maybe, fsync).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The `.snap` files in the data directory.
fn snapshot_files(data: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data.join("snapshots"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "snap"))
                .collect()
        })
        .unwrap_or_default()
}

/// Every customer's count is at least what was acknowledged and at most that plus what
/// was in flight; segments agree with the count.
async fn verify(
    addr: &str,
    acked_by_key: &HashMap<String, u64>,
    maybe: &HashMap<String, u64>,
    fsync: &str,
) {
    let client = Client::connect(addr).await.unwrap();
    for c in 0..CONNECTIONS {
        for k in 0..KEYS_PER_CONNECTION {
            let key = format!("user:c{c}-{k}");
            let acked = acked_by_key.get(&key).copied().unwrap_or(0);
            let unsure = maybe.get(&key).copied().unwrap_or(0);
            let profile = client.profile(&key).await.unwrap();
            let count = profile
                .as_ref()
                .and_then(|p| p.aggregate("count(page_view on web, 1h)"))
                .unwrap_or(0.0) as u64;
            assert!(
                acked <= count && count <= acked + unsure,
                "{key}: {count} events recovered, {acked} acknowledged and {unsure} in flight at kills ({fsync})"
            );
            let engaged = profile
                .as_ref()
                .is_some_and(|p| p.in_segment("engaged_browsers"));
            assert_eq!(
                engaged,
                count > 5,
                "{key}: engaged_browsers with {count} page views"
            );
        }
    }
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> Dir {
    Dir(std::env::temp_dir().join(format!("omnia-crash-{name}-{}", std::process::id())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_fsync_always_loses_no_acknowledged_event() {
    let d = dir("always");
    crash_rounds(&d.0, "always", Rounds::quick(4), 0x5eed_0001).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_fsync_interval_loses_no_acknowledged_event() {
    let d = dir("interval");
    crash_rounds(&d.0, "interval", Rounds::quick(3), 0x5eed_0002).await;
}

/// Snapshots every second while rounds run 1.1 to 2 seconds: kills land before, during
/// and after snapshots, and recovery starts from a snapshot plus the log after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_snapshots_loses_no_acknowledged_event() {
    let d = dir("snapshots");
    let rounds = Rounds {
        count: 3,
        base: 1_100,
        spread: 900,
        snapshot_interval: 1,
    };
    crash_rounds(&d.0, "interval", rounds, 0x5eed_0003).await;
    assert!(!snapshot_files(&d.0).is_empty());
}
