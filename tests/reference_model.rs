//! The engine against a deliberately naive reference model.
//!
//! The model keeps every accepted event of every person (a person is a set of keys that
//! some event linked) and recomputes every rule from the raw events at the current
//! time: no buckets kept, no incremental state, no timers. Random streams of events
//! (several keys per person, links and merges, out-of-order and slightly-future
//! timestamps, events too far ahead that must be rejected) and clock jumps are applied
//! to both; after every step each person's membership of every segment, every segment
//! count, and set-algebra counts and member lists must agree.
//!
//! The change stream is checked on the same streams: every CHANGE record the engine
//! appends to its journal, applied in order to an empty set per segment, gives the
//! segment's members after every step (merges, timers and reads that run them
//! included).
//!
//! The model shares the documented semantics, not the code: a window of `W` with `B`
//! buckets counts events whose bucket `ts / (W/B)` is among the `B` latest at `now`;
//! events ahead of the clock (within the skew) count as now; attributes take the value
//! of the newest event, `first` and `last` the value of the earliest and latest matching
//! event that carries the property (values here are a function of the timestamp, so
//! ties agree).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use omnia::clock::{Clock, ManualClock};
use omnia::config::{Config, Source};
use omnia::engine::{Journal, RawEvent};
use omnia::model::ChangeKind;
use omnia::node::Node;
use proptest::prelude::*;

const CONFIG: &str = r#"
channels = ["web", "app", "store"]

[engine]
shards = 4
window_buckets = 4
max_future_skew = "1m"

[identity]
namespaces = ["user", "anon"]

[attributes]
country = "string"
vip = "bool"
age = "number"

[events.view]
properties = { category = "string", color = "string" }

[events.cart]

[events.buy]
properties = { amount = "number", category = "string", color = "string", size = "number" }

[events.profile]

[segments.browsing]
rule = "count(view on web, 1h) >= 2"

[segments.shoe_buyers]
rule = "sum(buy.amount where category == \"shoes\", 2h) > 50"

[segments.abandoners]
rule = "since(cart) > 10m and since(cart) < 1h and since(buy) > since(cart)"

[segments.lapsed]
rule = "ever(buy) and since(buy) > 30m"

[segments.multichannel]
rule = "active_channels(1h) >= 2"

[segments.newcomers]
rule = "since(first_seen) < 20m and not ever(buy)"

[segments.benelux]
rule = "attr.country in [\"NL\", \"BE\"] and not attr.vip == true"

[segments.store_regulars]
rule = "has_key(user) and since(any on store) < 40m"

[segments.hot]
rule = "in(abandoners) or (in(multichannel) and count(any, 40m) > 3)"

[segments.grown_ups]
rule = "attr.age >= 30"

[segments.engaged]
rule = "score(engagement) > 3.5"

[segments.likely]
rule = "score(propensity) > 0.5"

[segments.last_saw_black]
rule = 'last(view.color) == "black"'

[segments.first_store_buy_red]
rule = 'first(buy.color on store) == "red"'

[segments.same_color_again]
rule = "ever(buy) and ever(view) and last(view.color) == first(buy.color where category == \"shoes\")"

[segments.big_feet]
rule = "last(buy.size) >= 40 or first(buy.size on web) in [35, 36]"

[segments.mostly_red]
rule = 'top(view.color, 50m) == "red"'

[segments.black_among_web_buys]
rule = '"black" in top(buy.color on web, 100m, 2) and not last(view.color) in top(view.color, 50m, 1)'

[triggers]
stream = ["*"]

[scores.engagement]
kind = "decayed"
half_life = "10m"
weights = { view = 1, cart = 2, buy = 4 }

[scores.propensity]
kind = "logistic"
intercept = -2.0
features = [
  { expr = "count(view, 1h)", weight = 0.5 },
  { expr = "in(lapsed)", weight = 1.0 },
]
"#;

const SEGMENTS: [&str; 18] = [
    "browsing",
    "shoe_buyers",
    "abandoners",
    "lapsed",
    "multichannel",
    "newcomers",
    "benelux",
    "store_regulars",
    "hot",
    "grown_ups",
    "engaged",
    "likely",
    "last_saw_black",
    "first_store_buy_red",
    "same_color_again",
    "big_feet",
    "mostly_red",
    "black_among_web_buys",
];
const QUERIES: [&str; 4] = [
    "abandoners and not multichannel",
    "browsing or lapsed",
    "not newcomers",
    "(hot or engaged) and not (benelux or likely)",
];
const CHANNELS: [&str; 3] = ["web", "app", "store"];
const START_MS: i64 = 1_767_225_600_000;

#[derive(Debug, Clone)]
struct Ev {
    kind: &'static str,
    channel: usize,
    ts: i64,
    amount: f64,
    shoes: bool,
}

#[derive(Debug, Default)]
struct Person {
    keys: Vec<String>,
    events: Vec<Ev>,
    alive: bool,
}

#[derive(Default)]
struct Model {
    people: Vec<Person>,
    owner: HashMap<String, usize>,
}

fn country(ts: i64) -> &'static str {
    ["NL", "BE", "DE"][(ts % 3) as usize]
}

/// The `color` of a view or a purchase at `ts`.
fn color(ts: i64) -> &'static str {
    ["black", "white", "red", "green"][(ts / 7 % 4) as usize]
}

/// The `size` of a purchase at `ts`.
fn size(ts: i64) -> f64 {
    (34 + ts % 9) as f64
}

impl Model {
    fn apply(&mut self, keys: &[String], ev: Ev) {
        let mut owners: Vec<usize> = keys
            .iter()
            .filter_map(|k| self.owner.get(k).copied())
            .collect();
        owners.sort_unstable();
        owners.dedup();
        let target = match owners.first() {
            Some(&first) => first,
            None => {
                self.people.push(Person {
                    alive: true,
                    ..Person::default()
                });
                self.people.len() - 1
            }
        };
        for &other in owners.iter().skip(1) {
            let moved = std::mem::take(&mut self.people[other]);
            for k in &moved.keys {
                self.owner.insert(k.clone(), target);
            }
            self.people[target].keys.extend(moved.keys);
            self.people[target].events.extend(moved.events);
        }
        for k in keys {
            if !self.owner.contains_key(k) {
                self.owner.insert(k.clone(), target);
                self.people[target].keys.push(k.clone());
            }
        }
        self.people[target].events.push(ev);
    }
}

/// Rules recomputed from raw events at `now` (seconds).
struct View<'a> {
    p: &'a Person,
    now: i64,
}

impl View<'_> {
    fn window(&self, width: i64, matches: impl Fn(&Ev) -> bool, value: impl Fn(&Ev) -> f64) -> f64 {
        let n = self.now / width;
        self.p
            .events
            .iter()
            .filter(|e| matches(e) && e.ts / width > n - 4 && e.ts / width <= n)
            .map(value)
            .sum()
    }
    fn since(&self, matches: impl Fn(&Ev) -> bool) -> f64 {
        self.p
            .events
            .iter()
            .filter(|e| matches(e))
            .map(|e| e.ts)
            .max()
            .map_or(f64::INFINITY, |t| (self.now - t) as f64)
    }
    /// The timestamp of the earliest (`last`: latest) matching event; values are a
    /// function of it.
    fn first_or_last(&self, last: bool, matches: impl Fn(&Ev) -> bool) -> Option<i64> {
        let times = self.p.events.iter().filter(|e| matches(e)).map(|e| e.ts);
        if last {
            times.max()
        } else {
            times.min()
        }
    }
    /// The colors of matching events in a window of buckets `width` wide, most frequent
    /// first, then by latest event (four colors: as many as a top keeps, so it is exact).
    fn top(&self, width: i64, matches: impl Fn(&Ev) -> bool) -> Vec<&'static str> {
        let n = self.now / width;
        let mut counts: Vec<(&'static str, usize, i64)> = Vec::new();
        for e in self
            .p
            .events
            .iter()
            .filter(|e| matches(e) && e.ts / width > n - 4 && e.ts / width <= n)
        {
            let c = color(e.ts);
            match counts.iter_mut().find(|(x, _, _)| *x == c) {
                Some(entry) => {
                    entry.1 += 1;
                    entry.2 = entry.2.max(e.ts);
                }
                None => counts.push((c, 1, e.ts)),
            }
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)));
        counts.into_iter().map(|(c, _, _)| c).collect()
    }
    fn ever(&self, kind: &str) -> bool {
        self.p.events.iter().any(|e| e.kind == kind)
    }
    fn newest(&self) -> Option<i64> {
        self.p
            .events
            .iter()
            .filter(|e| e.kind == "profile")
            .map(|e| e.ts)
            .max()
    }
    fn engagement(&self) -> f64 {
        let w = |k: &str| match k {
            "view" => 1.0,
            "cart" => 2.0,
            "buy" => 4.0,
            _ => 0.0,
        };
        self.p
            .events
            .iter()
            .map(|e| w(e.kind) * (-((self.now - e.ts) as f64) / 600.0).exp2())
            .sum()
    }
    fn member(&self, segment: &str) -> bool {
        match segment {
            "browsing" => self.window(900, |e| e.kind == "view" && e.channel == 0, |_| 1.0) >= 2.0,
            "shoe_buyers" => self.window(1800, |e| e.kind == "buy" && e.shoes, |e| e.amount) > 50.0,
            "abandoners" => {
                let cart = self.since(|e| e.kind == "cart");
                cart > 600.0 && cart < 3600.0 && self.since(|e| e.kind == "buy") > cart
            }
            "lapsed" => self.ever("buy") && self.since(|e| e.kind == "buy") > 1800.0,
            "multichannel" => {
                (0..3)
                    .filter(|&c| self.since(|e| e.channel == c) < 3600.0)
                    .count()
                    >= 2
            }
            "newcomers" => {
                let first = self.p.events.iter().map(|e| e.ts).min().unwrap_or(i64::MAX);
                ((self.now - first) as f64) < 1200.0 && !self.ever("buy")
            }
            "benelux" => self
                .newest()
                .is_some_and(|t| ["NL", "BE"].contains(&country(t)) && t % 2 != 0),
            "store_regulars" => {
                self.p.keys.iter().any(|k| k.starts_with("user:"))
                    && self.since(|e| e.channel == 2) < 2400.0
            }
            "hot" => {
                self.member("abandoners")
                    || (self.member("multichannel") && self.window(600, |_| true, |_| 1.0) > 3.0)
            }
            "grown_ups" => self.newest().is_some_and(|t| 20 + t % 30 >= 30),
            "engaged" => self.engagement() > 3.5,
            "likely" => {
                let z = -2.0
                    + 0.5 * self.window(900, |e| e.kind == "view", |_| 1.0)
                    + if self.member("lapsed") { 1.0 } else { 0.0 };
                1.0 / (1.0 + (-z).exp()) > 0.5
            }
            "last_saw_black" => self
                .first_or_last(true, |e| e.kind == "view")
                .is_some_and(|t| color(t) == "black"),
            "first_store_buy_red" => self
                .first_or_last(false, |e| e.kind == "buy" && e.channel == 2)
                .is_some_and(|t| color(t) == "red"),
            "same_color_again" => {
                let seen = self.first_or_last(true, |e| e.kind == "view").map(color);
                let bought = self
                    .first_or_last(false, |e| e.kind == "buy" && e.shoes)
                    .map(color);
                // Two unset strings are equal, as two unset attributes are.
                self.ever("buy") && self.ever("view") && seen == bought
            }
            "big_feet" => {
                self.first_or_last(true, |e| e.kind == "buy")
                    .is_some_and(|t| size(t) >= 40.0)
                    || self
                        .first_or_last(false, |e| e.kind == "buy" && e.channel == 0)
                        .is_some_and(|t| [35.0, 36.0].contains(&size(t)))
            }
            // Windows no other segment has, so that no other timer hides a missed one.
            "mostly_red" => self.top(750, |e| e.kind == "view").first() == Some(&"red"),
            "black_among_web_buys" => {
                let buys = self.top(1500, |e| e.kind == "buy" && e.channel == 0);
                let views = self.top(750, |e| e.kind == "view");
                // An unset last value is in no list.
                let last = self.first_or_last(true, |e| e.kind == "view").map(color);
                buys.iter().take(2).any(|&c| c == "black")
                    && !last.is_some_and(|c| views.first() == Some(&c))
            }
            other => panic!("no model for {other}"),
        }
    }
    fn query(&self, q: &str) -> bool {
        let m = |s: &str| self.member(s);
        match q {
            "abandoners and not multichannel" => m("abandoners") && !m("multichannel"),
            "browsing or lapsed" => m("browsing") || m("lapsed"),
            "not newcomers" => !m("newcomers"),
            "(hot or engaged) and not (benelux or likely)" => {
                (m("hot") || m("engaged")) && !(m("benelux") || m("likely"))
            }
            other => panic!("no model for {other}"),
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Event {
        keys: Vec<String>,
        kind: usize,
        channel: usize,
        offset_s: i64,
        amount: u8,
        shoes: bool,
    },
    Wait {
        seconds: i64,
    },
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..5u8).prop_map(|i| format!("user:u{i}")),
        (0..9u8).prop_map(|i| format!("anon:a{i}"))
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        // Offsets on a minute grid (and a few off it): rule thresholds are whole minutes,
        // so boundary instants are actually visited.
        6 => (prop::collection::vec(key(), 1..=2), 0..4usize, 0..3usize, prop_oneof![4 => (-67..2i64).prop_map(|m| m * 60), 1 => -4000..90i64], 1..60u8, any::<bool>())
            .prop_map(|(keys, kind, channel, offset_s, amount, shoes)| Step::Event { keys, kind, channel, offset_s, amount, shoes }),
        // Waits that land on, just before and just after minute boundaries.
        4 => prop_oneof![Just(1i64), Just(59), Just(60), Just(61), 1..5i64, Just(300), Just(600), 60..2000i64, Just(1800), 1500..5000i64]
            .prop_map(|seconds| Step::Wait { seconds }),
    ]
}

/// A journal in memory: what the engine appended, for the change stream's check.
#[derive(Default)]
struct Memory {
    records: std::sync::Mutex<Vec<(u8, Vec<u8>)>>,
}

impl Journal for Memory {
    fn writable(&self) -> Result<(), String> {
        Ok(())
    }
    fn append(&self, kind: u8, body: &mut dyn FnMut(&mut Vec<u8>)) -> u64 {
        let mut bytes = Vec::new();
        body(&mut bytes);
        let mut records = self.records.lock().unwrap();
        records.push((kind, bytes));
        records.len() as u64
    }
    fn last_appended(&self) -> u64 {
        self.records.lock().unwrap().len() as u64
    }
    fn durable_now(&self) -> u64 {
        self.last_appended()
    }
    fn durable(
        &self,
        _: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async { Ok(()) })
    }
    fn wait_durable(&self, _: u64) -> Result<(), String> {
        Ok(())
    }
    fn sync_through(&self, _: u64) -> Result<(), String> {
        Ok(())
    }
    fn bytes_written(&self) -> u64 {
        0
    }
}

/// Applies the CHANGE records appended since `seen` to `sets` (segment name to member
/// ids), then checks every segment's set against its members.
fn check_changes(
    engine: &Node,
    journal: &Memory,
    seen: &mut usize,
    sets: &mut HashMap<String, BTreeSet<u32>>,
    step: usize,
) {
    let records = journal.records.lock().unwrap();
    for (kind, body) in &records[*seen..] {
        if *kind != omnia::engine::journal::kind::CHANGE {
            continue;
        }
        let change = omnia::engine::changes::decode(body).unwrap();
        let set = sets.entry(change.segment.clone()).or_default();
        match change.kind {
            ChangeKind::Enter => assert!(set.insert(change.customer), "{change:?} twice"),
            ChangeKind::Exit => assert!(set.remove(&change.customer), "{change:?} of a non-member"),
            ChangeKind::Reset => set.clear(),
        }
    }
    *seen = records.len();
    drop(records);
    for segment in SEGMENTS {
        let query = engine.engine().query(segment).unwrap();
        let members: BTreeSet<u32> = engine
            .engine()
            .members(&query, 0, 10_000)
            .members
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let streamed = sets.get(segment).cloned().unwrap_or_default();
        assert_eq!(
            streamed, members,
            "step {step}: the stream of {segment} against its members"
        );
    }
}

fn check(engine: &Node, model: &Model, now: i64, step: usize) {
    let people: Vec<&Person> = model
        .people
        .iter()
        .filter(|p| p.alive && !p.keys.is_empty())
        .collect();
    assert_eq!(
        engine.stats().customers as usize,
        people.len(),
        "customers after step {step}"
    );
    for segment in SEGMENTS {
        let mut expected = 0;
        for p in &people {
            let member = View { p, now }.member(segment);
            expected += member as u64;
            let key = &p.keys[0];
            assert_eq!(
                engine.engine().contains(segment, key).unwrap(),
                member,
                "step {step}: {key} in {segment} at {now}: {:#?}",
                engine.profile(key)
            );
        }
        assert_eq!(
            engine.segment_count(segment).unwrap(),
            expected,
            "count of {segment} after step {step}"
        );
    }
    for q in QUERIES {
        let query = engine.engine().query(q).unwrap();
        let expected: BTreeSet<usize> = people
            .iter()
            .enumerate()
            .filter(|(_, p)| View { p, now }.query(q))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            engine.engine().count(&query),
            expected.len() as u64,
            "count of `{q}` after step {step}"
        );
        // Page through the members three at a time and map them back to people.
        let mut got = BTreeSet::new();
        let mut cursor = 0;
        loop {
            let page = engine.engine().members(&query, cursor, 3);
            for (_, key) in &page.members {
                let owner = model.owner[key];
                let index = people
                    .iter()
                    .position(|p| std::ptr::eq(*p, &model.people[owner]))
                    .expect("a live person");
                assert!(got.insert(index), "a member listed twice");
            }
            match page.next_cursor {
                Some(next) => cursor = next,
                None => break,
            }
        }
        assert_eq!(got, expected, "members of `{q}` after step {step}");
    }
}

fn run(steps: &[Step]) {
    let clock = Arc::new(ManualClock::new(START_MS));
    let config = Config::from_source(&Source::new("reference.toml", CONFIG))
        .unwrap_or_else(|e| panic!("{e}"));
    let engine = Node::new(config, clock.clone());
    let journal = Arc::new(Memory::default());
    engine.engine().attach_journal(journal.clone());
    let (mut seen, mut sets) = (0, HashMap::new());
    let mut model = Model::default();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Event {
                keys,
                kind,
                channel,
                offset_s,
                amount,
                shoes,
            } => {
                let now_ms = clock.now_ms();
                // Millisecond jitter, so that timestamps are not all whole seconds.
                let ts_ms =
                    now_ms + offset_s * 1000 + (*amount as i64 * 37) % 1000 * (*amount as i64 % 2);
                let kind = ["view", "cart", "buy", "profile"][*kind];
                let mut event = RawEvent::new(kind, CHANNELS[*channel], ts_ms);
                for k in keys {
                    event = event.key(k);
                }
                let ts = (ts_ms / 1000).min(now_ms / 1000);
                match kind {
                    "view" => {
                        event = event
                            .prop("category", if *shoes { "shoes" } else { "bags" })
                            .prop("color", color(ts))
                    }
                    "buy" => {
                        event = event
                            .prop("amount", *amount as f64)
                            .prop("category", if *shoes { "shoes" } else { "bags" })
                            .prop("color", color(ts))
                            .prop("size", size(ts))
                    }
                    "profile" => {
                        event = event
                            .attr("country", country(ts))
                            .attr("vip", ts % 2 == 0)
                            .attr("age", (20 + ts % 30) as f64)
                    }
                    _ => {}
                }
                let result = engine.ingest(&event);
                if ts_ms > now_ms + 60_000 {
                    assert!(
                        result.is_err(),
                        "an event {offset_s}s ahead must be rejected"
                    );
                    continue;
                }
                result.unwrap_or_else(|e| panic!("step {i}: {e}"));
                model.apply(
                    keys,
                    Ev {
                        kind,
                        channel: *channel,
                        ts,
                        amount: *amount as f64,
                        shoes: *shoes,
                    },
                );
            }
            Step::Wait { seconds } => clock.advance_secs(*seconds),
        }
        check(&engine, &model, clock.now_ms() / 1000, i);
        check_changes(&engine, &journal, &mut seen, &mut sets, i);
    }
}

proptest! {
    // 64 cases in CI; `PROPTEST_CASES=5000 cargo test --release --test reference_model` for a long run.
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64), ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_the_naive_model(steps in prop::collection::vec(step(), 1..60)) {
        run(&steps);
    }
}

/// A fixed long stream, so that every CI run also covers a long history.
#[test]
fn a_long_fixed_stream_agrees_with_the_model() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(RunnerConfig::default(), rng);
    let steps = prop::collection::vec(step(), 400)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    run(&steps);
}
