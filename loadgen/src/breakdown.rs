//! The server's own account of where a request's time went, beside the generator's.
//!
//! loadgen measures from its send to the reply it reads; the server measures, per
//! operation, the stages it controls (`omnia_request_stage_seconds{op, stage}`: queued
//! after the read that completed the frame, apply, journal, reply). The difference is
//! what neither side's stage covers: the sockets, the runtimes' scheduling and the
//! generator itself. A run scrapes the server's `/metrics` when measuring starts and
//! when it ends; the histograms count from the server's start, so the breakdown is the
//! difference of the two scrapes: the measured window only, warm-up and earlier runs
//! excluded.
//!
//! The histograms have explicit buckets (10 µs, 25 µs, 50 µs, 100 µs, 250 µs, ...), so a
//! percentile is reported as the bucket bound it falls under ("p99 ≤ 250 µs"), never
//! interpolated into a figure the server did not measure.

pub use omnia::client::stages::{Breakdown, Histogram, STAGES};

/// Where and how to scrape the server's metrics.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The Prometheus endpoint's address (`serve --metrics-listen`).
    pub addr: String,
    /// A token with the `read` role, for a server that requires credentials.
    pub token: Option<String>,
}

impl Scrape {
    /// One scrape, parsed.
    pub async fn get(&self) -> Result<Breakdown, String> {
        omnia::client::stages::scrape(&self.addr, self.token.as_deref()).await
    }
}
