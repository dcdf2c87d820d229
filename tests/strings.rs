//! Memory that only grew: attribute strings no profile holds any more are freed, a
//! snapshot carries the live ones only, and a restart brings the engine back to what a
//! run that never saw the others holds. Counted by the interner's own accounting (the
//! resident-memory figures for a million values are in docs/benchmarks.md).

mod common;

use std::sync::Arc;

use common::{TempDir, START_MS};
use omnia::clock::ManualClock;
use omnia::config::Config;
use omnia::engine::RawEvent;
use omnia::node::Node;
use omnia::store::{open_data_dir, recover, snapshot};

const CUSTOMERS: usize = 20_000;

fn engine(clock: &Arc<ManualClock>) -> Node {
    Node::new(Config::embedded_default().unwrap(), clock.clone())
}

fn country(i: usize, value: &str) -> RawEvent {
    country_at(i, value, START_MS)
}

fn country_at(i: usize, value: &str, at: i64) -> RawEvent {
    RawEvent::new("identify", "web", at)
        .key(&format!("user:{i}"))
        .attr("country", value)
}

fn interned(engine: &Node) -> omnia::config::rule::InternerStats {
    engine.config().interner.stats()
}

#[test]
fn overwritten_attribute_values_are_freed_and_stay_gone_after_a_restart() {
    let clock = Arc::new(ManualClock::new(START_MS));
    // The run that never saw the unique values.
    let plain = engine(&clock);
    for i in 0..CUSTOMERS {
        plain.ingest(&country(i, "NL")).unwrap();
    }
    plain.tick();
    let baseline = interned(&plain);

    // Every customer gets a value of its own, then an ordinary one.
    let dir = TempDir::new("strings", "overwritten");
    let data = open_data_dir(&dir.0).unwrap();
    let churned = engine(&clock);
    recover(&data, &churned).unwrap();
    for i in 0..CUSTOMERS {
        churned
            .ingest(&country(i, &format!("unique-{i:08}")))
            .unwrap();
    }
    assert_eq!(interned(&churned).live, baseline.live + CUSTOMERS);
    clock.advance_ms(1_000);
    for i in 0..CUSTOMERS {
        churned
            .ingest(&country_at(i, "NL", START_MS + 1_000))
            .unwrap();
    }
    assert_eq!(churned.engine().collect_strings(), CUSTOMERS);
    assert_eq!(interned(&churned).live, baseline.live);
    assert_eq!(interned(&churned).text_bytes, baseline.text_bytes);
    // Profiles read the same as in the run that never saw them.
    for i in [0, 7, CUSTOMERS - 1] {
        let key = format!("user:{i}");
        assert_eq!(
            churned.profile(&key).unwrap().attributes,
            plain.profile(&key).unwrap().attributes
        );
    }
    assert_eq!(
        churned.segment_count("big_spenders_nl").ok(),
        plain.segment_count("big_spenders_nl").ok()
    );

    // The snapshot lists live values only, and a restart interns nothing else.
    let written = snapshot::write(&data, &churned).unwrap();
    let bytes = std::fs::read(&written.path).unwrap();
    assert!(
        !bytes.windows(7).any(|w| w == b"unique-"),
        "the snapshot still carries freed values"
    );
    let restarted = engine(&clock);
    recover(&data, &restarted).unwrap();
    restarted.engine().collect_strings();
    assert_eq!(interned(&restarted), baseline);
    assert_eq!(
        restarted.profile("user:7").unwrap().attributes,
        plain.profile("user:7").unwrap().attributes
    );
}

#[test]
fn a_merge_lets_go_of_the_value_the_merged_profile_loses() {
    let clock = Arc::new(ManualClock::new(START_MS));
    let e = engine(&clock);
    let before = interned(&e);
    e.ingest(
        &RawEvent::new("identify", "web", START_MS)
            .key("anon:a")
            .attr("country", "older"),
    )
    .unwrap();
    clock.advance_ms(1_000);
    e.ingest(
        &RawEvent::new("identify", "web", START_MS + 1_000)
            .key("user:a")
            .attr("country", "newer"),
    )
    .unwrap();
    // One event with both keys merges the two profiles; the newer value wins.
    e.ingest(
        &RawEvent::new("page_view", "web", START_MS + 1_000)
            .key("anon:a")
            .key("user:a"),
    )
    .unwrap();
    assert_eq!(e.engine().collect_strings(), 1);
    assert_eq!(interned(&e).live, before.live + 1);
    let code = e.config().interner.lookup("newer").unwrap();
    assert_eq!(e.config().interner.references(code), 1);
    assert_eq!(e.config().interner.lookup("older"), None);
}

#[test]
fn string_counts_match_the_rows_through_merges_overwrites_sweeps_and_a_restart() {
    let clock = Arc::new(ManualClock::new(START_MS));
    let dir = TempDir::new("strings", "counts");
    let data = open_data_dir(&dir.0).unwrap();
    let e = engine(&clock);
    recover(&data, &e).unwrap();
    // A fixed pseudo-random stream: anonymous and known keys of 500 customers, some
    // events carrying both (merges), countries from 40 values.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for step in 0..6_000 {
        let i = next(500);
        let now = START_MS + step * 1_000;
        clock.set_ms(now);
        let mut event = RawEvent::new("identify", "web", now);
        match next(3) {
            0 => event = event.key(&format!("anon:c{i}")),
            1 => event = event.key(&format!("user:{i}")),
            _ => event = event.key(&format!("anon:c{i}")).key(&format!("user:{i}")),
        }
        event = event.attr("country", format!("c{}", next(40)).as_str());
        e.ingest(&event).unwrap();
        if step % 997 == 0 {
            e.engine().collect_strings();
        }
        if step % 1500 == 0 {
            assert_eq!(e.engine().string_reference_errors(), Vec::<String>::new());
        }
    }
    e.engine().collect_strings();
    assert_eq!(e.engine().string_reference_errors(), Vec::<String>::new());
    snapshot::write(&data, &e).unwrap();
    let restarted = engine(&clock);
    recover(&data, &restarted).unwrap();
    assert_eq!(
        restarted.engine().string_reference_errors(),
        Vec::<String>::new()
    );
    for i in 0..500 {
        let key = format!("user:{i}");
        assert_eq!(
            restarted.profile(&key).map(|p| p.attributes),
            e.profile(&key).map(|p| p.attributes)
        );
    }
}
