//! A run: workloads turned into paced streams of requests, one stream per connection,
//! measured and reported.
//!
//! - `ingest`: journeys' events in batches, at `rate` events per second in all;
//! - `decide`: the population is loaded first (not measured), then decisions at
//!   `decide_rate` per second for customers chosen by popularity;
//! - `mixed`: the channel backends' real pattern, all at once: events at `rate`,
//!   decisions at `decide_rate` (half of them recording their impressions) and feedback
//!   (clicks, dismissals, acceptances) at `feedback_rate` on the config's offers;
//! - `query`: segment counts and set algebra at `rate` per second.
//!
//! Every stream has `connections` connections, each its own target, paced open loop at
//! its share of the rate (or closed loop with `max`).
//!
//! With an [`Effect`], the decide streams tell it the arms omnia answered and the ingest
//! streams' journeys carry it; after a mixed run the target's experiment reports are
//! read and printed beside what the effect sent.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use omnia::model::decision::{DecisionRequest, FeedbackKind, FeedbackTarget};
use rand::Rng;
use tokio::time::Instant;

use crate::effect::Effect;
use crate::journey::{Journeys, Mix};
use crate::pacing::{drive, Pacing};
use crate::report::{merge, Live, OpRecord, OpReport, Report};
use crate::target::{Op, OpKind, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Workload {
    Ingest,
    Decide,
    Mixed,
    Query,
}

/// Where event timestamps come from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeMode {
    /// The wall clock.
    Live,
    /// Simulated: starts `span_ms` in the past and runs `speed` times faster than real
    /// time, never passing the wall clock (a server rejects events from the future).
    Sim { speed: f64, span_ms: i64 },
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub workload: Workload,
    pub connections: usize,
    pub pipeline: usize,
    pub batch: usize,
    /// Events per second (ingest, mixed) or queries per second (query).
    pub rate: f64,
    pub decide_rate: f64,
    pub feedback_rate: f64,
    /// Closed loop: as fast as the target answers.
    pub max: bool,
    pub seconds: f64,
    pub warmup: f64,
    pub customers: u64,
    pub zipf: f64,
    pub seed: u64,
    pub mix: Mix,
    /// Event time; an engine in this process (`spawn`, `inprocess`) may run on it too.
    pub clock: EventClock,
    /// A true effect for one experiment, built into the journeys (mixed runs).
    pub effect: Option<Arc<Effect>>,
    /// Offers feedback may name (the config's).
    pub offers: Vec<String>,
    /// Segment names queries combine.
    pub segments: Vec<String>,
    pub progress: bool,
    /// The server's metrics, scraped when measuring starts and ends for its own stage
    /// breakdown (`breakdown`); `None` for targets that have none.
    pub metrics: Option<crate::breakdown::Scrape>,
}

/// The config's offers, for feedback to name ([`Settings::offers`]).
pub fn offer_names(config: &omnia::config::Config) -> Vec<String> {
    config
        .decisions
        .offers
        .iter()
        .map(|o| o.name.clone())
        .collect()
}

/// The config's segments, for queries to combine ([`Settings::segments`]).
pub fn segment_names(config: &omnia::config::Config) -> Vec<String> {
    config.segments.iter().map(|s| s.name.clone()).collect()
}

/// Event time as the run sees it: from when it is made, live or simulated.
///
/// It is an [`omnia::clock::Clock`] too, so that an engine in this process can run on the
/// simulated time its events are stamped with: then a segment's "30 minutes after" and
/// a goal's "within 7 days" pass as the events say they do (3600 times faster, by
/// default), where an engine on the wall clock would judge a simulated week's events as
/// all long past.
#[derive(Debug, Clone, Copy)]
pub struct EventClock {
    real_start: std::time::Instant,
    wall_start_ms: i64,
    mode: TimeMode,
}

impl EventClock {
    pub fn new(mode: TimeMode) -> EventClock {
        EventClock {
            real_start: std::time::Instant::now(),
            wall_start_ms: wall_ms(),
            mode,
        }
    }

    pub fn now_ms(&self) -> i64 {
        let elapsed = self.real_start.elapsed().as_millis() as i64;
        match self.mode {
            TimeMode::Live => self.wall_start_ms + elapsed,
            TimeMode::Sim { speed, span_ms } => {
                let sim = self.wall_start_ms - span_ms + (elapsed as f64 * speed) as i64;
                sim.min(self.wall_start_ms + elapsed)
            }
        }
    }
}

impl omnia::clock::Clock for EventClock {
    fn now_ms(&self) -> i64 {
        EventClock::now_ms(self)
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const CHANNELS: [&str; 5] = ["web", "app", "email", "sms", "store"];

/// What one stream sends.
#[derive(Clone, Copy, PartialEq)]
enum Stream {
    Ingest,
    Decide,
    Feedback,
    Query,
}

/// Runs a workload against `connect()`ed targets and reports what it measured.
pub async fn run<T, F, Fut>(
    settings: Settings,
    target_name: &str,
    connect: F,
) -> anyhow::Result<Report>
where
    T: Target,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let s = Arc::new(settings);
    let clock = s.clock;
    let streams: Vec<(Stream, f64)> = match s.workload {
        Workload::Ingest => vec![(Stream::Ingest, s.rate)],
        Workload::Decide => vec![(Stream::Decide, s.decide_rate)],
        Workload::Mixed => vec![
            (Stream::Ingest, s.rate),
            (Stream::Decide, s.decide_rate),
            (Stream::Feedback, s.feedback_rate),
        ],
        Workload::Query => vec![(Stream::Query, s.rate)],
    };
    anyhow::ensure!(
        s.max || streams.iter().all(|(_, r)| *r > 0.0),
        "every stream of the {:?} workload needs a rate above 0 (or --max)",
        s.workload
    );

    if matches!(s.workload, Workload::Decide | Workload::Query) {
        preload(&s, &clock, &connect).await?;
    }

    let live = Arc::new(Live::default());
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(s.warmup);
    let deadline = measure_from + Duration::from_secs_f64(s.seconds);
    let done = Arc::new(AtomicBool::new(false));
    let progress = s
        .progress
        .then(|| spawn_progress(live.clone(), done.clone(), start, measure_from, deadline));

    // The server's counters when measuring starts: the breakdown is what they counted
    // from here to the end.
    let scrape_before = s.metrics.clone().map(|scrape| {
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from).await;
            scrape.get().await
        })
    });
    let mut tasks = Vec::new();
    let per_connection = s.customers / s.connections.max(1) as u64;
    for (stream_index, &(stream, rate)) in streams.iter().enumerate() {
        for conn in 0..s.connections.max(1) {
            let target = connect()
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect: {e}"))?;
            let (s, live) = (s.clone(), live.clone());
            let seed = s.seed ^ ((stream_index as u64) << 32 | conn as u64);
            let first = conn as u64 * per_connection;
            tasks.push(tokio::spawn(async move {
                stream_task(
                    stream,
                    rate,
                    target,
                    s,
                    live,
                    clock,
                    seed,
                    first,
                    per_connection,
                    measure_from,
                    deadline,
                )
                .await
            }));
        }
    }
    let mut records = Vec::new();
    for t in tasks {
        records.push(
            t.await
                .map_err(|e| anyhow::anyhow!("a stream failed: {e}"))??,
        );
    }
    done.store(true, Ordering::SeqCst);
    if let Some(p) = progress {
        let _ = p.await;
    }
    let (server, server_note) = match (scrape_before, &s.metrics) {
        (Some(before), Some(scrape)) => {
            let before = before.await.map_err(|e| e.to_string()).and_then(|r| r);
            match (before, scrape.get().await) {
                (Ok(before), Ok(after)) => (Some(after.since(&before)), None),
                (Err(e), _) | (_, Err(e)) => (None, Some(e)),
            }
        }
        _ => (None, None),
    };
    // What the experiments measured, read once the load has stopped.
    let (experiments, experiments_note) = if s.workload == Workload::Mixed {
        match connect().await {
            Ok(reader) => match reader.experiments().await {
                Ok(reports) => (reports, None),
                Err(e) => (None, Some(e)),
            },
            Err(e) => (None, Some(format!("cannot connect: {e}"))),
        }
    } else {
        (None, None)
    };
    let merged = merge(records);
    let mut ops = Vec::new();
    for (kind, record) in merged {
        let target_rate = (!s.max).then(|| {
            streams
                .iter()
                .find(|(st, _)| op_kind(*st) == kind)
                .map_or(0.0, |(st, r)| {
                    if *st == Stream::Ingest {
                        r / s.batch as f64
                    } else {
                        *r
                    }
                })
        });
        ops.push(OpReport::new(kind, record, s.seconds, target_rate));
    }
    Ok(Report {
        target: target_name.to_string(),
        workload: format!("{:?}", s.workload).to_lowercase(),
        pacing: if s.max {
            "closed loop (--max)".into()
        } else {
            "open loop at fixed rates".into()
        },
        connections: s.connections,
        pipeline: s.pipeline,
        batch: s.batch,
        seconds: s.seconds,
        warmup_seconds: s.warmup,
        machine: crate::report::machine(),
        ops,
        server,
        server_note,
        trigger_probes: None,
        experiments,
        experiments_note,
        effect: s.effect.as_ref().map(|e| e.report()),
    })
}

fn op_kind(stream: Stream) -> OpKind {
    match stream {
        Stream::Ingest => OpKind::Ingest,
        Stream::Decide => OpKind::Decide,
        Stream::Feedback => OpKind::Feedback,
        Stream::Query => OpKind::Query,
    }
}

/// Gives every customer a few events, as fast as the target takes them, unmeasured.
async fn preload<T, F, Fut>(s: &Settings, clock: &EventClock, connect: &F) -> anyhow::Result<()>
where
    T: Target,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let target = connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect: {e}"))?;
    let mut journeys =
        Journeys::new(s.mix.clone(), 0, s.customers, s.zipf, s.seed).map_err(anyhow::Error::msg)?;
    let mut c = 0;
    while c < s.customers {
        let now = clock.now_ms();
        let end = (c + s.batch.max(1) as u64).min(s.customers);
        let batch: Vec<_> = (c..end)
            .map(|customer| journeys.next_for(customer, now))
            .collect();
        c = end;
        target
            .execute(Op::Ingest(batch))
            .await
            .map_err(|e| anyhow::anyhow!("preloading customers: {e}"))?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn stream_task<T: Target>(
    stream: Stream,
    rate: f64,
    target: T,
    s: Arc<Settings>,
    live: Arc<Live>,
    clock: EventClock,
    seed: u64,
    first: u64,
    count: u64,
    measure_from: Instant,
    deadline: Instant,
) -> anyhow::Result<BTreeMap<OpKind, OpRecord>> {
    let kind = op_kind(stream);
    let whole = stream != Stream::Ingest;
    // Ingest streams own their slice of customers (journeys stay consistent); the others
    // pick from the whole population.
    let (first, count) = if whole {
        (0, s.customers)
    } else {
        (first, count)
    };
    let mut journeys = Journeys::new(s.mix.clone(), first, count.max(1), s.zipf, seed)
        .map_err(anyhow::Error::msg)?
        .with_effect(s.effect.clone().filter(|_| stream == Stream::Ingest));
    // The decisions whose answers the effect learns arms from.
    let effect = s.effect.clone().filter(|_| stream == Stream::Decide);
    let connections = s.connections.max(1) as f64;
    let pacing = if s.max {
        Pacing::Closed
    } else {
        let per_second = match stream {
            Stream::Ingest => rate / s.batch as f64 / connections,
            _ => rate / connections,
        };
        Pacing::Open { per_second }
    };
    let bodies = target.takes_bodies();
    let target = Arc::new(target);
    let mut record = OpRecord::default();
    let errors: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let queries = query_list(&s.segments);
    drive(
        pacing,
        s.pipeline,
        deadline,
        |i| {
            let mut customer = 0;
            let op = match stream {
                Stream::Ingest if bodies => {
                    let now = clock.now_ms();
                    let mut writer = omnia::protocol::IngestWriter::with_capacity(s.batch * 96);
                    for _ in 0..s.batch {
                        journeys.write_next(now, &mut writer);
                    }
                    let count = writer.len();
                    Op::IngestBody(writer.finish(), count)
                }
                Stream::Ingest => {
                    let now = clock.now_ms();
                    Op::Ingest((0..s.batch).map(|_| journeys.next(now)).collect())
                }
                Stream::Decide => {
                    let c = journeys.pick();
                    customer = c;
                    let channel = CHANNELS[journeys.rng().random_range(0..CHANNELS.len())];
                    Op::Decide(DecisionRequest {
                        key: format!("anon:{c}"),
                        channel: channel.into(),
                        top: 3,
                        record_impression: i % 2 == 0,
                        explain: false,
                        context: Vec::new(),
                    })
                }
                Stream::Feedback => {
                    let c = journeys.pick();
                    let rng = journeys.rng();
                    let offer = s.offers.get(rng.random_range(0..s.offers.len().max(1)));
                    let channel = CHANNELS[rng.random_range(0..CHANNELS.len())];
                    let roll: f64 = rng.random();
                    let kind = if roll < 0.7 {
                        FeedbackKind::Click
                    } else if roll < 0.95 {
                        FeedbackKind::Dismiss
                    } else {
                        FeedbackKind::Accept
                    };
                    Op::Feedback(
                        kind,
                        FeedbackTarget::Customer {
                            key: format!("anon:{c}"),
                            offer: offer.cloned().unwrap_or_default(),
                            channel: channel.into(),
                        },
                    )
                }
                Stream::Query => Op::Query(queries[i as usize % queries.len()].clone()),
            };
            let target = target.clone();
            let errors = errors.clone();
            let effect = effect.clone();
            async move {
                let result = match (op, effect) {
                    (Op::Decide(request), Some(effect)) => {
                        target.decide_answer(request).await.map(|answer| {
                            effect.saw(customer, &answer);
                            1
                        })
                    }
                    (op, _) => target.execute(op).await,
                };
                match result {
                    Ok(units) => Ok(units),
                    Err(e) => {
                        if let Ok(mut first) = errors.lock() {
                            first.get_or_insert(e);
                        }
                        Err(())
                    }
                }
            }
        },
        |c| {
            if c.intended >= measure_from {
                let second = (c.intended - measure_from).as_secs() as usize;
                record.record(&c, second);
                live.record(kind, &c);
            }
        },
    )
    .await;
    record.first_error = errors.lock().ok().and_then(|mut e| e.take());
    Ok(BTreeMap::from([(kind, record)]))
}

/// Segment counts and set algebra over the config's segments.
fn query_list(segments: &[String]) -> Vec<String> {
    let mut out: Vec<String> = segments.to_vec();
    for pair in segments.windows(2) {
        out.push(format!("{} and not {}", pair[0], pair[1]));
        out.push(format!("{} or {}", pair[0], pair[1]));
    }
    if out.is_empty() {
        out.push("all".into());
    }
    out
}

fn spawn_progress(
    live: Arc<Live>,
    done: Arc<AtomicBool>,
    start: Instant,
    measure_from: Instant,
    deadline: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new_spinner();
        let mut last = [0u64; 4];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        while !done.load(Ordering::SeqCst) {
            tick.tick().await;
            let now = Instant::now();
            let phase = if now < measure_from {
                "warm-up"
            } else if now < deadline {
                "measuring"
            } else {
                "draining"
            };
            let mut parts = vec![format!("{:>5.1}s {phase}", (now - start).as_secs_f64())];
            let p99 = live.take_p99();
            for k in OpKind::ALL {
                let i = k as usize;
                let total = live.completed[i].load(Ordering::Relaxed);
                let rate = total - last[i];
                last[i] = total;
                if total == 0 {
                    continue;
                }
                let p = p99
                    .iter()
                    .find(|(kk, _)| *kk == k)
                    .map(|(_, d)| format!("{:.0?}", d))
                    .unwrap_or_else(|| "-".into());
                parts.push(format!(
                    "{}: {rate}/s p99 {p} errors {}",
                    k.name(),
                    live.errors[i].load(Ordering::Relaxed)
                ));
            }
            bar.set_message(parts.join(" | "));
            bar.tick();
        }
        bar.finish_and_clear();
    })
}
