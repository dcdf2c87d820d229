//! Measurements and how they are shown: a histogram and a per-second timeline per
//! operation, live counters for the progress line, and the final report as a table, as
//! JSON (`--json`) and as a self-contained HTML page (`--report`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::pacing::Completion;
use crate::target::OpKind;

/// Latencies from 1 µs to 60 s with three significant digits, in nanoseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// What one task measured for one operation.
pub struct OpRecord {
    pub latency: Histogram<u64>,
    /// The generator's lateness in sending ([`Completion::late`]).
    pub late: Histogram<u64>,
    pub count: u64,
    pub errors: u64,
    pub units: u64,
    /// Completions per second of the measured period.
    pub timeline: Vec<u64>,
    pub first_error: Option<String>,
}

impl Default for OpRecord {
    fn default() -> Self {
        OpRecord {
            latency: histogram(),
            late: histogram(),
            count: 0,
            errors: 0,
            units: 0,
            timeline: Vec::new(),
            first_error: None,
        }
    }
}

impl OpRecord {
    pub fn record(&mut self, c: &Completion, second: usize) {
        self.latency
            .saturating_record(c.latency().as_nanos().min(u64::MAX as u128) as u64);
        self.late
            .saturating_record(c.late.as_nanos().min(u64::MAX as u128) as u64);
        if self.timeline.len() <= second {
            self.timeline.resize(second + 1, 0);
        }
        self.timeline[second] += 1;
        match c.result {
            Ok(units) => {
                self.count += 1;
                self.units += units;
            }
            Err(()) => self.errors += 1,
        }
    }

    pub fn merge(&mut self, other: OpRecord) {
        let _ = self.latency.add(&other.latency);
        let _ = self.late.add(&other.late);
        self.count += other.count;
        self.errors += other.errors;
        self.units += other.units;
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), 0);
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(other.timeline) {
            *mine += theirs;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Counters the progress line reads while the run goes on.
#[derive(Default)]
pub struct Live {
    pub completed: [AtomicU64; 4],
    pub errors: [AtomicU64; 4],
    /// Latencies since the progress line last looked, per operation.
    pub recent: [Mutex<Option<Histogram<u64>>>; 4],
}

impl Live {
    pub fn record(&self, kind: OpKind, c: &Completion) {
        let i = kind as usize;
        self.completed[i].fetch_add(1, Ordering::Relaxed);
        if c.result.is_err() {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut h) = self.recent[i].lock() {
            h.get_or_insert_with(histogram)
                .saturating_record(c.latency().as_nanos() as u64);
        }
    }

    /// The p99 since the last call, per operation that completed anything.
    pub fn take_p99(&self) -> Vec<(OpKind, Duration)> {
        OpKind::ALL
            .iter()
            .filter_map(|&k| {
                let h = self.recent[k as usize].lock().ok()?.take()?;
                Some((k, Duration::from_nanos(h.value_at_quantile(0.99))))
            })
            .collect()
    }
}

/// One operation's results.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    pub op: OpKind,
    pub count: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Requests per second asked for (open loop); `None` in closed loop.
    pub target_rate: Option<f64>,
    pub achieved_rate: f64,
    /// Events per second, for ingest.
    pub units_per_second: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// The generator's own lateness in sending (open loop): p99 and p99.9, µs. Not part
    /// of the latencies (they start at the send), but load the server was not offered on
    /// time: a large value means the generator, not the server, could not keep up.
    pub late_p99_us: f64,
    pub late_p999_us: f64,
    /// Whether the achieved rate is within 2% of the target.
    pub reached_target: Option<bool>,
    /// `(percentile, latency µs)` points for plots.
    pub percentiles: Vec<(f64, f64)>,
    /// Completions per second over the run.
    pub timeline: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub workload: String,
    pub pacing: String,
    pub connections: usize,
    pub pipeline: usize,
    pub batch: usize,
    pub seconds: f64,
    pub warmup_seconds: f64,
    pub machine: String,
    pub ops: Vec<OpReport>,
    /// The server's own stage breakdown for the measured window, when it was scraped.
    pub server: Option<crate::breakdown::Breakdown>,
    /// Why it was not.
    pub server_note: Option<String>,
    /// What `--trigger-probes` measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger_probes: Option<crate::probes::ProbeReport>,
    /// The target's experiment reports after a mixed run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experiments: Option<Vec<omnia::model::experiment::ExperimentReport>>,
    /// Why they could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experiments_note: Option<String>,
    /// What the true effect built into the journeys did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<crate::effect::EffectReport>,
}

impl OpReport {
    pub fn new(op: OpKind, r: OpRecord, seconds: f64, target_rate: Option<f64>) -> OpReport {
        let us = |q: f64| r.latency.value_at_quantile(q) as f64 / 1000.0;
        let achieved = (r.count + r.errors) as f64 / seconds;
        let mut percentiles = Vec::new();
        for exponent in 0..=50 {
            // 0%, 90%, 99%, ... in steps of a tenth of a "nine", up to 99.999%.
            let q = 1.0 - 10f64.powf(-(exponent as f64) / 10.0);
            if q > 0.99999 {
                break;
            }
            percentiles.push((q * 100.0, us(q)));
        }
        percentiles.push((100.0, r.latency.max() as f64 / 1000.0));
        OpReport {
            op,
            count: r.count,
            errors: r.errors,
            first_error: r.first_error,
            target_rate,
            achieved_rate: achieved,
            units_per_second: r.units as f64 / seconds,
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: r.latency.max() as f64 / 1000.0,
            late_p99_us: r.late.value_at_quantile(0.99) as f64 / 1000.0,
            late_p999_us: r.late.value_at_quantile(0.999) as f64 / 1000.0,
            reached_target: target_rate.map(|t| achieved >= 0.98 * t),
            percentiles,
            timeline: r.timeline,
        }
    }
}

fn fmt_latency(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

impl Report {
    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} against {}, {}; {} connections per stream, pipeline {}, {:.1}s measured after {:.1}s warm-up",
            self.workload, self.target, self.pacing, self.connections, self.pipeline, self.seconds, self.warmup_seconds
        );
        let _ = writeln!(
            out,
            "{:<9} {:>10} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
            "op", "count", "rate/s", "events/s", "p50", "p90", "p99", "p99.9", "max", "errors"
        );
        for op in &self.ops {
            let events = if op.op == OpKind::Ingest {
                format!("{:.0}", op.units_per_second)
            } else {
                "-".into()
            };
            let _ = writeln!(
                out,
                "{:<9} {:>10} {:>12.0} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
                op.op.name(),
                op.count,
                op.achieved_rate,
                events,
                fmt_latency(op.p50_us),
                fmt_latency(op.p90_us),
                fmt_latency(op.p99_us),
                fmt_latency(op.p999_us),
                fmt_latency(op.max_us),
                op.errors
            );
        }
        if self.ops.iter().any(|op| op.target_rate.is_some()) {
            let late: Vec<String> = self
                .ops
                .iter()
                .map(|op| {
                    format!(
                        "{} p99 {}, p99.9 {}",
                        op.op.name(),
                        fmt_latency(op.late_p99_us),
                        fmt_latency(op.late_p999_us)
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "sent late by the generator itself (its timer, its busy threads; not in the latencies above, which start at the send): {}",
                late.join("; ")
            );
        }
        for op in &self.ops {
            if let (Some(target), Some(false)) = (op.target_rate, op.reached_target) {
                let _ = writeln!(
                    out,
                    "NOT REACHED: {} ran at {:.0}/s against a target of {:.0}/s ({:.0}%); the latencies above include the backlog",
                    op.op.name(),
                    op.achieved_rate,
                    target,
                    100.0 * op.achieved_rate / target
                );
            }
            if let Some(e) = &op.first_error {
                let _ = writeln!(out, "{} errors, the first: {e}", op.op.name());
            }
        }
        if let Some(server) = &self.server {
            let ops: Vec<&str> = self.ops.iter().map(|op| op.op.name()).collect();
            out.push_str(&server.table(", this run's window", &ops));
        }
        if let Some(note) = &self.server_note {
            let _ = writeln!(
                out,
                "no server breakdown: {note} (--metrics off to skip it)"
            );
        }
        if let Some(probes) = &self.trigger_probes {
            let _ = writeln!(out, "{}", probes.line());
        }
        if let Some(effect) = &self.effect {
            out.push_str(&effect.lines());
        }
        for report in self.experiments.iter().flatten() {
            out.push_str(&omnia::decide::report::render(report));
        }
        if let Some(note) = &self.experiments_note {
            let _ = writeln!(out, "no experiment report: {note}");
        }
        out
    }

    /// A self-contained HTML page: the table, a latency-by-percentile plot with the
    /// percentile axis scaled as HdrHistogram plots are (by the number of nines), and
    /// throughput over time. Inline SVG; no scripts, no external files.
    pub fn html(&self) -> String {
        let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
        let mut page = String::new();
        let _ = write!(
            page,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>omnia loadgen: {w} against {t}</title>\
             <style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}pre{{background:#f6f6f6;padding:1em}}\
             svg text{{font-size:12px}}</style></head><body><h1>{w} against {t}</h1><p>{m}</p><pre>{table}</pre>",
            w = self.workload,
            t = self.target,
            m = escape(&self.machine),
            table = escape(&self.table())
        );
        // Latency by percentile: x = log10(1 / (1 - q)), y = log latency.
        let (w, h, left, bottom) = (720.0, 360.0, 70.0, 40.0);
        let max_nines: f64 = 5.0;
        let max_us = self
            .ops
            .iter()
            .flat_map(|o| o.percentiles.iter().map(|p| p.1))
            .fold(1.0f64, f64::max);
        let y_top = 10f64.powf(max_us.log10().ceil());
        let y_bottom = 1.0f64;
        let x = |q: f64| {
            let nines = if q >= 100.0 {
                max_nines
            } else {
                (1.0 / (1.0 - q / 100.0)).log10().min(max_nines)
            };
            left + nines / max_nines * (w - left - 20.0)
        };
        let y = |us: f64| {
            let v = us.max(y_bottom).log10();
            (h - bottom)
                - (v - y_bottom.log10()) / (y_top.log10() - y_bottom.log10()) * (h - bottom - 20.0)
        };
        let _ = write!(page, "<h2>Latency by percentile</h2><svg width=\"{w}\" height=\"{h}\" xmlns=\"http://www.w3.org/2000/svg\">");
        for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
            .iter()
            .enumerate()
        {
            let px = left + i as f64 / max_nines * (w - left - 20.0);
            let _ = write!(page, "<line x1=\"{px}\" y1=\"20\" x2=\"{px}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{px}\" y=\"{}\" text-anchor=\"middle\">{label}</text>", h - bottom, h - bottom + 16.0);
        }
        let mut decade = y_bottom;
        while decade <= y_top {
            let py = y(decade);
            let _ = write!(page, "<line x1=\"{left}\" y1=\"{py}\" x2=\"{}\" y2=\"{py}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>", w - 20.0, left - 6.0, py + 4.0, fmt_latency(decade));
            decade *= 10.0;
        }
        for (i, op) in self.ops.iter().enumerate() {
            let points: Vec<String> = op
                .percentiles
                .iter()
                .map(|&(q, us)| format!("{:.1},{:.1}", x(q), y(us)))
                .collect();
            let color = colors[i % colors.len()];
            let _ = write!(
                page,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/><text x=\"{}\" y=\"{}\" fill=\"{color}\">{}</text>",
                points.join(" "),
                left + 10.0,
                30.0 + 16.0 * i as f64,
                op.op.name()
            );
        }
        page.push_str("</svg>");
        // Throughput over time.
        let seconds = self
            .ops
            .iter()
            .map(|o| o.timeline.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let peak = self
            .ops
            .iter()
            .flat_map(|o| o.timeline.iter().copied())
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let tx = |s: usize| left + s as f64 / seconds as f64 * (w - left - 20.0);
        let ty = |n: u64| (h - bottom) - n as f64 / peak * (h - bottom - 20.0);
        let _ = write!(page, "<h2>Requests completed per second</h2><svg width=\"{w}\" height=\"{h}\" xmlns=\"http://www.w3.org/2000/svg\">");
        let _ = write!(page, "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{peak:.0}/s</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{seconds} s</text>", h - bottom, w - 20.0, h - bottom, left - 6.0, ty(peak as u64) + 4.0, w - 20.0, h - bottom + 16.0);
        for (i, op) in self.ops.iter().enumerate() {
            let points: Vec<String> = op
                .timeline
                .iter()
                .enumerate()
                .map(|(s, &n)| format!("{:.1},{:.1}", tx(s), ty(n)))
                .collect();
            let color = colors[i % colors.len()];
            let _ = write!(page, "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/><text x=\"{}\" y=\"{}\" fill=\"{color}\">{}</text>", points.join(" "), left + 10.0, 30.0 + 16.0 * i as f64, op.op.name());
        }
        page.push_str("</svg></body></html>\n");
        page
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The CPU model and core count, for reports.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

/// Merges per-task records into one per operation.
pub fn merge(records: Vec<BTreeMap<OpKind, OpRecord>>) -> BTreeMap<OpKind, OpRecord> {
    let mut all: BTreeMap<OpKind, OpRecord> = BTreeMap::new();
    for r in records {
        for (k, v) in r {
            all.entry(k).or_default().merge(v);
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(count: u64, target: Option<f64>) -> OpReport {
        let mut r = OpRecord::default();
        for i in 0..count {
            let start = tokio::time::Instant::now();
            let c = Completion {
                intended: start,
                completed: start + Duration::from_micros(100 + i),
                late: Duration::from_micros(i % 10),
                result: Ok(10),
            };
            r.record(&c, (i / 100) as usize);
        }
        OpReport::new(OpKind::Ingest, r, 2.0, target)
    }

    #[test]
    fn a_missed_target_is_said_plainly() {
        let missed = op(300, Some(200.0));
        assert_eq!(missed.achieved_rate, 150.0);
        assert_eq!(missed.reached_target, Some(false));
        let report = Report {
            target: "t".into(),
            workload: "ingest".into(),
            pacing: "open loop".into(),
            connections: 1,
            pipeline: 1,
            batch: 10,
            seconds: 2.0,
            warmup_seconds: 0.0,
            machine: machine(),
            ops: vec![missed],
            server: None,
            server_note: None,
            trigger_probes: None,
            experiments: None,
            experiments_note: None,
            effect: None,
        };
        let table = report.table();
        assert!(
            table.contains("NOT REACHED: ingest ran at 150/s against a target of 200/s (75%)"),
            "{table}"
        );
        let met = op(400, Some(200.0));
        assert_eq!(met.reached_target, Some(true));
        assert_eq!(met.units_per_second, 2000.0);
        assert_eq!(met.timeline, vec![100, 100, 100, 100]);
        assert!((met.p50_us - 300.0).abs() < 1.0, "{}", met.p50_us);
    }
}
