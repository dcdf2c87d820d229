//! A data directory written by an earlier omnia loads in this one with everything it
//! holds. Each fixture is a data directory written from the journey in [`history`]: 300
//! customers whose cookies merge into accounts, carts, purchases, e-mail opens, decisions
//! with recorded impressions, accepts that spend a small budget to the end, dismissals; a
//! snapshot in the middle and log records after it. This code must recover from each
//! exactly what replaying the same history into a fresh engine gives: profiles,
//! segments, decisions with their explanations (caps, stickiness, cooldowns, coupons,
//! budgets), offer counters; and leave the directory in today's format.
//!
//! - `tests/fixtures/format2/`: format 2 (snapshot format 2; log records EVENT and
//!   OFFER_ACTION, an action as two records), written by omnia 0.1.0 at commit 1188667;
//! - `tests/fixtures/format3/`: format 3 (snapshot format 2; log records EVENT and
//!   ACTION, an action as one record), written at the commit that introduced format 3;
//! - `tests/fixtures/format4/`: format 4 (snapshot format 3, with its message id table;
//!   log records EVENT and ACTION), written at commit 5fca3a6, the last of format 4;
//! - `tests/fixtures/format6/`: format 6 (snapshot format 4, with its suppression list;
//!   log records EVENT and ACTION, an empty change stream), written at commit de7d08b,
//!   the last of format 6;
//! - `tests/fixtures/format7/`: format 7 (snapshot format 5, with exposures; log records
//!   EVENT and ACTION; coupon codes of the old form, eight characters of a hash), written
//!   at commit 5260df1, the last of format 7.
//!
//! If a format changes, the new code must still read (or migrate) these directories;
//! fixtures are never rewritten. `OMNIA_WRITE_FIXTURE=DIR cargo test --test
//! backward_compatibility` writes a new one into DIR, for a future format's fixture.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::observe::{compare, decide, event, observe};
use common::{copy_dir, unsynced_wal, TempDir};
use omnia::clock::ManualClock;
use omnia::config::{Config, Source};
use omnia::model::decision::{FeedbackKind, FeedbackTarget};
use omnia::node::Node;
use omnia::store::{snapshot, Store};

const CUSTOMERS: usize = 300;
/// Monday 2 March 2026, 10:00 UTC.
const START: i64 = 1_772_445_600_000;

fn fixture(format: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/format{format}"))
}

/// The default config with a budget small enough to run out: 40 accepts of
/// `welcome_discount`. Every fixture holds the same file.
fn config() -> Config {
    let text = std::fs::read_to_string(fixture(2).join("config.toml")).unwrap();
    Config::from_source(&Source::new("config.toml", text)).unwrap_or_else(|e| panic!("{e}"))
}

/// What happened, in order; `snapshot` is called once, half-way. Returns the time at
/// the end.
fn history(engine: &Node, clock: &ManualClock, mut snapshot: impl FnMut()) -> i64 {
    let mut now = START;
    for step in 0..6 {
        for i in 0..CUSTOMERS {
            engine.ingest(&event(i, step, now)).unwrap();
        }
        now += 10 * 60_000;
        clock.set_ms(now);
        for i in (step..CUSTOMERS).step_by(7) {
            let key = format!("user:{i}");
            let _ = decide(engine, &key, "email", true);
            let target = FeedbackTarget::Customer {
                key: key.clone(),
                offer: "welcome_discount".into(),
                channel: "web".into(),
            };
            let kind = match i % 3 {
                0 => FeedbackKind::Accept,
                1 => FeedbackKind::Dismiss,
                _ => FeedbackKind::Click,
            };
            // Accepts beyond the budget are refused; that is part of the history.
            let _ = engine.feedback(kind, &target);
        }
        if step == 2 {
            snapshot();
        }
    }
    now
}

/// The record kinds (payload byte 8) of every record in the fixture's log files.
fn record_kinds(data: &Path) -> std::collections::BTreeSet<u8> {
    let mut kinds = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(data.join("wal")).unwrap() {
        let file = std::fs::read(entry.unwrap().path()).unwrap();
        let mut at = 0;
        while at + 17 <= file.len() {
            let len = u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) as usize;
            kinds.insert(file[at + 16]);
            at += 8 + len;
        }
    }
    kinds
}

#[test]
fn a_format_2_data_directory_loads_with_everything_it_holds() {
    if let Ok(dir) = std::env::var("OMNIA_WRITE_FIXTURE") {
        write_fixture(Path::new(&dir));
    }
    loads(2, [1, 2]);
}

#[test]
fn a_format_3_data_directory_loads_with_everything_it_holds() {
    loads(3, [1, 3]);
}

#[test]
fn a_format_4_data_directory_loads_with_everything_it_holds() {
    loads(4, [1, 3]);
}

#[test]
fn a_format_6_data_directory_loads_with_everything_it_holds() {
    loads(6, [1, 3]);
}

#[test]
fn a_format_7_data_directory_loads_with_everything_it_holds() {
    loads(7, [1, 3]);
}

/// Recovers a copy of fixture `format`, whose log holds records of `kinds`.
fn loads(format: u32, kinds: [u8; 2]) {
    // Recovery may cut a torn tail or start a log file: work on a copy.
    let copy = TempDir::new("backward-compatibility", &format!("format{format}"));
    let data = copy.0.join("data");
    copy_dir(&fixture(format).join("data"), &data);
    let format_line = |data: &Path| std::fs::read_to_string(data.join("FORMAT")).unwrap();
    assert_eq!(
        format_line(&data),
        format!("omnia data directory, format {format}\n")
    );
    assert_eq!(
        record_kinds(&data),
        kinds.into(),
        "the fixture's record kinds"
    );

    let expected_clock = Arc::new(ManualClock::new(START));
    let expected = Node::new(config(), expected_clock.clone());
    let end = history(&expected, &expected_clock, || {});

    let clock = Arc::new(ManualClock::new(end));
    let node = Store::open(&data, config(), clock.clone(), unsynced_wal()).unwrap();
    assert!(
        node.recovered.snapshot.is_some(),
        "the fixture has a snapshot: {}",
        node.recovered
    );
    assert!(
        node.recovered.events > 0,
        "and log records after it: {}",
        node.recovered
    );
    let loaded = &node.node;

    // Hard facts of the history, so a mistake both engines share still fails.
    assert_eq!(loaded.stats().customers, CUSTOMERS as u64);
    let accepts: u64 = loaded
        .offer_stats()
        .iter()
        .filter(|o| o.offer == "welcome_discount" && o.experiment.is_none())
        .map(|o| o.accepts)
        .sum();
    assert_eq!(accepts, 40, "the budget of 40 accepts is spent to the end");

    assert_eq!(
        loaded
            .offer_stats()
            .iter()
            .map(feedback)
            .collect::<Vec<_>>(),
        expected
            .offer_stats()
            .iter()
            .map(feedback)
            .collect::<Vec<_>>()
    );
    compare(&observe(&expected, CUSTOMERS), &observe(loaded, CUSTOMERS));
    node.close().unwrap();
    assert_eq!(
        format_line(&data),
        format!("{}\n", omnia::store::FORMAT),
        "opened, the directory is in today's format"
    );
}

/// The feedback counted for one offer, channel and arm (decisions are not logged).
fn feedback(o: &omnia::model::decision::OfferStats) -> String {
    format!(
        "{} {} {:?} {:?}: {} {} {} {}",
        o.offer, o.channel, o.experiment, o.arm, o.impressions, o.clicks, o.accepts, o.dismisses
    )
}

/// Writes the history into a new data directory `dir/data`, with `config.toml` beside.
fn write_fixture(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir.join("data"));
    std::fs::create_dir_all(dir).unwrap();
    if dir.join("config.toml") != fixture(2).join("config.toml") {
        std::fs::copy(fixture(2).join("config.toml"), dir.join("config.toml")).unwrap();
    }
    let clock = Arc::new(ManualClock::new(START));
    let node = Store::open(&dir.join("data"), config(), clock.clone(), unsynced_wal()).unwrap();
    let data = node.data.clone();
    let engine = node.node.clone();
    history(&engine, &clock, || {
        snapshot::write(&data, &engine).unwrap();
    });
    node.close().unwrap();
}
