//! Criterion benchmarks of decisions: 50 offers in config (the default config's six plus
//! 44 generated ones with rules, caps, budgets and ranking expressions), top 3, against
//! a population of 200,000 customers.
//!
//! Run: `cargo bench --bench decide` (results and the machine are in
//! docs/benchmarks.md). Target: under 5 µs per decision in-process.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use omnia::clock::ManualClock;
use omnia::config::{Config, Source, DEFAULT_CONFIG};
use omnia::engine::RawEvent;
use omnia::model::decision::DecisionRequest;
use omnia::node::Node;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW_MS: i64 = 1_772_445_600_000;
const CUSTOMERS: u64 = 200_000;
const CHANNELS: [&str; 5] = ["web", "app", "email", "sms", "store"];

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The default config with 44 more offers: 50 in all.
fn config_with_50_offers() -> Config {
    let segments = [
        "cart_abandoners",
        "new_visitors",
        "high_value",
        "lapsed_customers",
        "email_reachable",
        "multichannel_shoppers",
        "engaged_browsers",
    ];
    let mut text = DEFAULT_CONFIG.to_string();
    for i in 0..44 {
        let a = segments[i % segments.len()];
        let b = segments[(i / 3 + 2) % segments.len()];
        let rule = match i % 4 {
            0 => format!("in({a})"),
            1 => format!("in({a}) or in({b})"),
            2 => format!("in({a}) and score(engagement) > {}", i % 7),
            _ => format!("not in({a}) and score(purchase_propensity) > 0.0{}", i % 9),
        };
        let channels = match i % 3 {
            0 => "",
            1 => "channels = [\"web\", \"app\"]\n",
            _ => "channels = [\"email\", \"sms\", \"app\", \"store\"]\n",
        };
        let extra = match i % 5 {
            0 => "caps = [{ impressions = 3, per = \"1d\" }, { impressions = 1, per = \"1h\", channel = \"email\" }]\n",
            1 => "budget = { impressions = 1000000, per = \"1d\" }\ncooldown = { dismiss = \"2d\" }\n",
            2 => "rank = \"value * (1 + min(score(engagement), 50) / 50)\"\n",
            3 => "priority = 1\nrepeat = true\ncooldown = { accept = \"7d\" }\n",
            _ => "caps = [{ impressions = 5, per = \"7d\" }]\n",
        };
        text.push_str(&format!(
            "\n[offers.generated_{i}]\nrule = \"{rule}\"\n{channels}value = {}\npropensity = \"purchase_propensity\"\n{extra}",
            5 + i % 17
        ));
    }
    let config = Config::from_source(&Source::new("bench.toml", text)).expect("bench config");
    assert_eq!(config.decisions.offers.len(), 50);
    config
}

fn populated() -> Node {
    let engine = Node::new(config_with_50_offers(), Arc::new(ManualClock::new(NOW_MS)));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for c in 0..CUSTOMERS {
        let key = format!("user:{c}");
        let ago = |rng: &mut Rng, max_s: u64| NOW_MS - rng.below(max_s) as i64 * 1000;
        for _ in 0..rng.below(4) {
            let channel = ["web", "app"][rng.below(2) as usize];
            engine
                .ingest(&RawEvent::new("page_view", channel, ago(&mut rng, 3 * 86_400)).key(&key))
                .unwrap();
        }
        if rng.below(3) == 0 {
            engine
                .ingest(
                    &RawEvent::new("add_to_cart", "web", ago(&mut rng, 3 * 86_400))
                        .key(&key)
                        .prop("price", 80.0),
                )
                .unwrap();
        }
        if rng.below(3) == 0 {
            engine
                .ingest(
                    &RawEvent::new("purchase", "store", ago(&mut rng, 60 * 86_400))
                        .key(&key)
                        .prop("amount", 20.0 + rng.below(900) as f64),
                )
                .unwrap();
        }
    }
    engine
}

fn request(key: String, channel: &str, record: bool, explain: bool) -> DecisionRequest {
    DecisionRequest {
        key,
        channel: channel.into(),
        top: 3,
        record_impression: record,
        explain,
        context: Vec::new(),
    }
}

fn decisions(c: &mut Criterion) {
    let engine = populated();
    let mut group = c.benchmark_group("decide_50_offers_top3");
    let mut rng = Rng(7);
    let next = |rng: &mut Rng| {
        (
            format!("user:{}", rng.below(CUSTOMERS)),
            CHANNELS[rng.below(5) as usize],
        )
    };
    group.bench_function("known_customer", |b| {
        b.iter(|| {
            let (key, channel) = next(&mut rng);
            black_box(engine.decide(&request(key, channel, false, false)).unwrap())
        })
    });
    group.bench_function("known_customer_explained", |b| {
        b.iter(|| {
            let (key, channel) = next(&mut rng);
            black_box(engine.decide(&request(key, channel, false, true)).unwrap())
        })
    });
    group.bench_function("new_visitor", |b| {
        b.iter(|| {
            let key = format!("anon:new-{}", rng.below(1 << 40));
            black_box(engine.decide(&request(key, "web", false, false)).unwrap())
        })
    });
    group.bench_function("known_customer_recording_impressions", |b| {
        b.iter(|| {
            let (key, channel) = next(&mut rng);
            black_box(engine.decide(&request(key, channel, true, false)).unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
