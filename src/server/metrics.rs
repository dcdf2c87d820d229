//! Prometheus metrics, served over HTTP on their own port (`/metrics`, by
//! `http::serve_metrics`, which asks for a `read` principal when the server has
//! credentials).
//!
//! Names:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `omnia_requests_total` | counter | `op` |
//! | `omnia_request_errors_total` | counter | `op`, `code` |
//! | `omnia_request_duration_seconds` | histogram (explicit buckets, 10 µs to 1 s) | `op` |
//! | `omnia_request_stage_seconds` | histogram (the same buckets) | `op`, `stage` |
//! | `omnia_events_ingested_total` | counter | |
//! | `omnia_events_rejected_total` | counter | `code` |
//! | `omnia_connections` | gauge | |
//! | `omnia_connections_refused_total` | counter | |
//! | `omnia_customers` | gauge | |
//! | `omnia_journal_healthy` | gauge | |
//! | `omnia_segment_members` | gauge | `segment` |
//! | `omnia_offer_decisions_total` | counter | `offer`, `channel`, `experiment`, `arm` |
//! | `omnia_offer_feedback_total` | counter | `offer`, `channel`, `experiment`, `arm`, `kind` |
//!
//! Offer counters are published from the engine's own counters with the gauges, so a
//! scrape sees them at most one publishing interval late; `experiment` and `arm` are
//! empty for the totals over every customer.
//!
//! Stages of a request inside the server (`Stage`), so a tail seen by a client can be
//! placed: `queued` from the socket read that completed its frame to the start of its
//! handling (behind earlier requests of the same read, and the task's wait for a
//! worker), `apply` its handling (decode, engine, locks: what
//! `omnia_request_duration_seconds` measures), `journal` the wait for its log records
//! (or, behind a held reply, for theirs), `reply` from then until its reply was
//! flushed to the socket (behind the requests pipelined after it in the same read).
//! Not seen: time in the kernel before the server reads, and after it writes.
//!
//! Recording goes through the `metrics` facade: without an installed exporter (tests,
//! embedding) it costs next to nothing.

use std::sync::atomic::Ordering;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use super::Shared;
use crate::protocol::{opcode, ErrorCode};

/// Upper bounds of the request latency buckets, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 1.0,
];

/// Installs the recorder; the handle renders the exposition text (and needs
/// `run_upkeep` now and then, which the server's ticker does).
pub fn install() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("omnia_request_duration_seconds".into()),
            LATENCY_BUCKETS,
        )
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(
            Matcher::Full("omnia_request_stage_seconds".into()),
            LATENCY_BUCKETS,
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))
}

/// Where a request's time inside the server went; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Queued = 0,
    Apply = 1,
    Journal = 2,
    Reply = 3,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Queued => "queued",
            Stage::Apply => "apply",
            Stage::Journal => "journal",
            Stage::Reply => "reply",
        }
    }
}

/// One operation's per-request metrics, as handles.
struct OpMetrics {
    op: u8,
    requests: metrics::Counter,
    duration: metrics::Histogram,
    stages: [metrics::Histogram; 4],
}

/// The per-request metrics of one connection, looked up once per operation: the
/// facade's macros hash their labels and search the registry on every call, which cost
/// a sixth of the closed-loop decision rate with a record per stage (110,000 decisions/s
/// without the stages, 90,000 with them looked up each time).
#[derive(Default)]
pub(crate) struct RequestMetrics {
    ops: Vec<OpMetrics>,
}

impl RequestMetrics {
    fn of(&mut self, op: u8) -> &OpMetrics {
        let at = match self.ops.iter().position(|m| m.op == op) {
            Some(at) => at,
            None => {
                let name = opcode::name(op);
                let stage = |s: Stage| metrics::histogram!("omnia_request_stage_seconds", "op" => name, "stage" => s.name());
                self.ops.push(OpMetrics {
                    op,
                    requests: metrics::counter!("omnia_requests_total", "op" => name),
                    duration: metrics::histogram!("omnia_request_duration_seconds", "op" => name),
                    stages: [
                        stage(Stage::Queued),
                        stage(Stage::Apply),
                        stage(Stage::Journal),
                        stage(Stage::Reply),
                    ],
                });
                self.ops.len() - 1
            }
        };
        &self.ops[at]
    }

    pub fn stage(&mut self, op: u8, stage: Stage, elapsed: Duration) {
        self.of(op).stages[stage as usize].record(elapsed.as_secs_f64());
    }

    /// A request handled in `elapsed` (its apply stage), answered with `error` if any.
    pub fn request(&mut self, op: u8, elapsed: Duration, error: Option<u16>) {
        let m = self.of(op);
        m.requests.increment(1);
        m.duration.record(elapsed.as_secs_f64());
        m.stages[Stage::Apply as usize].record(elapsed.as_secs_f64());
        if let Some(code) = error {
            let name = opcode::name(op);
            metrics::counter!("omnia_request_errors_total", "op" => name, "code" => code_name(code))
                .increment(1);
        }
    }
}

/// A connection over the limit, told SERVER_BUSY (or closed, in a flood).
pub(crate) fn connection_refused() {
    metrics::counter!("omnia_connections_refused_total").increment(1);
}

pub(crate) fn events(accepted: u32, duplicates: u64, rejected: impl Iterator<Item = u16>) {
    metrics::counter!("omnia_events_ingested_total").increment(accepted as u64);
    if duplicates > 0 {
        metrics::counter!("omnia_events_duplicate_total").increment(duplicates);
    }
    for code in rejected {
        metrics::counter!("omnia_events_rejected_total", "code" => code_name(code)).increment(1);
    }
}

fn code_name(code: u16) -> &'static str {
    ErrorCode::from_u16(code).map_or("UNKNOWN", ErrorCode::name)
}

/// Sets the gauges from the current state; the server calls this periodically.
/// A trigger delivery's step: `delivered`, `failed` (an attempt), `dead`, `cancelled`.
pub fn trigger_delivery(trigger: &str, outcome: &'static str) {
    metrics::counter!("omnia_trigger_deliveries_total", "trigger" => trigger.to_string(), "outcome" => outcome)
        .increment(1);
}

/// From a delivery's cause (the change) to its webhook's success, in seconds.
pub fn trigger_latency(trigger: &str, seconds: f64) {
    metrics::histogram!("omnia_trigger_delivery_seconds", "trigger" => trigger.to_string())
        .record(seconds);
}

pub fn publish_gauges(shared: &Shared) {
    let node = shared.node();
    let drift = node.engine().drift();
    for (event, property, n) in drift.ignored() {
        metrics::counter!("omnia_properties_ignored_total", "event" => event, "property" => property)
            .absolute(n);
    }
    for (event, n) in drift.unknown_events() {
        metrics::counter!("omnia_events_unknown_total", "event" => event).absolute(n);
    }
    // One pass over the engine for both of its figures.
    let engine_stats = node.engine().stats();
    metrics::counter!("omnia_changes_recorded_total").absolute(engine_stats.changes_recorded);
    // Counts only: the report's comparisons are for readers, not for every tick.
    for arm in node.experiment_counts() {
        for (goal, converted) in arm.converted {
            metrics::gauge!("omnia_experiment_converted", "experiment" => arm.experiment.clone(), "arm" => arm.arm.clone(), "goal" => goal)
                .set(converted as f64);
        }
        metrics::gauge!("omnia_experiment_exposed", "experiment" => arm.experiment, "arm" => arm.arm)
            .set(arm.exposed as f64);
    }
    if let Some(stream) = &shared.stream {
        let position = stream.archived();
        metrics::gauge!("omnia_stream_position").set(position as f64);
        for (name, sent) in stream.subscribers() {
            metrics::gauge!("omnia_subscriber_lag", "subscription" => name)
                .set(position.saturating_sub(sent) as f64);
        }
    }
    if let Some(triggers) = &shared.triggers {
        for (name, counts) in triggers.counts() {
            metrics::gauge!("omnia_trigger_pending", "trigger" => name.clone())
                .set(counts.pending as f64);
            metrics::gauge!("omnia_trigger_dead_letters", "trigger" => name)
                .set(counts.dead as f64);
        }
    }
    metrics::gauge!("omnia_connections")
        .set(shared.stats.connections.load(Ordering::Relaxed) as f64);
    metrics::gauge!("omnia_customers").set(engine_stats.customers as f64);
    if let Some(journal) = shared.node().engine().journal() {
        metrics::gauge!("omnia_journal_healthy").set(if journal.is_healthy() { 1.0 } else { 0.0 });
    }
    for segment in &shared.node().config().segments {
        let members = shared
            .node()
            .engine()
            .segment_count(&segment.name)
            .unwrap_or(0);
        metrics::gauge!("omnia_segment_members", "segment" => segment.name.clone())
            .set(members as f64);
    }
    for o in shared.node().offer_stats() {
        let labels = [
            ("offer", o.offer.clone()),
            ("channel", o.channel.clone()),
            ("experiment", o.experiment.clone().unwrap_or_default()),
            ("arm", o.arm.clone().unwrap_or_default()),
        ];
        metrics::counter!("omnia_offer_decisions_total", &labels).absolute(o.decisions);
        for (kind, n) in [
            ("impression", o.impressions),
            ("click", o.clicks),
            ("accept", o.accepts),
            ("dismiss", o.dismisses),
        ] {
            let mut labels = labels.to_vec();
            labels.push(("kind", kind.to_string()));
            metrics::counter!("omnia_offer_feedback_total", &labels).absolute(n);
        }
    }
}
