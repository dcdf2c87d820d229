//! Snapshots through the library: an engine restored from a snapshot plus the log after
//! it equals the engine that wrote them, also when snapshots are taken while several
//! threads ingest, merge identities, decide and give feedback; covered log files go;
//! offer state (caps, stickiness, coupons, budgets) survives; a damaged snapshot or one
//! from another config stops the start with the file, the offset and what to do.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use omnia::clock::ManualClock;
use omnia::config::{Config, FsyncPolicy, Source};
use omnia::decide::DecideError;
use omnia::engine::RawEvent;
use omnia::model::decision::{DecisionRequest, FeedbackKind, FeedbackTarget};
use omnia::node::Node;
use omnia::store::wal::WalOptions;
use omnia::store::{snapshot, Store, StoreError};

mod common;
use common::observe::{compare, decide, event, observe};
use common::TempDir;

/// Monday 2 March 2026, 10:00 UTC.
const START: i64 = 1_772_445_600_000;

fn dir(name: &str) -> TempDir {
    TempDir::new("snapshots", name)
}

/// A node on `path`, recovered and logging, as `omnia serve` runs one.
fn start(path: &Path, config: Config, clock: &Arc<ManualClock>) -> Result<Store, StoreError> {
    Store::open(
        path,
        config,
        clock.clone(),
        WalOptions {
            faults: None,
            policy: FsyncPolicy::Never,
            interval: Duration::from_millis(5),
            // Small segments, so that snapshots have whole files to remove.
            segment_bytes: 16 << 10,
        },
    )
}

/// Everything acknowledged is written; the log is closed, as at a crash after the last
/// acknowledgement (a process crash loses nothing written).
fn stop(node: Store) {
    node.close().unwrap();
}

fn retail() -> Config {
    Config::embedded_default().unwrap()
}

#[test]
fn a_snapshot_and_the_log_after_it_restore_the_engine_exactly() {
    let d = dir("exact");
    let clock = Arc::new(ManualClock::new(START));
    let node = start(&d.0, retail(), &clock).unwrap();
    let n = 60;
    let mut now = START - 3_600_000;
    for step in 0..6 {
        for i in 0..n {
            node.node.ingest(&event(i, step, now)).unwrap();
            now += 1_000;
        }
        if step == 3 {
            snapshot::write(&node.data, &node.node).unwrap();
        }
    }
    for i in 0..n {
        decide(&node.node, &format!("user:{i}"), "email", true).unwrap();
    }
    let before = observe(&node.node, n);
    let files_before = omnia::store::segments(&node.data.wal()).unwrap();
    stop(node);

    let node = start(&d.0, retail(), &clock).unwrap();
    let (path, customers) = node.recovered.snapshot.clone().unwrap();
    assert!(path.starts_with(node.data.snapshots()));
    assert_eq!(
        customers, n as u64,
        "the logins merged cookies into accounts"
    );
    assert!(node.recovered.events > 0);
    compare(&before, &observe(&node.node, n));
    // Appending continues after the old records: one more event, one more restart.
    node.node.ingest(&event(0, 4, now)).unwrap();
    let after = observe(&node.node, n);
    stop(node);
    let node = start(&d.0, retail(), &clock).unwrap();
    compare(&after, &observe(&node.node, n));
    // The first restart's log file is new; older ones were all kept since the snapshot.
    assert!(omnia::store::segments(&node.data.wal()).unwrap().len() > files_before.len());
    stop(node);
}

#[test]
fn snapshots_taken_during_concurrent_ingest_merges_and_decisions_lose_nothing() {
    let d = dir("concurrent");
    let clock = Arc::new(ManualClock::new(START));
    let node = start(&d.0, retail(), &clock).unwrap();
    let n = 400;
    let threads = 4;
    std::thread::scope(|s| {
        for t in 0..threads {
            let engine = node.node.clone();
            s.spawn(move || {
                for step in 0..6 {
                    for i in (t..n).step_by(threads) {
                        let now = START - 3_600_000 + (step * n + i) as i64 * 100;
                        engine.ingest(&event(i, step, now)).unwrap();
                        if step == 5 && i % 3 == 0 {
                            decide(&engine, &format!("user:{i}"), "email", true).unwrap();
                        }
                        if step == 5 && i % 9 == 0 {
                            let target = FeedbackTarget::Customer {
                                key: format!("user:{i}"),
                                offer: "cart_reminder".into(),
                                channel: "store".into(),
                            };
                            // Not every customer was offered it; feedback counts anyway.
                            let _ = engine.feedback(FeedbackKind::Accept, &target);
                        }
                    }
                }
            });
        }
        let engine = node.node.clone();
        let data = node.data.clone();
        s.spawn(move || {
            for _ in 0..5 {
                snapshot::write(&data, &engine).unwrap();
                std::thread::yield_now();
            }
        });
    });
    let before = observe(&node.node, n);
    stop(node);
    let node = start(&d.0, retail(), &clock).unwrap();
    assert!(node.recovered.snapshot.is_some());
    compare(&before, &observe(&node.node, n));
    stop(node);
}

/// The one change that spans two shards, a merge, in the middle of a snapshot: after
/// the snapshot copied one of the two shards and before it copied the other. Both orders
/// (the survivor's shard copied first, or the loser's) must come back whole.
#[test]
fn a_merge_between_a_copied_and_an_uncopied_shard_comes_back_whole() {
    let clock = Arc::new(ManualClock::new(START));
    let shard_of = |engine: &Node, key: &str| engine.engine().customer_of(key).unwrap() >> 28;
    let mut orders_seen = [false, false];
    for i in 0..40 {
        let d = dir(&format!("straddle-{i}"));
        let node = start(&d.0, retail(), &clock).unwrap();
        let (anon, user) = (format!("anon:c{i}"), format!("user:{i}"));
        let e = &node.node;
        e.ingest(&event(i, 0, START - 60_000)).unwrap();
        e.ingest(
            &RawEvent::new("purchase", "store", START - 50_000)
                .key(&user)
                .prop("amount", 250.0),
        )
        .unwrap();
        let (loser, survivor) = (shard_of(e, &anon), shard_of(e, &user));
        if loser == survivor {
            continue;
        }
        orders_seen[(survivor < loser) as usize] = true;
        // The login that merges the cookie into the account, once the first of the two
        // shards is copied.
        let image = e.image_with(|copied| {
            if copied == loser.min(survivor) as usize {
                e.ingest(&event(i, 2, START - 40_000)).unwrap();
            }
        });
        snapshot::write_image(&node.data, e, image).unwrap();
        let before = observe(e, i + 1);
        assert_eq!(e.engine().customer_of(&anon), e.engine().customer_of(&user));
        stop(node);
        let node = start(&d.0, retail(), &clock).unwrap();
        compare(&before, &observe(&node.node, i + 1));
        stop(node);
    }
    assert_eq!(orders_seen, [true, true], "both orders were tried");
}

const BUDGET_CONFIG: &str = r#"
channels = ["web", "email", "store"]
[identity]
namespaces = ["user"]
[events.view]
[events.offer_impression]
properties = { offer = "string", decision = "string" }
[events.offer_accept]
properties = { offer = "string", decision = "string" }

[decisions]
fallback = "fallback"
feedback_events = { impression = "offer_impression", accept = "offer_accept" }

[offers.limited]
rule = "ever(view)"
value = 10
budget = { accepts = 3 }
repeat = true
coupon = { prefix = "LTD", valid = "7d" }

[offers.capped]
rule = "ever(view)"
value = 5
caps = [{ impressions = 2, per = "1d" }]
sticky = "1h"

[offers.fallback]
value = 0.1
"#;

fn budget_config() -> Config {
    Config::from_source(&Source::new("budget.toml", BUDGET_CONFIG))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn accept(engine: &Node, user: usize) -> Result<(), DecideError> {
    let target = FeedbackTarget::Customer {
        key: format!("user:{user}"),
        offer: "limited".into(),
        channel: "store".into(),
    };
    engine.feedback(FeedbackKind::Accept, &target).map(|_| ())
}

#[test]
fn budgets_caps_stickiness_and_coupons_survive_restarts_with_and_without_a_snapshot() {
    for with_snapshot in [false, true] {
        let d = dir(&format!("offers-{with_snapshot}"));
        let clock = Arc::new(ManualClock::new(START));
        let node = start(&d.0, budget_config(), &clock).unwrap();
        for user in 0..4 {
            node.node
                .ingest(&RawEvent::new("view", "web", START).key(&format!("user:{user}")))
                .unwrap();
        }
        // user:0 sees both offers twice: `capped` reaches its cap, a coupon is issued.
        let first = decide(&node.node, "user:0", "web", true).unwrap();
        assert!(first.contains("LTD"), "{first}");
        decide(&node.node, "user:0", "email", true).unwrap();
        accept(&node.node, 0).unwrap();
        if with_snapshot {
            snapshot::write(&node.data, &node.node).unwrap();
        }
        accept(&node.node, 1).unwrap();
        let before = observe(&node.node, 4);
        stop(node);

        let node = start(&d.0, budget_config(), &clock).unwrap();
        assert_eq!(node.recovered.snapshot.is_some(), with_snapshot);
        compare(&before, &observe(&node.node, 4));
        let capped = decide(&node.node, "user:0", "web", false).unwrap();
        assert!(capped.contains(r#"("capped", "capped""#), "{capped}");
        // Two of three acceptances were spent before the restart: one is left.
        accept(&node.node, 2).unwrap();
        let err = accept(&node.node, 3).unwrap_err();
        assert!(matches!(err, DecideError::BudgetSpent { .. }), "{err}");
        stop(node);
    }
}

fn written_snapshot(name: &str) -> (TempDir, PathBuf, Arc<ManualClock>) {
    let d = dir(name);
    let clock = Arc::new(ManualClock::new(START));
    let node = start(&d.0, retail(), &clock).unwrap();
    for i in 0..20 {
        for step in 0..3 {
            node.node.ingest(&event(i, step, START - 60_000)).unwrap();
        }
    }
    let written = snapshot::write(&node.data, &node.node).unwrap();
    stop(node);
    (d, written.path, clock)
}

#[test]
fn a_damaged_snapshot_stops_the_start_with_the_file_and_offset() {
    let (d, path, clock) = written_snapshot("damaged");
    let good = std::fs::read(&path).unwrap();

    // A byte flipped in the first shard's body: its section (after the 44-byte header) fails.
    let mut bytes = good.clone();
    bytes[44 + 12 + 30] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let err = start(&d.0, retail(), &clock).err().unwrap();
    assert!(
        matches!(&err, StoreError::CorruptSnapshot { offset: 44, reason, .. } if reason == "checksum mismatch in shard 0"),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "{}, byte 44: the snapshot is damaged: checksum mismatch in shard 0.",
            path.display()
        )),
        "{message}"
    );
    assert!(
        message.contains("Restore the data directory from a backup"),
        "{message}"
    );

    // Cut short: the last section (the suppression list, since version 4) is named.
    std::fs::write(&path, &good[..good.len() - 3]).unwrap();
    let err = start(&d.0, retail(), &clock).err().unwrap();
    assert!(
        err.to_string().contains("the suppression list claims"),
        "{err}"
    );

    // The header.
    let mut bytes = good.clone();
    bytes[30] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let err = start(&d.0, retail(), &clock).err().unwrap();
    assert!(
        matches!(&err, StoreError::CorruptSnapshot { offset: 0, reason, .. } if reason == "header checksum mismatch"),
        "{err}"
    );

    // Intact again: it starts.
    std::fs::write(&path, &good).unwrap();
    stop(start(&d.0, retail(), &clock).unwrap());
}

#[test]
fn a_snapshot_with_another_shard_count_is_refused() {
    let (d, path, clock) = written_snapshot("shards");
    let mut config = retail();
    config.engine.shards = 8;
    let err = start(&d.0, config, &clock).err().unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "{} cannot be loaded under this config: it has 16 shards and the config has 8: engine.shards cannot change while a data directory lives (customer ids hold their shard). Start with a config that keeps what it needs, or with the config that wrote it",
            path.display()
        )
    );
}

#[test]
fn a_snapshot_loads_under_a_changed_config_as_if_its_events_had_been_applied_under_it() {
    let d = dir("relayout");
    let clock = Arc::new(ManualClock::new(START));
    let node = start(&d.0, retail(), &clock).unwrap();
    let n = 60;
    let events: Vec<RawEvent> = (0..6)
        .flat_map(|step| {
            (0..n).map(move |i| event(i, step, START - 3_600_000 + (step * n + i) as i64 * 1_000))
        })
        .collect();
    let coupons = |engine: &Node, key: &str| {
        let request = DecisionRequest {
            key: key.into(),
            channel: "web".into(),
            top: 1,
            record_impression: false,
            explain: false,
            context: Vec::new(),
        };
        format!("{:?}", engine.decide(&request).unwrap().coupons)
    };
    // New visitors are offered the welcome discount, whose coupon then follows them
    // through the login into their account.
    for (at, e) in events.iter().enumerate() {
        node.node.ingest(e).unwrap();
        if at == 2 * n - 1 {
            for i in (0..n).step_by(2) {
                decide(&node.node, &format!("anon:c{i}"), "email", true).unwrap();
            }
        }
    }
    let issued: Vec<(String, String)> = (0..n)
        .step_by(2)
        .map(|i| format!("user:{i}"))
        .map(|key| (key.clone(), coupons(&node.node, &key)))
        .collect();
    assert!(issued.iter().any(|(_, c)| c.contains("code")), "{issued:?}");
    snapshot::write(&node.data, &node.node).unwrap();
    stop(node);

    let node = start(&d.0, common::changed_retail(), &clock).unwrap();
    let fresh = Node::new(common::changed_retail(), clock.clone());
    for e in &events {
        fresh.ingest(e).unwrap();
    }
    for i in 0..n {
        let key = format!("user:{i}");
        let (moved, direct) = (
            node.node.profile(&key).unwrap(),
            fresh.profile(&key).unwrap(),
        );
        // Segments: the same, except the one that reads an aggregate the old config did
        // not keep: it starts empty at the change.
        if i % 2 == 0 {
            // Decisions recorded impressions here under the old config, as events too.
            continue;
        }
        let without_new = |segments: &[String]| -> Vec<String> {
            segments
                .iter()
                .filter(|s| *s != "email_openers")
                .cloned()
                .collect()
        };
        assert_eq!(
            without_new(&moved.segments),
            without_new(&direct.segments),
            "{key}"
        );
        assert!(
            !moved.in_segment("email_openers"),
            "{key}: new aggregates start empty"
        );
        for (label, value) in &direct.aggregates {
            let expected = if label == "count(email_open, 30d)" {
                0.0
            } else {
                *value
            };
            assert_eq!(moved.aggregate(label), Some(expected), "{key} {label}");
        }
        assert_eq!(moved.attributes, direct.attributes, "{key}");
        assert_eq!(moved.channels, direct.channels, "{key}");
        assert_eq!(moved.scores, direct.scores, "{key}");
    }
    // Decisions for customers without offer history agree; the coupons issued under
    // the old config are still every customer's.
    for i in (1..n).step_by(2) {
        for channel in ["web", "kiosk"] {
            let key = format!("user:{i}");
            assert_eq!(
                decide(&node.node, &key, channel, false).unwrap(),
                decide(&fresh, &key, channel, false).unwrap()
            );
        }
    }
    for (key, before) in &issued {
        assert_eq!(&coupons(&node.node, key), before, "{key}");
    }
    for segment in [
        "dutch_buyers",
        "high_value",
        "cart_abandoners",
        "engaged_browsers_gone",
    ] {
        assert_eq!(
            node.node.segment_count(segment).unwrap(),
            fresh.segment_count(segment).unwrap(),
            "{segment}"
        );
    }
    // The log after the snapshot replays under the new config too, and a snapshot under
    // it loads as it is.
    node.node
        .ingest(&RawEvent::new("email_open", "kiosk", START).key("user:1"))
        .unwrap();
    snapshot::write(&node.data, &node.node).unwrap();
    stop(node);
    let node = start(&d.0, common::changed_retail(), &clock).unwrap();
    assert!(node
        .node
        .profile("user:1")
        .unwrap()
        .in_segment("email_openers"));
    stop(node);
}

#[test]
fn log_files_a_snapshot_covers_are_removed_and_a_missing_one_is_a_gap() {
    let d = dir("gap");
    let clock = Arc::new(ManualClock::new(START));
    let node = start(&d.0, retail(), &clock).unwrap();
    // Written in batches of 100 (a few KiB), so that the 16 KiB files fill one by one.
    let ingest = |step: usize, now: i64| {
        for i in 0..1000 {
            node.node.ingest(&event(i, step, now)).unwrap();
            if i % 100 == 99 {
                node.wal.wait_durable(node.wal.last_appended()).unwrap();
            }
        }
    };
    ingest(0, START - 60_000);
    let files = omnia::store::segments(&node.data.wal()).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    let written = snapshot::write(&node.data, &node.node).unwrap();
    assert_eq!(written.covers, 1000);
    assert_eq!(written.removed_log_files, files.len() - 1);
    ingest(1, START - 30_000);
    stop(node);
    // Losing the log file after the snapshot loses acknowledged events: refused.
    let files = omnia::store::segments(&d.0.join("wal")).unwrap();
    std::fs::remove_file(&files[0].1).unwrap();
    let err = start(&d.0, retail(), &clock).err().unwrap();
    assert!(
        matches!(err, StoreError::LogGap { covers: 1000, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("but the snapshot needs every record after 1000"),
        "{err}"
    );
}

#[test]
fn a_clock_set_back_after_a_restart_does_not_stop_recovery() {
    let d = dir("clock");
    let clock = Arc::new(ManualClock::new(START));
    let node = start(&d.0, retail(), &clock).unwrap();
    for i in 0..10 {
        node.node.ingest(&event(i, 0, START)).unwrap();
    }
    stop(node);
    // The machine comes back with its clock an hour behind: the logged events are "from
    // the future" now, but they were accepted, so they come back (at the shard's time,
    // which never runs ahead of the clock).
    let earlier = Arc::new(ManualClock::new(START - 3_600_000));
    let node = start(&d.0, retail(), &earlier).unwrap();
    assert_eq!(node.recovered.events, 10);
    for i in 0..10 {
        let profile = node.node.profile(&format!("anon:c{i}")).unwrap();
        assert!(profile.in_segment("new_visitors"), "{profile:?}");
    }
    stop(node);
}
