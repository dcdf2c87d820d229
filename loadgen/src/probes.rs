//! Trigger probes: the latency from an event to the webhook delivery it causes.
//!
//! With `--trigger-probes RATE` loadgen runs a webhook receiver where the server's
//! triggers post (`--webhook-listen`; the default config's webhooks go to
//! 127.0.0.1:8900) and, beside the workload, after the warm-up, sends RATE purchases a
//! second on a connection of their own, each by a new customer with an e-mail key and
//! an opt-in. Each is a first purchase: the default config's `thank_you` trigger acts
//! on it (a decision for the e-mail channel, its impression logged, the document
//! journaled and posted). The receiver matches a delivery to its probe by the probe's
//! e-mail key and records the time from the probe's intended send to the delivery's
//! arrival: cause to webhook, everything included (ingest, the log, the change stream,
//! the runner, the decision, HTTP). Deliveries for other customers (the journeys' own
//! carts and first purchases) are counted, not timed. The receiver answers 200.
//!
//! Probes are paced open loop, like the workload: a stalled server makes them late,
//! and the lateness is in the figures.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use omnia::engine::RawEvent;
use serde::Serialize;
use tokio::time::Instant;

use crate::target::{OmniaTarget, Op, Target};

/// The e-mail domain of probe customers: reserved, never a real address.
const DOMAIN: &str = "probe.loadgen.invalid";

/// What the probes measured.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub rate: f64,
    pub sent: u64,
    /// Sends the server refused (the probe is not counted as sent).
    pub errors: u64,
    pub delivered: u64,
    /// Sent, not delivered within the grace period after the run.
    pub missing: u64,
    /// Deliveries for customers that were not probes.
    pub other_deliveries: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl ProbeReport {
    pub fn line(&self) -> String {
        format!(
            "trigger probes at {}/s: {} sent, {} delivered, {} missing, {} refused; cause to webhook p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms; {} deliveries for the journeys' customers",
            self.rate, self.sent, self.delivered, self.missing, self.errors, self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.other_deliveries
        )
    }
}

/// The receiver's and the sender's shared state.
pub struct Probes {
    rate: f64,
    /// Probe number to its intended send time; removed when delivered.
    sent: Mutex<HashMap<u64, Instant>>,
    sends: AtomicU64,
    errors: AtomicU64,
    delivered: AtomicU64,
    others: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

impl Probes {
    /// Starts the receiver on `addr`.
    pub async fn start(addr: SocketAddr, rate: f64) -> anyhow::Result<Arc<Probes>> {
        let probes = Arc::new(Probes {
            rate,
            sent: Mutex::new(HashMap::new()),
            sends: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            others: AtomicU64::new(0),
            latency: Mutex::new(crate::report::histogram()),
        });
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen for webhooks on {addr}: {e} (--webhook-listen)")
        })?;
        let shared = probes.clone();
        let app =
            axum::Router::new().fallback(axum::routing::post(move |body: axum::body::Bytes| {
                let probes = shared.clone();
                async move {
                    probes.received(&body);
                    axum::http::StatusCode::OK
                }
            }));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(probes)
    }

    /// A delivery arrived.
    fn received(&self, body: &[u8]) {
        let arrived = Instant::now();
        let document: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let probe = document["customer"]["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str())
            .find_map(|k| {
                let address = k.strip_prefix("email:probe-")?;
                address
                    .strip_suffix(&format!("@{DOMAIN}"))?
                    .parse::<u64>()
                    .ok()
            });
        let sent = probe.and_then(|n| self.sent.lock().unwrap().remove(&n));
        match sent {
            Some(at) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                let nanos = arrived.saturating_duration_since(at).as_nanos() as u64;
                self.latency.lock().unwrap().saturating_record(nanos);
            }
            None => {
                self.others.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends probes to the server at `addr` from now until `until`.
    pub async fn send(self: Arc<Self>, target: OmniaTarget, until: Instant) {
        let every = Duration::from_secs_f64(1.0 / self.rate);
        let start = Instant::now();
        let mut n: u64 = 0;
        loop {
            let due = start + every.mul_f64(n as f64);
            if due >= until {
                return;
            }
            tokio::time::sleep_until(due).await;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let event = RawEvent::new("purchase", "store", now_ms)
                .key(&format!("email:probe-{n}@{DOMAIN}"))
                .attr("email_opt_in", true)
                .prop("amount", 25.0);
            // Noted before sending: a delivery may arrive before the acknowledgement.
            self.sent.lock().unwrap().insert(n, due);
            match target.execute(Op::Ingest(vec![event])).await {
                Ok(_) => {
                    self.sends.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    self.sent.lock().unwrap().remove(&n);
                    self.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            n += 1;
        }
    }

    /// Waits up to `grace` for the deliveries still missing, then reports.
    pub async fn report(&self, grace: Duration) -> ProbeReport {
        let deadline = Instant::now() + grace;
        while !self.sent.lock().unwrap().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let latency = self.latency.lock().unwrap();
        let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1e6;
        ProbeReport {
            rate: self.rate,
            sent: self.sends.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            missing: self.sent.lock().unwrap().len() as u64,
            other_deliveries: self.others.load(Ordering::Relaxed),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: latency.max() as f64 / 1e6,
        }
    }
}
