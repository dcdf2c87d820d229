//! Live reload through the library: a changed config swapped in while threads ingest.
//! Afterwards every membership equals that of an engine that applied the same events
//! under the new config from the start, except segments that read an aggregate only the
//! new config keeps (it counts from the reload, and the report names it).

use std::sync::Arc;
use std::time::Duration;

use omnia::clock::ManualClock;
use omnia::config::{Config, FsyncPolicy};
use omnia::engine::RawEvent;
use omnia::model::RawValue;
use omnia::node::Node;
use omnia::store::reload::{prepare, ReloadError};
use omnia::store::wal::WalOptions;
use omnia::store::{open_data_dir, recover, Store};
use parking_lot::RwLock;

mod common;
use common::TempDir;

const START: i64 = common::START_MS;

fn dir(name: &str) -> TempDir {
    TempDir::new("reload", name)
}

/// Customer `i`'s step `step` of a journey: browsing, a login merging the cookie into
/// the account, a cart, an e-mail open, a purchase.
fn event(i: usize, step: usize) -> RawEvent {
    let now = START - 3_600_000 + (step * 1000 + i) as i64 * 100;
    let (anon, user) = (format!("anon:c{i}"), format!("user:{i}"));
    match step % 6 {
        0 | 1 => RawEvent::new("page_view", "web", now).key(&anon),
        2 => common::login(i, "app", now),
        3 => RawEvent::new("add_to_cart", "app", now)
            .key(&user)
            .prop("sku", RawValue::Str(format!("sku-{}", i % 7))),
        4 => RawEvent::new("email_open", "email", now).key(&format!("email:c{i}@example.com")),
        _ => RawEvent::new("purchase", "store", now)
            .key(&user)
            .prop("amount", 90.0 + (i * 37 % 300) as f64),
    }
}

#[test]
fn a_reload_under_concurrent_ingest_equals_applying_everything_under_the_new_config() {
    let d = dir("concurrent");
    let clock = Arc::new(ManualClock::new(START));
    let Store {
        data,
        node: first,
        wal,
        ..
    } = Store::open(
        &d.0,
        Config::embedded_default().unwrap(),
        clock.clone(),
        WalOptions {
            faults: None,
            policy: FsyncPolicy::Never,
            interval: Duration::from_millis(5),
            segment_bytes: 64 << 10,
        },
    )
    .unwrap();
    // As the server does it: the engine in a lock that requests hold for reading, and
    // that the swap takes for writing.
    let current = RwLock::new(first.clone());
    let n = 600;
    let threads = 3;
    // Steps 3 and 4 run while the new engine is built, step 5 after it is built and
    // before the swap: only the last catch-up sees those.
    let (halfway, built, step_5_done) = (
        std::sync::Barrier::new(threads + 1),
        std::sync::Barrier::new(threads + 1),
        std::sync::Barrier::new(threads + 1),
    );
    let report = std::thread::scope(|s| {
        for t in 0..threads {
            let (current, halfway, built, step_5_done) = (&current, &halfway, &built, &step_5_done);
            s.spawn(move || {
                for step in 0..6 {
                    if step == 3 {
                        halfway.wait();
                    }
                    if step == 5 {
                        built.wait();
                    }
                    for i in (t..n).step_by(threads) {
                        current.read().ingest(&event(i, step)).unwrap();
                    }
                }
                step_5_done.wait();
            });
        }
        halfway.wait();
        let prepared = prepare(&data, &first, common::changed_retail(), &|_| {}).unwrap();
        built.wait();
        step_5_done.wait();
        let mut engine = current.write();
        let (next, report) = prepared.finish(&data, &engine).unwrap();
        *engine = next;
        report
    });
    assert!(
        report.replayed >= n as u64,
        "step 5 came after the build: {report}"
    );
    let reloaded = current.read().clone();
    assert!(!Arc::ptr_eq(&reloaded, &first));
    assert_eq!(reloaded.config().version, common::changed_retail().version);
    assert_eq!(
        report.segments_added,
        ["dutch_buyers", "email_openers", "engaged_browsers_gone"]
    );
    assert_eq!(report.segments_changed, ["high_value"]);
    assert_eq!(report.segments_removed, ["engaged_browsers"]);
    assert_eq!(report.offers_added, ["free_delivery"]);
    assert_eq!(report.offers_removed, ["free_shipping"]);
    assert_eq!(
        report.new_aggregates,
        [(
            "count(email_open, 30d)".to_string(),
            vec!["segment email_openers".to_string()]
        )]
    );
    assert!(report.to_string().contains("warning: `count(email_open, 30d)` was not kept before: it counts from now, so segment email_openers see only what happens from now on"), "{report}");

    let fresh = Node::new(common::changed_retail(), clock.clone());
    for step in 0..6 {
        for i in 0..n {
            fresh.ingest(&event(i, step)).unwrap();
        }
    }
    for segment in &fresh.config().segments {
        if segment.name == "email_openers" {
            continue;
        }
        assert_eq!(
            reloaded.segment_count(&segment.name).unwrap(),
            fresh.segment_count(&segment.name).unwrap(),
            "{}",
            segment.name
        );
    }
    for i in 0..n {
        let key = format!("user:{i}");
        let (a, b) = (
            reloaded.profile(&key).unwrap(),
            fresh.profile(&key).unwrap(),
        );
        let kept = |p: &omnia::model::ProfileView| -> Vec<String> {
            p.segments
                .iter()
                .filter(|s| *s != "email_openers")
                .cloned()
                .collect()
        };
        assert_eq!(kept(&a), kept(&b), "{key}");
        assert_eq!(a.attributes, b.attributes, "{key}");
    }
    // The new engine logs: what it accepts after the swap survives a restart under
    // the new config.
    reloaded
        .ingest(&RawEvent::new("email_open", "kiosk", START).key("user:7"))
        .unwrap();
    wal.wait_durable(wal.last_appended()).unwrap();
    wal.close();
    let restarted = Node::new(common::changed_retail(), clock.clone());
    let r = recover(&data, &restarted).unwrap();
    assert!(r.events > 0);
    assert!(restarted
        .profile("user:7")
        .unwrap()
        .in_segment("email_openers"));
    assert_eq!(
        restarted.segment_count("dutch_buyers").unwrap(),
        fresh.segment_count("dutch_buyers").unwrap()
    );
}

#[test]
fn a_reload_that_would_lose_keys_or_change_shards_is_refused_and_the_engine_stays() {
    let d = dir("refused");
    let clock = Arc::new(ManualClock::new(START));
    let data = open_data_dir(&d.0).unwrap();
    let engine = Node::new(Config::embedded_default().unwrap(), clock.clone());
    engine.ingest(&event(1, 2)).unwrap();
    let no_anon = omnia::config::DEFAULT_CONFIG.replace(
        r#"namespaces = ["user", "email", "card", "phone", "anon"]"#,
        r#"namespaces = ["user", "email", "card", "phone"]"#,
    );
    let config = Config::from_source(&omnia::config::Source::new("no-anon.toml", no_anon)).unwrap();
    let err = prepare(&data, &engine, config, &|_| {}).err().unwrap();
    assert!(
        matches!(&err, ReloadError::Refused(m) if m == "namespace `anon` is gone, and customers' keys in it would be lost; keep it in [identity] namespaces"),
        "{err}"
    );
    let mut config = Config::embedded_default().unwrap();
    config.engine.shards = 4;
    let err = prepare(&data, &engine, config, &|_| {}).err().unwrap();
    assert!(
        err.to_string().contains("the shard count cannot change"),
        "{err}"
    );
    assert!(engine.profile("anon:c1").is_some());
}

/// Reloads `old` into the default config with one segment's threshold changed (same
/// offers, same layout), as a live reload does, and returns the new node.
fn reload_into_a_changed_segment(data: &omnia::store::DataDir, old: &Node) -> Arc<Node> {
    let text = omnia::config::DEFAULT_CONFIG.replace(
        "sum(purchase.amount, 90d) > 500",
        "sum(purchase.amount, 90d) > 200",
    );
    let config = Config::from_source(&omnia::config::Source::new("new.toml", text)).unwrap();
    let prepared = prepare(data, old, config, &|_| {}).unwrap();
    prepared.finish(data, old).unwrap().0
}

#[test]
fn decisions_survive_a_reload_and_the_replaced_engine_is_never_snapshotted() {
    let d = dir("decisions");
    let clock = Arc::new(ManualClock::new(START));
    let data = open_data_dir(&d.0).unwrap();
    let old = Node::new(Config::embedded_default().unwrap(), clock.clone());
    for step in 0..3 {
        old.ingest(&event(1, step)).unwrap();
    }
    let request = omnia::model::decision::DecisionRequest {
        key: "user:1".into(),
        channel: "email".into(),
        top: 1,
        record_impression: true,
        explain: false,
        context: Vec::new(),
    };
    let decision = old.decide(&request).unwrap();
    let offer = decision.offers[0].offer.clone();
    // Same offers, a segment changed.
    let new = reload_into_a_changed_segment(&data, &old);
    let target = omnia::model::decision::FeedbackTarget::Decision {
        decision_id: decision.decision_id,
        offer: offer.clone(),
    };
    new.feedback(omnia::model::decision::FeedbackKind::Click, &target)
        .unwrap();
    let counted = |e: &Node| -> u64 {
        e.offer_stats()
            .iter()
            .filter(|s| s.offer == offer && s.experiment.is_none())
            .map(|s| s.decisions)
            .sum()
    };
    assert_eq!(counted(&new), 1, "the decision counter came along");
    let err = omnia::store::snapshot::write(&data, &old).err().unwrap();
    assert!(matches!(err, omnia::store::StoreError::Replaced), "{err}");
    omnia::store::snapshot::write(&data, &new).unwrap();
}

#[test]
fn message_ids_survive_a_reload() {
    let d = dir("message-ids");
    let clock = Arc::new(ManualClock::new(START));
    let data = open_data_dir(&d.0).unwrap();
    let old = Node::new(Config::embedded_default().unwrap(), clock.clone());
    let order = || {
        RawEvent::new("purchase", "web", START)
            .key("user:1")
            .prop("amount", 10.0)
            .with_message_id("m-1")
    };
    assert!(!old.ingest(&order()).unwrap().duplicate);
    let new = reload_into_a_changed_segment(&data, &old);
    assert!(
        new.ingest(&order()).unwrap().duplicate,
        "the new engine remembers what the old one applied"
    );
    let sum = new
        .profile("user:1")
        .unwrap()
        .aggregate("sum(purchase.amount, 90d)");
    assert_eq!(sum, Some(10.0));
}
