//! The write-ahead log and recovery through the library: what is logged comes back, a
//! torn write at the end is cut, corruption anywhere else stops the start with the file
//! and the offset, and a data directory of another format is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use omnia::clock::SystemClock;
use omnia::config::{Config, FsyncPolicy};
use omnia::engine::RawEvent;
use omnia::node::Node;
use omnia::store::wal::WalOptions;
use omnia::store::{open_data_dir, recover, DataDir, Store, StoreError, FORMAT};

mod common;
use common::TempDir;

fn dir(name: &str) -> TempDir {
    TempDir::new("durability", name)
}

fn engine() -> Node {
    Node::new(Config::embedded_default().unwrap(), Arc::new(SystemClock))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Logs `n` page views of `user:1` through an engine with a log attached.
async fn write_log(data: &Path, n: usize, policy: FsyncPolicy) -> DataDir {
    let node = Store::open(
        data,
        Config::embedded_default().unwrap(),
        Arc::new(SystemClock),
        WalOptions {
            faults: None,
            policy,
            interval: Duration::from_millis(5),
            segment_bytes: 1 << 20,
        },
    )
    .unwrap();
    for _ in 0..n {
        node.node
            .ingest(&RawEvent::new("page_view", "web", now_ms()).key("user:1"))
            .unwrap();
    }
    node.wal.durable(node.wal.last_appended()).await.unwrap();
    let data = node.data.clone();
    node.close().unwrap();
    data
}

fn views(e: &Node) -> f64 {
    e.profile("user:1")
        .and_then(|p| p.aggregate("count(page_view on web, 1h)"))
        .unwrap_or(0.0)
}

fn only_segment(data: &DataDir) -> PathBuf {
    let files = omnia::store::segments(&data.wal()).unwrap();
    assert_eq!(files.len(), 1);
    files[0].1.clone()
}

#[tokio::test]
async fn what_is_logged_comes_back_and_appending_continues() {
    let d = dir("roundtrip");
    for policy in [
        FsyncPolicy::Always,
        FsyncPolicy::Interval,
        FsyncPolicy::Never,
    ] {
        let _ = std::fs::remove_dir_all(&d.0);
        let wal_dir = write_log(&d.0, 5, policy).await;
        let e = engine();
        let r = recover(&wal_dir, &e).unwrap();
        assert_eq!(
            (r.events, r.last_sequence, r.truncated.clone()),
            (5, 5, None)
        );
        assert_eq!(views(&e), 5.0, "{policy:?}");
        // A second run appends after the first, and both come back.
        write_log(&d.0, 3, policy).await;
        let e = engine();
        let r = recover(&wal_dir, &e).unwrap();
        assert_eq!((r.events, r.segments), (8, 2));
        assert_eq!(views(&e), 8.0);
    }
}

#[tokio::test]
async fn a_torn_write_at_the_end_is_cut_and_reported() {
    let d = dir("torn");
    let wal_dir = write_log(&d.0, 4, FsyncPolicy::Always).await;
    let file = only_segment(&wal_dir);
    let full = std::fs::metadata(&file).unwrap().len();
    // A crash in the middle of writing the last record: 7 bytes of it are missing.
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(full - 7).unwrap();
    let e = engine();
    let r = recover(&wal_dir, &e).unwrap();
    assert_eq!(r.events, 3);
    let record = full / 4;
    assert_eq!(r.truncated, Some((file.clone(), 3 * record, record - 7)));
    assert!(r.to_string().contains("cut a torn write"), "{r}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        3 * record,
        "the tail is gone"
    );
    assert_eq!(views(&e), 3.0);
    // Garbage after the last whole record is a torn write too.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &[0xAB; 5]))
        .unwrap();
    let r = recover(&wal_dir, &engine()).unwrap();
    assert_eq!((r.events, r.truncated.map(|t| t.2)), (3, Some(5)));
}

#[tokio::test]
async fn corruption_before_the_end_stops_the_start_with_the_file_and_offset() {
    let d = dir("corrupt");
    let wal_dir = write_log(&d.0, 4, FsyncPolicy::Always).await;
    let file = only_segment(&wal_dir);
    let mut bytes = std::fs::read(&file).unwrap();
    let record = bytes.len() / 4;
    // Flip a byte inside the second record's payload.
    bytes[record + 20] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let err = recover(&wal_dir, &engine()).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { offset, .. } if offset == record as u64),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "{}, byte {record}: checksum mismatch.",
            file.display()
        )),
        "{message}"
    );
    assert!(
        message.contains(&format!("truncate the file to {record} bytes")),
        "{message}"
    );
    // Nothing was cut: the operator decides.
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
}

#[tokio::test]
async fn a_missing_log_file_is_a_gap() {
    let d = dir("gap");
    write_log(&d.0, 2, FsyncPolicy::Never).await;
    write_log(&d.0, 2, FsyncPolicy::Never).await;
    let wal_dir = write_log(&d.0, 2, FsyncPolicy::Never).await;
    let files = omnia::store::segments(&wal_dir.wal()).unwrap();
    std::fs::remove_file(&files[1].1).unwrap();
    let err = recover(&wal_dir, &engine()).unwrap_err();
    assert!(
        err.to_string()
            .contains("the file starts at record 5, but record 3 comes next"),
        "{err}"
    );
}

#[test]
fn data_directories_of_another_format_or_none_are_refused() {
    let d = dir("format");
    std::fs::create_dir_all(&d.0).unwrap();
    std::fs::write(d.0.join("notes.txt"), "mine").unwrap();
    let err = open_data_dir(&d.0).unwrap_err();
    assert!(
        err.to_string()
            .contains("has no FORMAT file, so it is not an omnia data directory"),
        "{err}"
    );
    std::fs::write(d.0.join("FORMAT"), "omnia data directory, format 9\n").unwrap();
    let err = open_data_dir(&d.0).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} was written by an incompatible version of omnia (its FORMAT says `omnia data directory, format 9`, this version writes `{FORMAT}`); start the version that wrote it, or use another --data-dir",
            d.0.display()
        )
    );
    let fresh = dir("fresh");
    open_data_dir(&fresh.0).unwrap();
    assert_eq!(
        std::fs::read_to_string(fresh.0.join("FORMAT")).unwrap(),
        format!("{FORMAT}\n")
    );
}

/// Records an earlier version accepted replay even where a new event would now be
/// refused: a time before 2001 (which new events get as "looks like seconds"), and a
/// value beyond `engine.max_value_bytes`.
#[tokio::test]
async fn records_accepted_before_todays_limits_still_replay() {
    let d = dir("older-limits");
    let node = Store::open(
        &d.0,
        Config::embedded_default().unwrap(),
        Arc::new(SystemClock),
        WalOptions {
            faults: None,
            policy: FsyncPolicy::Never,
            interval: Duration::from_millis(5),
            segment_bytes: 1 << 20,
        },
    )
    .unwrap();
    let in_1999 = RawEvent::new("page_view", "web", 915_148_800_000).key("user:old");
    let long = RawEvent::new("identify", "web", now_ms())
        .key("user:long")
        .attr("country", "x".repeat(10_000).as_str());
    // As an earlier version logged them; today's ingest refuses both.
    assert!(node.node.ingest(&in_1999).is_err());
    assert!(node.node.ingest(&long).is_err());
    node.wal.append_event(&in_1999);
    node.wal.append_event(&long);
    let data = node.data.clone();
    node.close().unwrap();
    let again = engine();
    let recovered = recover(&data, &again).unwrap();
    assert_eq!(recovered.events, 2);
    assert!(again.profile("user:old").is_some());
    assert_eq!(
        again.profile("user:long").unwrap().attribute("country"),
        Some(&omnia::model::RawValue::Str("x".repeat(10_000)))
    );
}
