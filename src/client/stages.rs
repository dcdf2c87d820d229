//! The server's stage histograms as a client reads them: `omnia_request_stage_seconds`
//! out of the Prometheus text of `/metrics` (see `server::metrics`), for `omnia ctl stats
//! --latency` and the load generator, and [`scrape`], the one GET that fetches it.
//!
//! The histograms count from the server's start. [`Breakdown::since`] subtracts an
//! earlier scrape, which is how loadgen reports its measured window only. The buckets
//! are explicit (10 µs, 25 µs, 50 µs, 100 µs, 250 µs, ...), so a percentile is reported as
//! the bucket bound it falls under ("p99 ≤ 250 µs"), never interpolated into a figure the
//! server did not measure.

use std::collections::BTreeMap;
use std::fmt::Write;

/// The stages in the order a request passes them.
pub const STAGES: [&str; 4] = ["queued", "apply", "journal", "reply"];

/// One operation's stage histogram: cumulative counts per upper bound, and the sum.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Histogram {
    /// `(upper bound in seconds, requests at or under it)`, ascending; the last bound is
    /// infinity.
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    /// The smallest bucket bound under which at least `q` of the requests fell.
    pub fn bound_at(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total == 0 {
            return None;
        }
        self.buckets
            .iter()
            .find(|(_, c)| *c as f64 >= q * total as f64)
            .map(|(le, _)| *le)
    }

    pub fn mean_seconds(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_seconds / self.count as f64)
    }

    /// What was counted after `before` (the same histogram, scraped earlier).
    fn since(&self, before: Option<&Histogram>) -> Histogram {
        let Some(before) = before else {
            return self.clone();
        };
        let earlier = |le: f64| {
            before
                .buckets
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0, |(_, c)| *c)
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, c)| (le, c.saturating_sub(earlier(le))))
                .collect(),
            sum_seconds: (self.sum_seconds - before.sum_seconds).max(0.0),
            count: self.count.saturating_sub(before.count),
        }
    }
}

/// Every `(op, stage)` histogram of one scrape, or the difference of two.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Breakdown {
    /// Keyed by `"op/stage"`.
    pub stages: BTreeMap<String, Histogram>,
}

impl Breakdown {
    /// Reads `omnia_request_stage_seconds` out of a Prometheus text exposition.
    pub fn parse(text: &str) -> Breakdown {
        let mut stages: BTreeMap<String, Histogram> = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("omnia_request_stage_seconds") else {
                continue;
            };
            let Some((kind, rest)) = rest.split_once('{') else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let label = |name: &str| {
                labels.split(',').find_map(|l| {
                    l.strip_prefix(name)
                        .and_then(|v| v.strip_prefix("=\""))
                        .and_then(|v| v.strip_suffix('"'))
                })
            };
            let (Some(op), Some(stage)) = (label("op"), label("stage")) else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let h = stages.entry(format!("{op}/{stage}")).or_default();
            match kind {
                "_bucket" => {
                    let le = match label("le") {
                        Some("+Inf") => f64::INFINITY,
                        Some(le) => match le.parse() {
                            Ok(le) => le,
                            Err(_) => continue,
                        },
                        None => continue,
                    };
                    h.buckets.push((le, value as u64));
                }
                "_sum" => h.sum_seconds = value,
                "_count" => h.count = value as u64,
                _ => {}
            }
        }
        for h in stages.values_mut() {
            h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        Breakdown { stages }
    }

    /// What was counted after `before`.
    pub fn since(&self, before: &Breakdown) -> Breakdown {
        Breakdown {
            stages: self
                .stages
                .iter()
                .map(|(k, h)| (k.clone(), h.since(before.stages.get(k))))
                .filter(|(_, h)| h.count > 0)
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// The operations it has histograms of, by name.
    pub fn ops(&self) -> Vec<&str> {
        let mut ops: Vec<&str> = self
            .stages
            .keys()
            .filter_map(|k| k.split_once('/').map(|(op, _)| op))
            .collect();
        ops.dedup();
        ops
    }

    /// A table of the operations `ops` (protocol names, in that order), headed by a line
    /// that says which window the counts cover (`window`, e.g. ", this run's window").
    pub fn table(&self, window: &str, ops: &[&str]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "the server's own stages (omnia_request_stage_seconds{}; percentiles are the bucket bounds they fall under):",
            window
        );
        let _ = writeln!(
            out,
            "{:<9} {:<8} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "op", "stage", "count", "mean", "p50 ≤", "p99 ≤", "p99.9 ≤"
        );
        for op in ops {
            for stage in STAGES {
                let Some(h) = self.stages.get(&format!("{op}/{stage}")) else {
                    continue;
                };
                let bound = |q| h.bound_at(q).map_or("-".into(), seconds);
                let _ = writeln!(
                    out,
                    "{:<9} {:<8} {:>10} {:>10} {:>10} {:>10} {:>10}",
                    op,
                    stage,
                    h.count,
                    h.mean_seconds().map_or("-".into(), seconds),
                    bound(0.5),
                    bound(0.99),
                    bound(0.999)
                );
            }
        }
        out
    }
}

/// One scrape of the server's Prometheus endpoint at `addr` (`serve --metrics-listen`;
/// plain HTTP, as `serve` offers it), parsed; `token` is sent as a bearer token when
/// given (a server with credentials wants the `read` role). Errors name the endpoint.
pub async fn scrape(addr: &str, token: Option<&str>) -> Result<Breakdown, String> {
    use http_body_util::BodyExt;
    let what = format!("the metrics endpoint at {addr}");
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
        format!("cannot connect to {what} (serve --metrics-listen; --metrics here): {e}")
    })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{what}: {e}"))?;
    tokio::spawn(connection);
    let mut request = hyper::Request::get("/metrics").header(hyper::header::HOST, addr);
    if let Some(token) = token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("{what}: {e}"))?;
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    })
    .await
    .map_err(|_| format!("{what} did not answer within 10 s"))?
    .map_err(|e| format!("{what}: {e}"))?;
    let (status, body) = response;
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() {
        return Err(format!("{what} answered {status}: {}", text.trim()));
    }
    Ok(Breakdown::parse(&text))
}

fn seconds(s: f64) -> String {
    if s.is_infinite() {
        "inf".into()
    } else if s < 1e-3 {
        format!("{:.0} µs", s * 1e6)
    } else {
        format!("{:.1} ms", s * 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# TYPE omnia_request_stage_seconds histogram
omnia_request_stage_seconds_bucket{op="decide",stage="apply",le="0.00001"} 10
omnia_request_stage_seconds_bucket{op="decide",stage="apply",le="0.000025"} 20
omnia_request_stage_seconds_bucket{op="decide",stage="apply",le="+Inf"} 20
omnia_request_stage_seconds_sum{op="decide",stage="apply"} 0.0003
omnia_request_stage_seconds_count{op="decide",stage="apply"} 20
omnia_request_duration_seconds_count{op="decide"} 20
"#;

    const AFTER: &str = r#"omnia_request_stage_seconds_bucket{op="decide",stage="apply",le="0.00001"} 100
omnia_request_stage_seconds_bucket{op="decide",stage="apply",le="0.000025"} 1010
omnia_request_stage_seconds_bucket{op="decide",stage="apply",le="+Inf"} 1020
omnia_request_stage_seconds_sum{op="decide",stage="apply"} 0.0203
omnia_request_stage_seconds_count{op="decide",stage="apply"} 1020
omnia_request_stage_seconds_bucket{op="ingest",stage="journal",le="0.00001"} 0
omnia_request_stage_seconds_bucket{op="ingest",stage="journal",le="+Inf"} 0
omnia_request_stage_seconds_count{op="ingest",stage="journal"} 0
"#;

    #[test]
    fn the_window_is_the_difference_of_two_scrapes() {
        let window = Breakdown::parse(AFTER).since(&Breakdown::parse(BEFORE));
        let h = &window.stages["decide/apply"];
        assert_eq!(h.count, 1000);
        assert_eq!(
            h.buckets,
            vec![(0.00001, 90), (0.000025, 990), (f64::INFINITY, 1000)]
        );
        assert!((h.mean_seconds().unwrap() - 0.00002).abs() < 1e-12);
        // 9% fell under 10 µs, 99% under 25 µs, the last 1% above every finite bound.
        assert_eq!(h.bound_at(0.05), Some(0.00001));
        assert_eq!(h.bound_at(0.5), Some(0.000025));
        assert_eq!(h.bound_at(0.99), Some(0.000025));
        assert_eq!(h.bound_at(0.999), Some(f64::INFINITY));
        // A stage nothing reached in the window is left out.
        assert!(!window.stages.contains_key("ingest/journal"));
        let table = window.table(", this run's window", &["decide", "ingest"]);
        assert_eq!(window.ops(), ["decide"]);
        assert!(table.contains("decide    apply"), "{table}");
        assert!(table.contains("inf"), "{table}");
    }

    #[test]
    fn other_metrics_and_broken_lines_are_ignored() {
        let parsed = Breakdown::parse(
            "omnia_request_duration_seconds_bucket{op=\"decide\",le=\"0.1\"} 3\nomnia_request_stage_seconds_bucket{op=\"decide\"} x\n",
        );
        assert!(parsed.is_empty());
    }
}
