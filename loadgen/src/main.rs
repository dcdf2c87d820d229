//! `loadgen`: omnichannel traffic for omnia, measured honestly.
//!
//! `cargo run --release -p loadgen -- --workload mixed --rate 500000 --decide-rate 50000`
//! sends journeys' events and channels' decisions to an omnia server at fixed rates
//! (open loop: latency counts from when each request should have been sent), shows a
//! live progress line, and prints a table per operation. `--json` and `--report` write
//! the same for scripts and for people. `docs/benchmarks.md` has the recorded runs.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use loadgen::effect::Effect;
use loadgen::journey::Mix;
use loadgen::redis_target::RedisTarget;
use loadgen::report::Report;
use loadgen::run::{offer_names, segment_names};
use loadgen::run::{run, EventClock, Settings, TimeMode, Workload};
use loadgen::target::{spawn_server_on, HttpTarget, InProcessTarget, OmniaTarget};
use mimalloc::MiMalloc;
use omnia::config::Config;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    /// An omnia server, through omnia::client (`--addr`).
    Omnia,
    /// An omnia server started inside this process on an ephemeral port (with `--config`
    /// or the embedded default), driven over TCP: a benchmark in one command.
    Spawn,
    /// An engine inside this process: no network, the engine's own ceiling.
    Inprocess,
    /// Redis (`--redis`), the baseline: ingest, decide and mixed, as Lua scripts (see `redis_target`).
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// The binary protocol (`--addr`).
    Binary,
    /// The HTTP API (`--http-addr`): ingest as Segment `/v1/batch` calls, decisions,
    /// feedback and queries as the JSON endpoints.
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClockKind {
    /// Events stamped with the wall clock.
    Live,
    /// Events stamped on a simulated clock that starts `--sim-span` ago and runs
    /// `--sim-speed` times faster, never passing the wall clock.
    Sim,
}

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Omnichannel traffic for omnia, with honest measurements"
)]
struct Options {
    #[arg(long, value_enum, default_value_t = TargetKind::Omnia)]
    target: TargetKind,
    /// The omnia server.
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: String,
    /// How to talk to omnia (`--target omnia` and `spawn`).
    #[arg(long, value_enum, default_value_t = Protocol::Binary)]
    protocol: Protocol,
    /// The omnia server's HTTP API, for `--protocol http`.
    #[arg(long, default_value = "127.0.0.1:8878")]
    http_addr: String,
    /// A token (`omnia credentials add`) for a server that requires credentials; it
    /// needs the roles of the workload (ingest, decide, read).
    #[arg(long, env = "OMNIA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Connect to the binary protocol over TLS, checking the server's certificate with
    /// this CA (PEM); `--protocol http` speaks plain HTTP only.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// Send HTTP bodies gzipped (`--protocol http`), as trackers do.
    #[arg(long)]
    gzip: bool,
    /// The Redis server, for `--target redis`.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    #[arg(long, value_enum, default_value_t = Workload::Ingest)]
    workload: Workload,
    /// Connections per stream (ingest, decide, feedback and query streams each get this many).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    pipeline: usize,
    /// Events per ingest request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Events per second (ingest, mixed) or queries per second (query), in all.
    #[arg(long, default_value_t = 500_000.0)]
    rate: f64,
    /// Decisions per second (decide, mixed).
    #[arg(long, default_value_t = 50_000.0)]
    decide_rate: f64,
    /// Feedback per second (mixed).
    #[arg(long, default_value_t = 5_000.0)]
    feedback_rate: f64,
    /// Closed loop: as fast as the target answers, ignoring the rates.
    #[arg(long)]
    max: bool,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Customers in the population.
    #[arg(long, default_value_t = 100_000)]
    customers: u64,
    /// Zipf exponent of customer popularity.
    #[arg(long, default_value_t = 1.05)]
    zipf: f64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Journey probabilities (TOML; fields left out keep their defaults).
    #[arg(long)]
    mix: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = ClockKind::Live)]
    clock: ClockKind,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 3600.0)]
    sim_speed: f64,
    /// How far in the past the simulated clock starts, in days.
    #[arg(long, default_value_t = 7.0)]
    sim_span_days: f64,
    /// The config the server runs (offer and segment names for feedback and queries; the
    /// engine's config for `--target inprocess`). The embedded default if omitted.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Worker threads of this process.
    #[arg(long)]
    threads: Option<usize>,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a self-contained HTML report.
    #[arg(long)]
    report: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    no_progress: bool,
    /// The server's Prometheus endpoint (`serve --metrics-listen`, `--target omnia`),
    /// scraped as measuring starts and ends to print the server's own stage breakdown
    /// beside this run's figures; `off` skips it. Needs the `read` role with `--token` on
    /// a server with credentials.
    #[arg(long, default_value = "127.0.0.1:9878", value_name = "ADDR")]
    metrics: String,
    /// Trigger probes per second (`--target omnia`, binary protocol): first purchases by
    /// new customers, whose `thank_you` deliveries (the default config's trigger) the
    /// generator receives and times from the purchase's send to the webhook's receipt.
    /// 0: none.
    #[arg(long, default_value_t = 0.0)]
    trigger_probes: f64,
    /// A true effect built into the journeys of a mixed run (`loadgen::effect`): the
    /// treated arm's customers, once shown one of the experiment's exposing offers,
    /// take each step towards a purchase (log in with a cart, click the reminder, buy)
    /// this much more often (0.5: 50% more; 0: none, an A/A check). The experiment's
    /// report, printed at the end, should find it.
    #[arg(long, default_value_t = 0.5, value_name = "LIFT")]
    effect: f64,
    /// The experiment the effect is built into; by default the config's first measured
    /// one (the default config's `cart_reminder_boost`).
    #[arg(long, value_name = "NAME")]
    effect_experiment: Option<String>,
    /// The treated arm; by default the experiment's first arm that is not its baseline.
    #[arg(long, value_name = "ARM")]
    effect_arm: Option<String>,
    /// Where the probes' webhook receiver listens: where the server's triggers post (the
    /// default config's post to 127.0.0.1:8900).
    #[arg(long, default_value = "127.0.0.1:8900", value_name = "ADDR")]
    webhook_listen: std::net::SocketAddr,
}

/// Where this run's message ids start: the wall clock in microseconds, so that two runs
/// against one server never send the same id (the second would be all duplicates).
fn message_id_base() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
        << 8
}

fn main() -> anyhow::Result<()> {
    let o = Options::parse();
    anyhow::ensure!(
        o.connections >= 1 && o.pipeline >= 1 && o.batch >= 1 && o.customers >= 1,
        "--connections, --pipeline, --batch and --customers must be at least 1"
    );
    anyhow::ensure!(o.seconds > 0.0, "--seconds must be above 0");
    let config = match &o.config {
        Some(path) => Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Config::embedded_default().map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    let mix = match &o.mix {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Mix::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => Mix::default(),
    };
    if o.target == TargetKind::Redis {
        anyhow::ensure!(
            o.workload != Workload::Query,
            "the Redis baseline implements the ingest, decide and mixed workloads, not query"
        );
    }
    let time = match o.clock {
        ClockKind::Live => TimeMode::Live,
        ClockKind::Sim => TimeMode::Sim {
            speed: o.sim_speed,
            span_ms: (o.sim_span_days * 86_400_000.0) as i64,
        },
    };
    // The engines this process runs (`spawn`, `inprocess`) share the events' clock.
    let clock = EventClock::new(time);
    let effect = if o.workload == Workload::Mixed && o.target != TargetKind::Redis {
        Effect::new(
            &config,
            o.effect_experiment.as_deref(),
            o.effect_arm.as_deref(),
            o.effect,
            o.customers,
        )
        .map_err(anyhow::Error::msg)?
        .map(Arc::new)
    } else {
        None
    };
    let settings = Settings {
        workload: o.workload,
        connections: o.connections,
        pipeline: o.pipeline,
        batch: o.batch,
        rate: o.rate,
        decide_rate: o.decide_rate,
        feedback_rate: o.feedback_rate,
        max: o.max,
        seconds: o.seconds,
        warmup: o.warmup,
        customers: o.customers,
        zipf: o.zipf,
        seed: o.seed,
        mix,
        clock,
        effect,
        offers: offer_names(&config),
        segments: segment_names(&config),
        progress: !o.no_progress,
        metrics: (o.target == TargetKind::Omnia && o.metrics != "off").then(|| {
            loadgen::breakdown::Scrape {
                addr: o.metrics.clone(),
                token: o.token.clone(),
            }
        }),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = o.threads {
        runtime.worker_threads(n.max(1));
    }
    let runtime = runtime.enable_all().build()?;
    if o.trigger_probes > 0.0 {
        anyhow::ensure!(
            o.target == TargetKind::Omnia && o.protocol == Protocol::Binary,
            "--trigger-probes needs --target omnia over the binary protocol: a server with a data directory runs triggers"
        );
    }
    let probes = if o.trigger_probes > 0.0 {
        let (warmup, seconds) = (settings.warmup, settings.seconds);
        let (addr, token) = (o.addr.clone(), o.token.clone());
        let tls = match &o.tls_ca {
            Some(ca) => Some(omnia::tls::client_config(ca, None)?),
            None => None,
        };
        let rate = o.trigger_probes;
        let listen = o.webhook_listen;
        Some(runtime.block_on(async move {
            let probes = loadgen::probes::Probes::start(listen, rate).await?;
            let target = OmniaTarget::connect(&addr, token, tls)
                .await
                .map_err(anyhow::Error::msg)?;
            let sender = probes.clone();
            tokio::spawn(async move {
                // After the warm-up, for the measured seconds, like the workload.
                tokio::time::sleep(std::time::Duration::from_secs_f64(warmup)).await;
                let until =
                    tokio::time::Instant::now() + std::time::Duration::from_secs_f64(seconds);
                sender.send(target, until).await;
            });
            anyhow::Ok(probes)
        })?)
    } else {
        None
    };
    let report: Report = runtime.block_on(async {
        match o.target {
            TargetKind::Omnia if o.protocol == Protocol::Http => {
                let (http, gzip) = (o.http_addr.clone(), o.gzip);
                let ids = Arc::new(std::sync::atomic::AtomicU64::new(message_id_base()));
                let token = o.token.clone();
                run(settings, &format!("omnia over HTTP at {http}"), || {
                    let (http, ids, token) = (http.clone(), ids.clone(), token.clone());
                    async move { Ok(HttpTarget::new(&http, gzip, ids, token.as_deref())) }
                })
                .await
            }
            TargetKind::Omnia => {
                let addr = o.addr.clone();
                let token = o.token.clone();
                let tls = match &o.tls_ca {
                    Some(ca) => Some(omnia::tls::client_config(ca, None)?),
                    None => None,
                };
                run(settings, &format!("omnia at {addr}"), || {
                    let (addr, token, tls) = (addr.clone(), token.clone(), tls.clone());
                    async move { OmniaTarget::connect(&addr, token, tls).await }
                })
                .await
            }
            TargetKind::Spawn => {
                let (addr, http, stop) = spawn_server_on(config, Arc::new(clock)).await?;
                let report = if o.protocol == Protocol::Http {
                    let gzip = o.gzip;
                    let ids = Arc::new(std::sync::atomic::AtomicU64::new(message_id_base()));
                    run(
                        settings,
                        &format!("omnia spawned, over HTTP at {http}"),
                        || {
                            let (http, ids) = (http.clone(), ids.clone());
                            // The spawned server has no credentials.
                            async move { Ok(HttpTarget::new(&http, gzip, ids, None)) }
                        },
                    )
                    .await
                } else {
                    run(settings, &format!("omnia spawned at {addr}"), || {
                        let addr = addr.clone();
                        async move { OmniaTarget::connect(&addr, None, None).await }
                    })
                    .await
                };
                let _ = stop.send(());
                report
            }
            TargetKind::Inprocess => {
                let node = Arc::new(omnia::node::Node::new(config, Arc::new(clock)));
                run(settings, "omnia in-process", || {
                    let node = node.clone();
                    async move { Ok(InProcessTarget { node }) }
                })
                .await
            }
            TargetKind::Redis => {
                let url = o.redis.clone();
                run(settings, &format!("Redis at {url}"), || {
                    let url = url.clone();
                    async move { RedisTarget::connect(&url).await }
                })
                .await
            }
        }
    })?;
    let mut report = report;
    if let Some(probes) = probes {
        report.trigger_probes =
            Some(runtime.block_on(probes.report(std::time::Duration::from_secs(10))));
    }
    print!("{}", report.table());
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &o.report {
        std::fs::write(path, report.html())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
