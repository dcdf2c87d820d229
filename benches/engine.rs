//! Criterion benchmarks of the engine's hot paths, with the embedded default config.
//!
//! Run: `cargo bench --bench engine` (results and the machine are recorded in
//! docs/benchmarks.md). The population is built once: one million customers with a
//! realistic mix of browsing, carts, purchases and logins over the past 60 days, so
//! segment bitmaps are the size the targets speak of.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use omnia::clock::ManualClock;
use omnia::config::Config;
use omnia::engine::{Engine, Event, RawEvent};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW_MS: i64 = 1_772_445_600_000;
const CUSTOMERS: u64 = 1_000_000;

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Resident memory of this process, in bytes (Linux).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn populated() -> Engine {
    let before = resident_bytes();
    let engine: Engine = Engine::new(
        Config::embedded_default().expect("default config"),
        Arc::new(ManualClock::new(NOW_MS)),
    );
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    for c in 0..CUSTOMERS {
        let anon = format!("anon:{c}");
        let ago = |rng: &mut Rng, max_s: u64| NOW_MS - rng.below(max_s) as i64 * 1000;
        let channel = ["web", "app"][rng.below(2) as usize];
        engine
            .ingest(&RawEvent::new("page_view", channel, ago(&mut rng, 60 * 86_400)).key(&anon))
            .unwrap();
        if rng.below(3) == 0 {
            engine
                .ingest(
                    &RawEvent::new("add_to_cart", channel, ago(&mut rng, 3 * 86_400))
                        .key(&anon)
                        .prop("price", 80.0),
                )
                .unwrap();
        }
        if rng.below(3) == 0 {
            let amount = 20.0 + rng.below(900) as f64;
            engine
                .ingest(
                    &RawEvent::new(
                        "purchase",
                        ["web", "app", "store"][rng.below(3) as usize],
                        ago(&mut rng, 60 * 86_400),
                    )
                    .key(&anon)
                    .prop("amount", amount),
                )
                .unwrap();
        }
        if rng.below(2) == 0 {
            let event = RawEvent::new("identify", "app", ago(&mut rng, 30 * 86_400))
                .key(&anon)
                .key(&format!("user:{c}"))
                .key(&format!("email:c{c}@example.com"))
                .attr("email_opt_in", true);
            engine.ingest(&event).unwrap();
        }
    }
    let stats = engine.stats();
    eprintln!(
        "population: {} customers, {} keys, built in {:.1?}; profile rows {} bytes/customer ({} bytes allocated), resident memory {:.0} bytes/customer",
        stats.customers,
        stats.keys,
        started.elapsed(),
        engine.profile_row_bytes(),
        stats.profile_bytes,
        (resident_bytes().saturating_sub(before)) as f64 / stats.customers as f64
    );
    for segment in &engine.config().segments {
        eprintln!(
            "  {:<24} {:>8}",
            segment.name,
            engine.segment_count(&segment.name).unwrap()
        );
    }
    engine
}

/// Purchases carry an amount, as the default config's sums expect.
fn with_amount(raw: RawEvent) -> RawEvent {
    if raw.event == "purchase" {
        raw.prop("amount", 120.0)
    } else {
        raw
    }
}

fn benches(c: &mut Criterion) {
    let engine = populated();

    // Apply one event to a known customer: the ingest hot path after decoding.
    let mut rng = Rng(42);
    let kinds = [
        "page_view",
        "product_view",
        "add_to_cart",
        "purchase",
        "email_click",
        "store_visit",
    ];
    let events: Vec<Event> = (0..4096)
        .map(|_| {
            let c = rng.below(CUSTOMERS);
            let kind = kinds[rng.below(kinds.len() as u64) as usize];
            let raw = RawEvent::new(
                kind,
                ["web", "app", "email", "store"][rng.below(4) as usize],
                NOW_MS - rng.below(86_400) as i64 * 1000,
            )
            .key(&format!("anon:{c}"));
            engine.resolve(&with_amount(raw)).unwrap()
        })
        .collect();
    let mut i = 0;
    c.bench_function("apply one event (default config, 1M customers)", |b| {
        b.iter(|| {
            i = (i + 1) % events.len();
            black_box(engine.apply(&events[i]).unwrap());
        })
    });

    // The same, over 1,000 customers whose rows stay in cache: the CPU cost alone.
    let hot: Vec<Event> = (0..4096)
        .map(|n| {
            let kind = kinds[n % kinds.len()];
            let raw = RawEvent::new(
                kind,
                ["web", "app", "email", "store"][n % 4],
                NOW_MS - (n as i64 % 3600) * 1000,
            )
            .key(&format!("anon:{}", n % 1000));
            engine.resolve(&with_amount(raw)).unwrap()
        })
        .collect();
    c.bench_function(
        "apply one event (default config, 1,000 hot customers)",
        |b| {
            b.iter(|| {
                i = (i + 1) % hot.len();
                black_box(engine.apply(&hot[i]).unwrap());
            })
        },
    );

    let keys: Vec<String> = (0..4096)
        .map(|_| format!("anon:{}", rng.below(CUSTOMERS)))
        .collect();
    let cart_abandoners = engine.config().segment_id("cart_abandoners").unwrap();
    c.bench_function("evaluate a rule (cart_abandoners, one customer)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(engine.evaluate(cart_abandoners, &keys[i]));
        })
    });

    c.bench_function("identity resolution (key to customer id)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(engine.customer_of(&keys[i]));
        })
    });

    c.bench_function("segment count (multichannel_shoppers, 1M customers)", |b| {
        b.iter(|| black_box(engine.segment_count("multichannel_shoppers").unwrap()))
    });

    let query = engine
        .query("(new_visitors or high_value) and not email_reachable")
        .unwrap();
    c.bench_function("three-segment set algebra count (1M customers)", |b| {
        b.iter(|| black_box(engine.count(&query)))
    });
}

criterion_group! {
    name = engine;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4)).sample_size(40);
    targets = benches
}
criterion_main!(engine);
