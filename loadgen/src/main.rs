//! `loadgen`: omnichannel traffic for omnia, measured honestly.
//!
//! Today it drives the engine in-process (the TCP target arrives with the protocol):
//! `--threads` workers each own a slice of a population of customers, walk them through
//! journeys (anonymous browsing on web or app, product views, carts, logins that merge
//! the anonymous profile into the account, purchases on web, app or in store, e-mail
//! clicks, coupons, unsubscribes), and apply events in batches. Popularity is Zipf
//! distributed, so a few customers are very active, as in real traffic. Time is
//! simulated: the engine clock advances by `--sim-seconds-per-batch` per batch, so
//! windows slide and time-driven segments move during the run.
//!
//! It reports events per second and the latency of applying one batch (HdrHistogram,
//! p50 to max). Runs are deterministic for a seed, bounded by `--seconds`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use mimalloc::MiMalloc;
use omnia::clock::ManualClock;
use omnia::config::Config;
use omnia::engine::{Engine, Event, RawEvent};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Omnichannel traffic for omnia, with honest measurements"
)]
struct Options {
    /// Customers in the population.
    #[arg(long, default_value_t = 100_000)]
    customers: u64,
    /// Worker threads applying events.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Events per batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// How long to run, in seconds (after warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Warm-up before measuring, in seconds.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Simulated seconds that pass per batch.
    #[arg(long, default_value_t = 1)]
    sim_seconds_per_batch: i64,
    /// Zipf exponent of customer popularity.
    #[arg(long, default_value_t = 1.05)]
    zipf: f64,
    /// Config file; the embedded default if omitted.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// Where a customer is in its journey.
#[derive(Clone, Copy, PartialEq)]
enum Stage {
    Anonymous,
    Carted,
    LoggedIn,
    Customer,
    Unsubscribed,
}

struct Journeys {
    stages: Vec<Stage>,
    rng: SmallRng,
    first: u64,
    zipf: Zipf<f64>,
}

const CHANNELS: [&str; 2] = ["web", "app"];
const CATEGORIES: [&str; 4] = ["shoes", "bags", "coats", "hats"];

impl Journeys {
    /// The next event of a customer chosen by popularity, at simulated time `now`.
    fn next(&mut self, now: i64) -> RawEvent {
        let c = self.first + self.zipf.sample(&mut self.rng) as u64 - 1;
        let slot = (c - self.first) as usize;
        let rng = &mut self.rng;
        let anon = format!("anon:{c}");
        let user = format!("user:{c}");
        let channel = CHANNELS[rng.random_range(0..2)];
        let sku = format!("SKU-{}", rng.random_range(0..5000));
        let category = CATEGORIES[rng.random_range(0..4)];
        let price = rng.random_range(10..400) as f64;
        let stage = self.stages[slot];
        let roll: f64 = rng.random();
        let (event, next) = match stage {
            Stage::Anonymous if roll < 0.55 => (
                RawEvent::new("page_view", channel, now)
                    .key(&anon)
                    .prop("url", "/c/shoes"),
                stage,
            ),
            Stage::Anonymous if roll < 0.85 => (
                RawEvent::new("product_view", channel, now)
                    .key(&anon)
                    .prop("sku", sku)
                    .prop("category", category)
                    .prop("price", price),
                stage,
            ),
            Stage::Anonymous => (
                RawEvent::new("add_to_cart", channel, now)
                    .key(&anon)
                    .prop("sku", sku)
                    .prop("category", category)
                    .prop("price", price),
                Stage::Carted,
            ),
            Stage::Carted if roll < 0.5 => (
                // Login on the app: the anonymous profile merges into the account.
                RawEvent::new("identify", "app", now)
                    .key(&user)
                    .key(&anon)
                    .key(&format!("email:c{c}@example.com"))
                    .attr("email_opt_in", true)
                    .attr("country", ["NL", "BE", "DE"][rng.random_range(0..3)]),
                Stage::LoggedIn,
            ),
            Stage::Carted => (RawEvent::new("page_view", channel, now).key(&anon), stage),
            Stage::LoggedIn if roll < 0.3 => (
                RawEvent::new("email_click", "email", now)
                    .key(&format!("email:c{c}@example.com"))
                    .prop("campaign", "cart-reminder"),
                stage,
            ),
            Stage::LoggedIn if roll < 0.7 => {
                let where_ = ["web", "app", "store"][rng.random_range(0..3)];
                (
                    RawEvent::new("purchase", where_, now)
                        .key(&user)
                        .prop("amount", price)
                        .prop("sku", sku)
                        .prop("category", category),
                    Stage::Customer,
                )
            }
            Stage::LoggedIn => (
                RawEvent::new("product_view", channel, now)
                    .key(&user)
                    .prop("sku", sku)
                    .prop("category", category)
                    .prop("price", price),
                stage,
            ),
            Stage::Customer if roll < 0.2 => (
                RawEvent::new("coupon_issued", "email", now)
                    .key(&format!("email:c{c}@example.com"))
                    .prop("coupon", "SPRING10")
                    .prop("value", 10.0),
                stage,
            ),
            Stage::Customer if roll < 0.35 => (
                RawEvent::new("coupon_redeemed", "store", now)
                    .key(&format!("card:{c}"))
                    .key(&user)
                    .prop("coupon", "SPRING10")
                    .prop("value", 10.0),
                stage,
            ),
            Stage::Customer if roll < 0.37 => (
                RawEvent::new("unsubscribe", "email", now).key(&user),
                Stage::Unsubscribed,
            ),
            Stage::Customer | Stage::Unsubscribed if roll < 0.6 => {
                (RawEvent::new("page_view", channel, now).key(&user), stage)
            }
            Stage::Customer | Stage::Unsubscribed => (
                RawEvent::new("purchase", channel, now)
                    .key(&user)
                    .prop("amount", price)
                    .prop("category", category),
                stage,
            ),
        };
        self.stages[slot] = next;
        event
    }
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    anyhow::ensure!(
        options.threads >= 1 && options.batch >= 1 && options.customers >= options.threads as u64,
        "need at least one thread, one event per batch and one customer per thread"
    );
    let config = match &options.config {
        Some(path) => Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Config::embedded_default().map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    let start_ms: i64 = 1_767_225_600_000;
    let clock = Arc::new(ManualClock::new(start_ms));
    let engine = Arc::new(Engine::new(config, clock.clone()));
    println!(
        "loadgen: in-process, {} customers, {} threads, batches of {}, {}s warm-up + {}s measured",
        options.customers, options.threads, options.batch, options.warmup, options.seconds
    );

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let applied = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let per_thread = options.customers / options.threads as u64;
    let mut workers = Vec::new();
    for t in 0..options.threads {
        let (engine, clock, measuring, stop, applied, rejected) = (
            engine.clone(),
            clock.clone(),
            measuring.clone(),
            stop.clone(),
            applied.clone(),
            rejected.clone(),
        );
        let batch = options.batch;
        let step_ms = options.sim_seconds_per_batch * 1000;
        let mut journeys = Journeys {
            stages: vec![Stage::Anonymous; per_thread as usize],
            rng: SmallRng::seed_from_u64(options.seed.wrapping_add(t as u64)),
            first: t as u64 * per_thread,
            zipf: Zipf::new(per_thread as f64, options.zipf).context("zipf parameters")?,
        };
        workers.push(std::thread::spawn(move || -> Histogram<u64> {
            let mut latency =
                Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds");
            let mut events: Vec<Event> = Vec::with_capacity(batch);
            while !stop.load(Ordering::Relaxed) {
                // Only the first worker moves simulated time, so it stays monotone.
                if t == 0 {
                    clock.advance_ms(step_ms);
                }
                let now = omnia::clock::Clock::now_ms(&*clock);
                events.clear();
                for _ in 0..batch {
                    match engine.resolve(&journeys.next(now)) {
                        Ok(event) => events.push(event),
                        Err(_) => {
                            rejected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                let started = Instant::now();
                let mut ok = 0;
                for event in &events {
                    match engine.apply(event) {
                        Ok(_) => ok += 1,
                        Err(_) => {
                            rejected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                let took = started.elapsed();
                if measuring.load(Ordering::Relaxed) {
                    latency.saturating_record(took.as_nanos() as u64);
                    applied.fetch_add(ok, Ordering::Relaxed);
                }
            }
            latency
        }));
    }
    std::thread::sleep(Duration::from_secs(options.warmup));
    measuring.store(true, Ordering::SeqCst);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(options.seconds));
    measuring.store(false, Ordering::SeqCst);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for worker in workers {
        let h = worker
            .join()
            .map_err(|_| anyhow::anyhow!("a worker thread panicked"))?;
        latency.add(&h)?;
    }
    let events = applied.load(Ordering::Relaxed);
    let stats = engine.stats();
    println!(
        "applied {events} events in {:.2?}: {:.0} events/s (apply only; event generation and name resolution excluded from latency, included in wall time)",
        elapsed,
        events as f64 / elapsed.as_secs_f64()
    );
    println!("rejected {}", rejected.load(Ordering::Relaxed));
    println!(
        "customers {}, keys {}, merges {}, pending timers {}",
        stats.customers, stats.keys, stats.merges, stats.pending_timers
    );
    println!(
        "batch apply latency ({} events per batch), {} batches:",
        options.batch,
        latency.len()
    );
    for (label, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        println!(
            "  {label:<6} {:>10.1} µs",
            latency.value_at_quantile(q) as f64 / 1000.0
        );
    }
    println!("  max    {:>10.1} µs", latency.max() as f64 / 1000.0);
    println!("segments:");
    for segment in &engine.config().segments {
        println!(
            "  {:<24} {:>9}",
            segment.name,
            engine.segment_count(&segment.name)?
        );
    }
    Ok(())
}
