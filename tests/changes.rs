//! The change stream in the write-ahead log: what `[triggers] stream` records, in what
//! order, and that recovery reads it back.

use std::path::Path;
use std::sync::Arc;

use omnia::clock::{Clock, ManualClock};
use omnia::config::{Config, Source};
use omnia::engine::RawEvent;
use omnia::model::{Cause, Change, ChangeKind};
use omnia::store::Store;

mod common;
use common::{unsynced_wal, TempDir};

const START_MS: i64 = 1_750_000_000_000;

fn config() -> Config {
    let text = format!(
        "{}\n[triggers]\nstream = [\"cart_abandoners\", \"new_visitors\"]\n",
        common::default_config_without_triggers()
    );
    Config::from_source(&Source::new("changes.toml", text)).unwrap_or_else(|e| panic!("{e}"))
}

/// Every record of the log in `data`, as (sequence, kind, body).
fn records(data: &Path) -> Vec<(u64, u8, Vec<u8>)> {
    let mut out = Vec::new();
    for (_, path) in omnia::store::segments(&data.join("wal")).unwrap() {
        let bytes = std::fs::read(path).unwrap();
        let mut at = 0;
        while at + 8 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let payload = &bytes[at + 8..at + 8 + len];
            let sequence = u64::from_le_bytes(payload[..8].try_into().unwrap());
            out.push((sequence, payload[8], payload[9..].to_vec()));
            at += 8 + len;
        }
    }
    out
}

fn changes(data: &Path) -> Vec<(u64, Change)> {
    records(data)
        .into_iter()
        .filter(|(_, kind, _)| *kind == omnia::engine::journal::kind::CHANGE)
        .map(|(sequence, _, body)| (sequence, omnia::engine::changes::decode(&body).unwrap()))
        .collect()
}

#[test]
fn recorded_segments_log_their_changes_after_their_causes_and_recovery_reads_them() {
    let dir = TempDir::new("changes", "log");
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = Store::open(&dir.0, config(), clock.clone(), unsynced_wal()).unwrap();
    let node = store.node.clone();
    node.ingest(&RawEvent::new("add_to_cart", "web", clock.now_ms()).key("anon:sofia"))
        .unwrap();
    // Half an hour later the timer lets her into cart_abandoners; a count runs it.
    clock.advance_secs(31 * 60);
    assert_eq!(node.segment_count("cart_abandoners").unwrap(), 1);
    node.ingest(
        &RawEvent::new("purchase", "app", clock.now_ms())
            .key("anon:sofia")
            .prop("amount", 80.0),
    )
    .unwrap();
    // high_value is not on the stream: nothing is recorded for it.
    let id = node.engine().customer_of("anon:sofia").unwrap();
    store.close().unwrap();

    let logged = changes(&dir.0);
    let seen: Vec<(&str, ChangeKind, Cause, &str)> = logged
        .iter()
        .map(|(_, c)| (c.segment.as_str(), c.kind, c.cause, c.event.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                "new_visitors",
                ChangeKind::Enter,
                Cause::Event,
                "add_to_cart"
            ),
            ("cart_abandoners", ChangeKind::Enter, Cause::Time, ""),
            (
                "cart_abandoners",
                ChangeKind::Exit,
                Cause::Event,
                "purchase"
            ),
            ("new_visitors", ChangeKind::Exit, Cause::Event, "purchase"),
        ]
    );
    assert!(logged.iter().all(|(_, c)| c.customer == id));
    assert_eq!(logged[1].1.time as i64, START_MS / 1000 + 31 * 60);
    // Each change comes after the record of the event that caused it.
    let all = records(&dir.0);
    let kind_before = |sequence: u64| all.iter().find(|r| r.0 == sequence - 1).unwrap().1;
    assert_eq!(
        kind_before(logged[0].0),
        omnia::engine::journal::kind::EVENT
    );
    assert_eq!(
        kind_before(logged[2].0),
        omnia::engine::journal::kind::EVENT
    );

    // Recovery reads the change records (and changes nothing by them).
    let again = Store::open(&dir.0, config(), clock.clone(), unsynced_wal()).unwrap();
    assert_eq!(again.node.segment_count("cart_abandoners").unwrap(), 0);
    assert_eq!(again.node.segment_count("high_value").unwrap(), 0);
    assert_eq!(again.node.stats().customers, 1);
    again.close().unwrap();
}

#[test]
fn a_stream_that_names_no_segment_is_refused_with_the_segments_listed() {
    let text = format!(
        "{}\n[triggers]\nstream = [\"cart_abandoners\", \"cart_abandoner\", \"cart_abandoners\"]\nretention = \"a week\"\n",
        common::default_config_without_triggers()
    );
    let Err(error) = Config::from_source(&Source::new("bad.toml", text)) else {
        panic!("a config with a bad stream was accepted");
    };
    let error = error.to_string();
    assert!(
        error.contains("triggers.stream names `cart_abandoner`, which is not a segment"),
        "{error}"
    );
    assert!(
        error.contains("the segments are: cart_abandoners, new_visitors"),
        "{error}"
    );
    assert!(
        error.contains("segment `cart_abandoners` is listed twice in triggers.stream"),
        "{error}"
    );
    assert!(
        error.contains("bad duration for triggers.retention"),
        "{error}"
    );
    assert!(error.contains("bad.toml:"), "{error}");
}

/// Applies `changes` to one set per segment, as a subscriber would, checking that each
/// enter is of a non-member and each exit of a member.
fn replayed(changes: &[(u64, Change)]) -> std::collections::HashMap<String, Vec<u32>> {
    let mut sets: std::collections::HashMap<String, std::collections::BTreeSet<u32>> =
        Default::default();
    for (_, c) in changes {
        let set = sets.entry(c.segment.clone()).or_default();
        match c.kind {
            ChangeKind::Enter => assert!(set.insert(c.customer), "{c:?} of a member"),
            ChangeKind::Exit => assert!(set.remove(&c.customer), "{c:?} of a non-member"),
            ChangeKind::Reset => set.clear(),
        }
    }
    sets.into_iter()
        .map(|(k, v)| (k, v.into_iter().collect()))
        .collect()
}

/// Members of each segment, by name.
type Members = std::collections::HashMap<String, Vec<u32>>;

/// Closes `store` (so the log writer has written every record) and returns the change
/// records in `data` with the members of each of `segments` at the close.
fn close_and_read(store: Store, segments: &[&str], data: &Path) -> (Vec<(u64, Change)>, Members) {
    let now = segments
        .iter()
        .map(|s| (s.to_string(), members(&store.node, s)))
        .collect();
    store.close().unwrap();
    (changes(data), now)
}

fn members(node: &omnia::node::Node, segment: &str) -> Vec<u32> {
    let query = node.engine().query(segment).unwrap();
    node.engine()
        .members(&query, 0, 1000)
        .members
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// Replay applies events at the time of the replay: a cart logged before a stop and
/// replayed after its half hour is in cart_abandoners at once, with no timer to see it
/// happen. Recovery records what the stream missed, and a segment newly on the stream
/// starts with a reset and its members.
#[test]
fn recovery_records_what_the_stream_missed_and_a_new_segment_starts_over() {
    let dir = TempDir::new("changes", "recovery");
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = Store::open(&dir.0, config(), clock.clone(), unsynced_wal()).unwrap();
    for who in ["anon:sofia", "anon:noor"] {
        store
            .node
            .ingest(&RawEvent::new("add_to_cart", "web", clock.now_ms()).key(who))
            .unwrap();
    }
    omnia::store::snapshot::write(&store.data, &store.node).unwrap();
    store
        .node
        .ingest(
            &RawEvent::new("purchase", "app", clock.now_ms())
                .key("anon:noor")
                .prop("amount", 600.0),
        )
        .unwrap();
    store.close().unwrap();

    clock.advance_secs(31 * 60);
    let store = Store::open(&dir.0, config(), clock.clone(), unsynced_wal()).unwrap();
    assert_eq!(store.recovered.stream_changes, 1, "{}", store.recovered);
    let sofia = store.node.engine().customer_of("anon:sofia").unwrap();
    let (logged, now) = close_and_read(store, &["cart_abandoners", "new_visitors"], &dir.0);
    let (_, last) = logged.last().unwrap();
    assert_eq!(
        (last.segment.as_str(), last.kind, last.cause, last.customer),
        ("cart_abandoners", ChangeKind::Enter, Cause::Recovery, sofia)
    );
    assert_eq!(replayed(&logged), now);

    // high_value joins the stream: it starts with a reset and Noor, its member.
    let text = format!(
        "{}\n[triggers]\nstream = [\"cart_abandoners\", \"new_visitors\", \"high_value\"]\n",
        common::default_config_without_triggers()
    );
    let wider = Config::from_source(&Source::new("changes.toml", text)).unwrap();
    let store = Store::open(&dir.0, wider, clock.clone(), unsynced_wal()).unwrap();
    let noor = store.node.engine().customer_of("anon:noor").unwrap();
    let segments = ["cart_abandoners", "new_visitors", "high_value"];
    let (logged, now) = close_and_read(store, &segments, &dir.0);
    let tail: Vec<_> = logged
        .iter()
        .rev()
        .take(2)
        .rev()
        .map(|(_, c)| (c.segment.as_str(), c.kind, c.customer))
        .collect();
    assert_eq!(
        tail,
        [
            ("high_value", ChangeKind::Reset, 0),
            ("high_value", ChangeKind::Enter, noor)
        ]
    );
    assert_eq!(replayed(&logged), now);
    // A start with nothing missed records nothing.
    let store = Store::open(&dir.0, config(), clock.clone(), unsynced_wal()).unwrap();
    assert_eq!(store.recovered.stream_changes, 0, "{}", store.recovered);
    store.close().unwrap();
}

/// The stream's files hold every change the log stored, at the log's positions, once:
/// through a restart, and after losing the files (they are copied again from the log).
#[test]
fn the_stream_files_hold_every_change_once_at_its_log_position() {
    let dir = TempDir::new("changes", "files");
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = Store::open(&dir.0, config(), clock.clone(), unsynced_wal()).unwrap();
    for i in 0..20 {
        let who = format!("anon:{i}");
        store
            .node
            .ingest(&RawEvent::new("add_to_cart", "web", clock.now_ms()).key(&who))
            .unwrap();
    }
    clock.advance_secs(31 * 60);
    assert_eq!(store.node.segment_count("cart_abandoners").unwrap(), 20);
    let stream = store.stream.clone();
    store.close().unwrap();
    let logged = changes(&dir.0);
    assert_eq!(logged.len(), 40);
    assert_eq!(read_all(&stream, 1), logged);
    // From a position inside: that position on.
    assert_eq!(read_all(&stream, logged[25].0), logged[25..]);

    let store = Store::open(&dir.0, config(), clock.clone(), unsynced_wal()).unwrap();
    assert_eq!(read_all(&store.stream, 1), logged);
    store.close().unwrap();

    // The files lost (a crash before they were synced): copied again from the log.
    std::fs::remove_dir_all(dir.0.join("changes")).unwrap();
    let store = Store::open(&dir.0, config(), clock.clone(), unsynced_wal()).unwrap();
    assert_eq!(read_all(&store.stream, 1), logged);
    store.close().unwrap();
}

/// Files go once every change in them is past the retention; a reader from before the
/// files is told so, and the log's files go only up to what the stream has synced.
#[test]
fn retention_removes_old_files_and_a_reader_from_before_them_is_told() {
    let dir = TempDir::new("changes", "retention");
    let text = format!(
        "{}\n[triggers]\nstream = [\"new_visitors\"]\nretention = \"1h\"\n",
        common::default_config_without_triggers()
    );
    let config = Config::from_source(&Source::new("changes.toml", text)).unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = Store::open(&dir.0, config, clock.clone(), unsynced_wal()).unwrap();
    let visit = |who: &str| {
        store
            .node
            .ingest(&RawEvent::new("page_view", "web", clock.now_ms()).key(who))
            .unwrap();
        store.wal.wait_durable(store.wal.last_appended()).unwrap();
        store.stream.upkeep(&store.wal);
    };
    visit("anon:a");
    let first = read_all(&store.stream, 1);
    assert_eq!(first.len(), 1);
    // Files roll every eighth of the retention (at least a minute): 450 s.
    clock.advance_secs(500);
    visit("anon:b");
    clock.advance_secs(3000);
    store.stream.upkeep(&store.wal);
    assert_eq!(
        read_all(&store.stream, 1).len(),
        2,
        "kept: the second file is not an hour old"
    );
    // An hour after the second file was begun, every change in the first is older.
    clock.advance_secs(600);
    store.stream.upkeep(&store.wal);
    let kept = read_all(&store.stream, first[0].0 + 1);
    assert_eq!(kept.len(), 1);
    let Err(error) = store.stream.reader(1) else {
        panic!("a reader from a removed position was given one");
    };
    let error = error.to_string();
    assert!(error.contains("position 1 is no longer kept"), "{error}");
    assert!(error.contains("retention 1h"), "{error}");
    assert_eq!(store.stream.earliest(), first[0].0 + 1);
    store.close().unwrap();
}

fn read_all(stream: &Arc<omnia::store::stream::Stream>, from: u64) -> Vec<(u64, Change)> {
    let mut reader = stream.reader(from).unwrap();
    let mut out = Vec::new();
    loop {
        let batch = reader.read(7).unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}
