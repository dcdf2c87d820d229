//! What the load generator's tests share: short, slow runs that a busy 2-core machine
//! keeps up with.

use loadgen::journey::Mix;
use loadgen::run::{offer_names, segment_names, EventClock, Settings, TimeMode, Workload};
use omnia::config::Config;

/// A one-second run of `workload` at low rates on the default config's names, after a
/// short warm-up, with no progress line and no metrics scrape.
pub fn settings(workload: Workload) -> Settings {
    let config = Config::embedded_default().unwrap();
    Settings {
        workload,
        connections: 2,
        pipeline: 4,
        batch: 50,
        rate: 5_000.0,
        decide_rate: 400.0,
        feedback_rate: 100.0,
        max: false,
        seconds: 1.0,
        warmup: 0.2,
        customers: 2_000,
        zipf: 1.05,
        seed: 11,
        mix: Mix::default(),
        clock: EventClock::new(TimeMode::Sim {
            speed: 3600.0,
            span_ms: 86_400_000,
        }),
        effect: None,
        offers: offer_names(&config),
        segments: segment_names(&config),
        progress: false,
        metrics: None,
    }
}
