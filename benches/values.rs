//! What `first`, `last` and `top` cost an event: the default config against the same
//! config with four value aggregates (two strings, one number, one with a filter), or
//! with two tops, read by segments, on 1,000 customers whose rows stay in cache (the CPU
//! cost alone), for `apply` (the row update and the segments it re-evaluates) and for
//! `resolve` + `apply` (resolving interns the string values they keep).
//!
//! Run: `cargo bench --bench values` (results in docs/benchmarks.md).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use omnia::clock::ManualClock;
use omnia::config::{Config, Source};
use omnia::engine::{Engine, Event, RawEvent};
use omnia::model::RawValue;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW_MS: i64 = 1_772_445_600_000;

const VALUES: &str = r#"
[segments.first_bought_shoes]
rule = 'first(purchase.category) == "shoes"'

[segments.last_order_over_100]
rule = "last(purchase.amount) > 100"

[segments.browsing_their_first_category]
rule = "last(product_view.category) == first(purchase.category)"

[segments.first_big_order_bags]
rule = 'first(purchase.category where amount >= 50) == "bags"'
"#;

const TOP: &str = r#"
[segments.mostly_shoes]
rule = 'top(product_view.category, 30d) == "shoes"'

[segments.shoes_among_favourites]
rule = '"shoes" in top(purchase.category, 90d, 3)'
"#;

fn engine(text: &str) -> Engine {
    let config = Config::from_source(&Source::new("bench.toml", text.to_string())).unwrap();
    Engine::new(config, Arc::new(ManualClock::new(NOW_MS)))
}

/// Product views and purchases of 1,000 customers, with categories and amounts.
fn raw_events() -> Vec<RawEvent> {
    let categories = ["shoes", "bags", "hats", "coats", "socks"];
    (0..4096)
        .map(|n| {
            let key = format!("anon:{}", n % 1000);
            let at = NOW_MS - (4096 - n as i64) * 1000;
            let category = RawValue::Str(categories[n * 7 % 5].into());
            if n % 3 == 0 {
                RawEvent::new("purchase", "web", at)
                    .key(&key)
                    .prop("amount", RawValue::Num((n % 200) as f64))
                    .prop("category", category)
            } else {
                RawEvent::new("product_view", "web", at)
                    .key(&key)
                    .prop("category", category)
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let base = omnia::config::DEFAULT_CONFIG
        .split("\n# Triggers:")
        .next()
        .unwrap()
        .to_string();
    let with_values = format!("{base}\n{VALUES}");
    let with_top = format!("{base}\n{TOP}");
    let raw = raw_events();
    for (name, text) in [
        ("default config", base.clone()),
        ("default config + 4 first/last", with_values),
        ("default config + 2 top", with_top),
    ] {
        let engine = engine(&text);
        for e in &raw {
            engine.ingest(e).unwrap();
        }
        let events: Vec<Event> = raw.iter().map(|e| engine.resolve(e).unwrap()).collect();
        let mut i = 0;
        c.bench_function(
            &format!("apply one event ({name}, 1,000 hot customers)"),
            |b| {
                b.iter(|| {
                    i = (i + 1) % events.len();
                    black_box(engine.apply(&events[i]).unwrap());
                })
            },
        );
        c.bench_function(
            &format!("resolve and apply one event ({name}, 1,000 hot customers)"),
            |b| {
                b.iter(|| {
                    i = (i + 1) % raw.len();
                    black_box(engine.ingest(&raw[i]).unwrap());
                })
            },
        );
        println!("profile row ({name}): {} bytes", engine.profile_row_bytes());
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
