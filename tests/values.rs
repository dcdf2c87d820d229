//! `first(EVENT.PROP)` and `last(EVENT.PROP)`: the value of a property at a customer's
//! earliest and latest matching event, kept as events arrive in any order, across a
//! merge, a snapshot and a restart, a FORGET (which lets their strings go) and a reload
//! (which starts a new one from the reload on).

mod common;

use std::sync::Arc;

use common::{unsynced_wal, TempDir, START_MS};
use omnia::clock::ManualClock;
use omnia::config::{Config, Source};
use omnia::engine::{RawEvent, Receipt};
use omnia::model::RawValue;
use omnia::node::Node;
use omnia::store::Store;

const DAY_MS: i64 = 86_400_000;

/// Segments on top of the default config that read first and last values, of strings
/// and of numbers, with a filter and a channel, and compare two values with each other.
const SEGMENTS: &str = r#"
[segments.first_bought_shoes]
rule = 'first(purchase.category) == "shoes"'

[segments.last_order_over_100]
rule = "last(purchase.amount) > 100"

[segments.last_store_order_bags]
rule = 'last(purchase.category on store) == "bags"'

[segments.first_big_order_shoes]
rule = 'first(purchase.category where amount >= 50) == "shoes"'

[segments.browsing_their_first_category]
rule = "last(product_view.category) == first(purchase.category)"
"#;

fn config() -> Config {
    config_with("")
}

fn config_with(more: &str) -> Config {
    let text = format!(
        "{}\n{SEGMENTS}\n{more}",
        common::default_config_without_triggers()
    );
    Config::from_source(&Source::new("values.toml", text)).unwrap_or_else(|e| panic!("{e}"))
}

fn purchase(key: &str, channel: &str, at: i64, category: Option<&str>, amount: f64) -> RawEvent {
    let e = RawEvent::new("purchase", channel, at)
        .key(key)
        .prop("amount", RawValue::Num(amount));
    match category {
        Some(c) => e.prop("category", RawValue::Str(c.into())),
        None => e,
    }
}

fn view(key: &str, at: i64, category: &str) -> RawEvent {
    RawEvent::new("product_view", "web", at)
        .key(key)
        .prop("category", RawValue::Str(category.into()))
}

/// The segments of `SEGMENTS` the customer is in, its text values and its first and
/// last numbers.
type Seen = (Vec<String>, Vec<(String, String)>, Vec<(String, f64)>);

fn seen(node: &Node, key: &str) -> Seen {
    let p = node.profile(key).unwrap();
    let ours: Vec<String> = p
        .segments
        .iter()
        .filter(|s| SEGMENTS.contains(&format!("[segments.{s}]")) || *s == "mostly_bags")
        .cloned()
        .collect();
    let numbers = p
        .aggregates
        .iter()
        .filter(|(label, _)| label.starts_with("first(") || label.starts_with("last("))
        .cloned()
        .collect();
    (ours, p.texts, numbers)
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_earliest_and_latest_values_win_whatever_order_the_events_come_in() {
    let clock = Arc::new(ManualClock::new(START_MS + 10 * DAY_MS));
    let node = Node::new(config(), clock);
    // Later purchase first, then an earlier one (a late event), then one without the
    // property, which does not count.
    node.ingest(&purchase(
        "user:1",
        "web",
        START_MS + 5 * DAY_MS,
        Some("bags"),
        120.0,
    ))
    .unwrap();
    node.ingest(&purchase(
        "user:1",
        "store",
        START_MS + DAY_MS,
        Some("shoes"),
        60.0,
    ))
    .unwrap();
    node.ingest(&purchase(
        "user:1",
        "web",
        START_MS + 6 * DAY_MS,
        None,
        30.0,
    ))
    .unwrap();
    let (segments, texts, numbers) = seen(&node, "user:1");
    assert_eq!(
        segments,
        names(&["first_bought_shoes", "first_big_order_shoes"]),
        "the last purchase (30, no category) is not over 100, and its category is missing"
    );
    assert!(texts.contains(&("first(purchase.category)".into(), "shoes".into())));
    assert!(texts.contains(&("last(purchase.category on store)".into(), "shoes".into())));
    assert!(numbers.contains(&("last(purchase.amount)".into(), 30.0)));

    // A product view in their first category; a store order of bags.
    node.ingest(&view("user:1", START_MS + 7 * DAY_MS, "shoes"))
        .unwrap();
    node.ingest(&purchase(
        "user:1",
        "store",
        START_MS + 8 * DAY_MS,
        Some("bags"),
        200.0,
    ))
    .unwrap();
    let (segments, _, _) = seen(&node, "user:1");
    assert_eq!(
        segments,
        names(&[
            "first_bought_shoes",
            "last_order_over_100",
            "last_store_order_bags",
            "first_big_order_shoes",
            "browsing_their_first_category"
        ])
    );
    // A filter: a small first purchase does not make `first(... where amount >= 50)`.
    node.ingest(&purchase("user:2", "web", START_MS, Some("shoes"), 20.0))
        .unwrap();
    node.ingest(&purchase(
        "user:2",
        "web",
        START_MS + DAY_MS,
        Some("hats"),
        80.0,
    ))
    .unwrap();
    let (segments, _, _) = seen(&node, "user:2");
    assert_eq!(segments, names(&["first_bought_shoes"]));
    assert_eq!(
        node.engine().string_reference_errors(),
        Vec::<String>::new()
    );
}

#[test]
fn a_merge_keeps_the_earlier_first_and_the_later_last() {
    let clock = Arc::new(ManualClock::new(START_MS + 10 * DAY_MS));
    let node = Node::new(config(), clock);
    node.ingest(&purchase("anon:c1", "web", START_MS, Some("shoes"), 40.0))
        .unwrap();
    node.ingest(&purchase(
        "user:1",
        "web",
        START_MS + 2 * DAY_MS,
        Some("bags"),
        150.0,
    ))
    .unwrap();
    let login = RawEvent::new("page_view", "web", START_MS + 3 * DAY_MS)
        .key("anon:c1")
        .key("user:1");
    node.ingest(&login).unwrap();
    let (segments, texts, numbers) = seen(&node, "user:1");
    assert_eq!(
        segments,
        names(&["first_bought_shoes", "last_order_over_100"])
    );
    assert!(texts.contains(&("first(purchase.category)".into(), "shoes".into())));
    assert!(numbers.contains(&("last(purchase.amount)".into(), 150.0)));
    assert_eq!(
        node.engine().string_reference_errors(),
        Vec::<String>::new()
    );
}

#[test]
fn values_survive_a_snapshot_and_a_restart_and_leave_with_a_forgotten_customer() {
    let dir = TempDir::new("values", "restart");
    let data = dir.0.join("data");
    // A top too: its slots' codes are renumbered at load like every other string's.
    let top = "[segments.mostly_bags]\nrule = 'top(purchase.category, 30d) == \"bags\"'\n";
    let open = || {
        let clock = Arc::new(ManualClock::new(START_MS + 10 * DAY_MS));
        Store::open(&data, config_with(top), clock, unsynced_wal()).unwrap()
    };
    let store = open();
    for i in 0..20 {
        let key = format!("user:{i}");
        let category = ["shoes", "bags", "hats"][i % 3];
        store
            .node
            .ingest(&purchase(
                &key,
                "store",
                START_MS + i as i64 * 1000,
                Some(category),
                10.0 * i as f64,
            ))
            .unwrap();
    }
    omnia::store::snapshot::write(&store.data, &store.node).unwrap();
    // After the snapshot, from the log: a later purchase changes `last`.
    store
        .node
        .ingest(&purchase(
            "user:3",
            "store",
            START_MS + DAY_MS,
            Some("bags"),
            500.0,
        ))
        .unwrap();
    let before: Vec<_> = (0..20)
        .map(|i| seen(&store.node, &format!("user:{i}")))
        .collect();
    store.close().unwrap();

    let store = open();
    assert!(store.recovered.snapshot.is_some(), "{}", store.recovered);
    let after: Vec<_> = (0..20)
        .map(|i| seen(&store.node, &format!("user:{i}")))
        .collect();
    assert_eq!(after, before);
    assert!(after[3].0.contains(&"last_store_order_bags".to_string()));
    assert!(
        after[3]
            .1
            .contains(&("top(purchase.category, 30d)".into(), "bags".into())),
        "{:?}",
        after[3]
    );
    assert_eq!(
        store.node.engine().string_reference_errors(),
        Vec::<String>::new()
    );
    for i in 0..20 {
        store
            .node
            .forget_with(&format!("user:{i}"), &mut Receipt::default())
            .unwrap();
    }
    assert_eq!(
        store.node.engine().string_reference_errors(),
        Vec::<String>::new()
    );
    store.close().unwrap();
}

#[test]
fn rule_errors_say_what_first_and_last_need() {
    let error = |rule: &str| {
        let text = format!(
            "{}\n[segments.probe]\nrule = '{rule}'\n",
            common::default_config_without_triggers()
        );
        match Config::from_source(&Source::new("bad.toml", text)) {
            Ok(_) => panic!("`{rule}` was accepted"),
            Err(e) => e.diagnostics[0].message.clone(),
        }
    };
    assert_eq!(
        error("first(purchase) > 1"),
        "first needs a property whose value it keeps"
    );
    assert_eq!(
        error("last(any.amount) > 1"),
        "last needs a specific event type, not `any`"
    );
    assert_eq!(
        error("first(purchase.colour) == \"red\""),
        "event type `purchase` has no property `colour`"
    );
    assert_eq!(
        error("first(purchase.category) > 3"),
        "cannot compare a string with a number"
    );
}

/// A config with no decayed score, so that no periodic recheck hides a top's own timer.
const TOP_CONFIG: &str = r#"
channels = ["web", "app"]

[identity]
namespaces = ["user", "anon"]

[attributes]
favourite = "string"

[events.view]
properties = { category = "string" }

[segments.mostly_shoes]
rule = 'top(view.category, 1h) == "shoes"'

[segments.shoes_in_top_two]
rule = '"shoes" in top(view.category, 2h, 2)'

[segments.favourite_on_top]
rule = "attr.favourite in top(view.category, 2h, 1)"
"#;

fn top_node(now_ms: i64) -> (Node, Arc<ManualClock>) {
    let config = Config::from_source(&Source::new("top.toml", TOP_CONFIG)).unwrap();
    let clock = Arc::new(ManualClock::new(now_ms));
    (Node::new(config, clock.clone()), clock)
}

fn views(node: &Node, key: &str, at_ms: i64, category: &str, n: usize) {
    for _ in 0..n {
        node.ingest(
            &RawEvent::new("view", "web", at_ms)
                .key(key)
                .prop("category", RawValue::Str(category.into())),
        )
        .unwrap();
    }
}

#[test]
fn the_top_value_changes_when_its_events_leave_the_window_on_the_dot() {
    // Buckets of 450 s (1h over 8) and 900 s (2h over 8), aligned to the epoch; the two
    // windows' timers fall at different times, so each flip below is its own timer's.
    let (b1, b2) = (450_000, 900_000);
    let t0 = START_MS / b2 * b2;
    let (node, clock) = top_node(t0 + 1_000_000);
    views(&node, "user:1", t0, "bags", 2);
    views(&node, "user:1", t0 + 1_000_000, "shoes", 1);
    let count = |s: &str| node.segment_count(s).unwrap();
    let at = |ms: i64| {
        clock.set_ms(ms);
        node.tick();
    };
    assert_eq!(count("mostly_shoes"), 0, "bags, twice, lead");
    assert_eq!(count("shoes_in_top_two"), 1);
    assert_eq!(
        node.profile("user:1").unwrap().texts,
        vec![
            ("top(view.category, 1h)".to_string(), "bags".to_string()),
            ("top(view.category, 2h, 2)".to_string(), "bags".to_string())
        ]
    );
    // The bags' bucket leaves the 1h window when the eighth bucket after it begins.
    at(t0 + 8 * b1 - 1000);
    assert_eq!(count("mostly_shoes"), 0);
    at(t0 + 8 * b1);
    assert_eq!(
        count("mostly_shoes"),
        1,
        "the timer flips it at the bucket's end"
    );
    // An attribute tested against the 2h list, where the bags still lead.
    node.ingest(
        &RawEvent::new("view", "app", t0 + 8 * b1)
            .key("user:1")
            .attr("favourite", "shoes"),
    )
    .unwrap();
    assert_eq!(count("favourite_on_top"), 0);
    at(t0 + 8 * b2 - 1000);
    assert_eq!(count("favourite_on_top"), 0);
    at(t0 + 8 * b2);
    assert_eq!(count("favourite_on_top"), 1);
    // When the shoes leave too, nothing is on top.
    at(t0 + 1_000_000 + 8 * b2);
    assert_eq!(
        (
            count("mostly_shoes"),
            count("shoes_in_top_two"),
            count("favourite_on_top")
        ),
        (0, 0, 0)
    );
    assert!(node.profile("user:1").unwrap().texts.is_empty());
    assert_eq!(
        node.engine().string_reference_errors(),
        Vec::<String>::new()
    );
}

#[test]
fn merged_tops_add_up_value_by_value() {
    let (node, _) = top_node(START_MS);
    views(&node, "anon:c1", START_MS - 60_000, "shoes", 2);
    views(&node, "anon:c1", START_MS - 50_000, "hats", 1);
    views(&node, "user:1", START_MS - 40_000, "bags", 2);
    views(&node, "user:1", START_MS - 30_000, "hats", 2);
    // Alone, each has another favourite; together hats lead, 3 to 2 and 2.
    let login = RawEvent::new("view", "web", START_MS)
        .key("anon:c1")
        .key("user:1");
    node.ingest(&login).unwrap();
    let p = node.profile("user:1").unwrap();
    assert_eq!(
        p.texts[0],
        ("top(view.category, 1h)".to_string(), "hats".to_string())
    );
    assert_eq!(
        node.segment_count("shoes_in_top_two").unwrap(),
        0,
        "shoes and bags tie at 2, and bags were seen later: hats and bags are the top two"
    );
    assert_eq!(
        node.engine().string_reference_errors(),
        Vec::<String>::new()
    );
}

#[test]
fn top_rule_errors_say_what_it_needs() {
    let error = |rule: &str| {
        let text = TOP_CONFIG.replace(
            r#"rule = 'top(view.category, 1h) == "shoes"'"#,
            &format!("rule = '{rule}'"),
        );
        match Config::from_source(&Source::new("bad.toml", text)) {
            Ok(_) => panic!("`{rule}` was accepted"),
            Err(e) => e.diagnostics[0].message.clone(),
        }
    };
    assert_eq!(
        error("top(view.category, 1h, 2) == \"shoes\""),
        "`top(..., N)` is a list of values: test it with `in`"
    );
    assert_eq!(
        error("\"shoes\" in top(view.category, 1h, 9)"),
        "`top` keeps the 4 most frequent values, so N is 1 to 4, not 9"
    );
    assert_eq!(
        error("3 in top(view.category, 1h, 2)"),
        "`in top(...)` needs a string on its left, found a number"
    );
}

#[test]
fn offer_rules_and_ranks_read_first_last_and_top() {
    let offers = r#"
[offers.more_shoes]
description = "For customers who browse shoes most."
rule = 'top(product_view.category, 30d) == "shoes" and first(purchase.category) != "shoes"'
channels = ["web"]
value = 10
rank = "value + last(purchase.amount) / 10"
priority = 5
"#;
    let clock = Arc::new(ManualClock::new(START_MS + DAY_MS));
    let node = Node::new(config_with(offers), clock);
    let ask = |key: &str| node.decide(&common::ask(key, "web", 1, false)).unwrap();
    node.ingest(&purchase("user:1", "web", START_MS, Some("bags"), 150.0))
        .unwrap();
    node.ingest(&view("user:1", START_MS + 1000, "shoes"))
        .unwrap();
    let d = ask("user:1");
    assert_eq!(d.offers[0].offer, "more_shoes");
    assert_eq!(d.offers[0].score, 25.0, "10 + the last order's 150 / 10");
    // Browsing bags most now: the rule no longer holds.
    node.ingest(&view("user:1", START_MS + 2000, "bags"))
        .unwrap();
    node.ingest(&view("user:1", START_MS + 3000, "bags"))
        .unwrap();
    assert_ne!(ask("user:1").offers[0].offer, "more_shoes");
}
