//! STATS: server and engine counters, segment sizes, uptime, config version, and on
//! request the per-offer counters, the tracking-plan drift, the triggers' deliveries and
//! the experiment reports.

use std::sync::atomic::Ordering;

use crate::protocol::message::{Stats, StatsDrift};
use crate::protocol::Response;
use crate::server::Shared;

pub fn apply(
    shared: &Shared,
    offers: bool,
    drift: bool,
    triggers: bool,
    experiments: bool,
) -> Response {
    let current = shared.node();
    let engine = current.engine().stats();
    let config = current.config();
    Response::Stats(Stats {
        uptime_ms: shared.stats.started.elapsed().as_millis() as u64,
        config_version: config.version,
        customers: engine.customers,
        keys: engine.keys,
        events_ingested: shared.stats.events_ingested.load(Ordering::Relaxed),
        events_rejected: shared.stats.events_rejected.load(Ordering::Relaxed),
        merges: engine.merges,
        connections: shared.stats.connections.load(Ordering::Relaxed),
        reloads: shared.stats.reloads.load(Ordering::Relaxed),
        reload_progress: match shared.stats.reload_progress.load(Ordering::Relaxed) {
            u8::MAX => None,
            percent => Some(percent),
        },
        segments: config
            .segments
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    shared.node().engine().segment_count(&s.name).unwrap_or(0),
                )
            })
            .collect(),
        offers: if offers {
            shared.node().offer_stats()
        } else {
            Vec::new()
        },
        drift: drift.then(|| StatsDrift {
            ignored: current.engine().drift().ignored(),
            unknown_events: current.engine().drift().unknown_events(),
        }),
        triggers: triggers.then(|| match &shared.triggers {
            Some(t) => {
                let mut json = t.json();
                json["changes_recorded"] = engine.changes_recorded.into();
                json
            }
            None => serde_json::Value::Null,
        }),
        experiments: experiments.then(|| current.experiment_reports(None)),
    })
}
