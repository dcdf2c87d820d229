//! The `omnia` command line.
//!
//! - `omnia serve`: the server, on the embedded default config unless `--config` says
//!   otherwise; stops gracefully on SIGINT or SIGTERM.
//! - `omnia check-config FILE`: validates a config and prints every error with its
//!   place, or a summary of what the config defines.
//! - `omnia ctl ...`: talks to a running server (ping, ingest, profile, segment, stats);
//!   a readable table by default, JSON with `--json`.
//! - `omnia webhooks`: a webhook receiver that prints what triggers deliver, for
//!   trying them out (the default config's triggers post to it).
//! - `omnia demo`: runs the engine in-process on a simulated omnichannel population and
//!   prints segment sizes, throughput and one profile.

mod ctl;
mod webhooks;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;
use omnia::clock::{Clock, ManualClock};
use omnia::config::Config;
use omnia::engine::{Engine, RawEvent};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Parser)]
#[command(
    name = "omnia",
    version,
    about = "A real-time omnichannel decision engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeOptions),
    /// Talk to a running server.
    Ctl(ctl::CtlOptions),
    /// Manage the credentials file: who may connect, in which roles.
    Credentials {
        #[command(subcommand)]
        command: CredentialsCommand,
    },
    /// Receive trigger deliveries and print them: a stand-in for the e-mail service
    /// while trying triggers out (the default config's webhooks post here).
    Webhooks(webhooks::WebhooksOptions),
    /// Validate a config file: print its errors (exit code 1) or a summary.
    CheckConfig {
        /// The config file (TOML).
        file: PathBuf,
    },
    /// Run the engine in-process on a simulated population and show what it computes.
    Demo {
        /// Config file; the embedded default (examples/retail.toml) if omitted.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Number of simulated customers.
        #[arg(long, default_value_t = 200_000)]
        customers: u32,
    },
}

#[derive(Subcommand)]
enum CredentialsCommand {
    /// Add a secret for a principal (created with --role if new) and print it, once.
    Add {
        /// The principal: 1 to 64 of a-z, 0-9, `_`, `.`, `-`.
        name: String,
        /// A role: ingest, decide, read or admin (repeat for several). Replaces an
        /// existing principal's roles; required for a new one.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// The credentials file (created if missing).
        #[arg(long, default_value = "omnia-credentials.toml")]
        file: PathBuf,
    },
    /// List principals, their roles and their secrets' ids (never the secrets).
    List {
        #[arg(long, default_value = "omnia-credentials.toml")]
        file: PathBuf,
    },
    /// Remove one secret of a principal (the principal goes with its last secret).
    Revoke {
        name: String,
        /// The secret's id (the 8 hex digits after `om_`).
        id: String,
        #[arg(long, default_value = "omnia-credentials.toml")]
        file: PathBuf,
    },
}

#[derive(clap::Args)]
struct ServeOptions {
    /// Config file; the embedded default (examples/retail.toml) if omitted.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: String,
    /// Data directory (created if missing): the write-ahead log and the snapshot,
    /// recovered at start.
    #[arg(long, default_value = "./omnia-data")]
    data_dir: PathBuf,
    /// Override `[storage] fsync`: always, interval or never.
    #[arg(long, value_parser = parse_fsync)]
    fsync: Option<omnia::config::FsyncPolicy>,
    /// Override `[storage] snapshot_interval_s`: seconds between snapshots (0: not by
    /// time).
    #[arg(long, value_name = "SECONDS")]
    snapshot_interval: Option<u64>,
    /// Number of shards, overriding engine.shards (a power of two up to 256).
    #[arg(long)]
    shards: Option<u32>,
    /// Largest accepted frame, in bytes.
    #[arg(long, default_value_t = omnia::protocol::DEFAULT_MAX_FRAME)]
    max_frame: u32,
    /// Most connections at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Seconds after which a connection with no request is closed.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Mebibytes of read buffer all connections together may hold beyond 16 KiB each;
    /// past it the server stops reading until frames complete. At least --max-frame.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    max_buffered_mib: usize,
    /// Seconds a new connection has to complete HELLO before it is closed.
    #[arg(long, default_value_t = 5)]
    handshake_timeout: u64,
    /// Seconds shutdown waits for connections to finish; then they are dropped (nothing
    /// they were not answered was acknowledged) and the shutdown snapshot is written.
    #[arg(long, default_value_t = 10)]
    shutdown_timeout: u64,
    /// Address of the Prometheus endpoint (`/metrics`).
    #[arg(long, default_value = "127.0.0.1:9878")]
    metrics_listen: std::net::SocketAddr,
    /// Do not serve metrics.
    #[arg(long)]
    no_metrics: bool,
    /// Address of the HTTP API (the Segment Tracking API, `/healthz`, `/readyz`).
    #[arg(long, default_value = "127.0.0.1:8878")]
    http_listen: String,
    /// Do not serve the HTTP API.
    #[arg(long)]
    no_http: bool,
    /// Most HTTP connections served at once; one more is answered 503 SERVER_BUSY.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    http_max_connections: u32,
    /// Seconds an HTTP client may take to send a request's headers (the body has 30).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    http_header_timeout: u64,
    /// Credentials file (`omnia credentials add`): every operation but HELLO and PING
    /// then needs a principal with its role. Read again at RELOAD and SIGHUP.
    #[arg(long, value_name = "FILE")]
    credentials: Option<PathBuf>,
    /// TLS certificate chain (PEM) for the binary and HTTP listeners; with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require clients to present a certificate signed by this CA (PEM): mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Serve without credentials on addresses other than loopback. Anyone who reaches
    /// the ports can then do anything; without this, omnia refuses to start that way.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Log filter: error, warn, info, debug, trace, or a tracing filter directive.
    #[arg(long, default_value = "info")]
    log: String,
    /// Threads that serve requests (the async runtime's workers); by default one per
    /// core the process may run on. The log's writer and sync threads and the snapshot
    /// thread come on top.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(options) => match serve(options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Ctl(options) => {
            // `omnia ctl profile KEY | head` must end quietly when `head` has read enough,
            // as command-line tools do, not panic on a closed pipe.
            #[cfg(unix)]
            // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            ctl::run(options)
        }
        Command::Credentials { command } => match credentials(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Webhooks(options) => match webhooks::run(options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                print!("{}", config.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Demo { config, customers } => {
            let config = match config {
                Some(path) => Config::load(&path),
                None => Config::embedded_default(),
            };
            match config {
                Ok(config) => match demo(config, customers) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        ExitCode::FAILURE
                    }
                },
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(options: ServeOptions) -> anyhow::Result<()> {
    use anyhow::Context;
    tracing_subscriber::fmt()
        // Colours for a terminal; plain text for a file or a log collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&options.log)
                .with_context(|| format!("bad --log filter `{}`", options.log))?,
        )
        .init();
    let overrides = omnia::config::Overrides {
        shards: options.shards,
        fsync: options.fsync,
        snapshot_interval_s: options.snapshot_interval,
    };
    let config = match &options.config {
        Some(path) => Config::load_with(path, &overrides),
        None => Config::from_source_with(
            &omnia::config::Source::new(
                omnia::config::DEFAULT_CONFIG_NAME,
                omnia::config::DEFAULT_CONFIG,
            ),
            &overrides,
        ),
    }
    .map_err(|e| anyhow::anyhow!("the config is invalid:\n{e}"))?;
    anyhow::ensure!(
        options.idle_timeout > 0,
        "--idle-timeout must be at least 1 second"
    );
    anyhow::ensure!(
        options.max_frame >= 64,
        "--max-frame {} is too small: at least 64 bytes",
        options.max_frame
    );
    anyhow::ensure!(
        options.max_connections > 0,
        "--max-connections must be at least 1"
    );
    anyhow::ensure!(
        (options.max_buffered_mib << 20) >= options.max_frame as usize,
        "--max-buffered-mib {} is smaller than one --max-frame of {} bytes",
        options.max_buffered_mib,
        options.max_frame
    );
    anyhow::ensure!(
        options.handshake_timeout > 0,
        "--handshake-timeout must be at least 1 second"
    );
    if let Some(threads) = options.threads {
        anyhow::ensure!(
            (1..=1024).contains(&threads),
            "--threads {threads}: from 1 to 1024"
        );
    }
    // `--credentials`, else the config's `[security] credentials`.
    let mut options = options;
    if options.credentials.is_none() {
        options.credentials = config.credentials.clone();
    }
    let authenticator = match &options.credentials {
        Some(path) => Some(omnia::security::Authenticator::load(path)?),
        None => None,
    };
    if authenticator.is_none() && !options.insecure_no_auth {
        protected_mode(&options)?;
    }
    let tls = match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => Some(omnia::tls::server_config(
            cert,
            key,
            options.tls_client_ca.as_deref(),
        )?),
        _ => None,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = options.threads {
        runtime.worker_threads(threads);
    }
    let runtime = runtime
        .enable_all()
        .on_thread_park(give_back_freed_memory)
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Every port is bound before recovery, the binary one last: a port that is taken
        // stops the start at once, before a big data directory loads, and once the binary
        // port accepts, every other one is this server's too.
        let metrics_listener = if options.no_metrics {
            None
        } else {
            let listener = tokio::net::TcpListener::bind(options.metrics_listen)
                .await
                .with_context(|| format!("cannot serve metrics on {}", options.metrics_listen))?;
            tracing::info!(addr = %listener.local_addr()?, "metrics at /metrics");
            Some(listener)
        };
        // The HTTP edge serves from before recovery, so that /healthz answers while a
        // big data directory loads; its other endpoints wait for the node (503).
        let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
        let stopped = |stop: &tokio::sync::broadcast::Sender<()>| {
            let mut stopped = stop.subscribe();
            async move {
                let _ = stopped.recv().await;
            }
        };
        let edge = omnia::http::Edge::with_tls(
            omnia::http::HttpLimits {
                max_connections: options.http_max_connections as usize,
                header_timeout: std::time::Duration::from_secs(options.http_header_timeout),
                ..omnia::http::HttpLimits::default()
            },
            tls.clone(),
        );
        let http = if options.no_http {
            None
        } else {
            let listener = tokio::net::TcpListener::bind(&options.http_listen)
                .await
                .with_context(|| format!("cannot listen for HTTP on {}", options.http_listen))?;
            tracing::info!(addr = %listener.local_addr()?, "HTTP API (Segment Tracking API, /healthz, /readyz)");
            Some(tokio::spawn(omnia::http::run(
                listener,
                edge.clone(),
                stopped(&stop),
            )))
        };
        let listener = tokio::net::TcpListener::bind(&options.listen)
            .await
            .with_context(|| format!("cannot listen on {}", options.listen))?;
        let storage = config.storage.clone();
        let omnia::store::Store {
            data: data_dir,
            node,
            wal,
            stream,
            recovered,
        } = omnia::store::Store::open(
            &options.data_dir,
            config,
            Arc::new(omnia::clock::SystemClock),
            omnia::store::wal::WalOptions::from_settings(&storage),
        )?;
        tracing::info!("{recovered}");
        tracing::info!(
            data_dir = %options.data_dir.display(),
            fsync = storage.fsync.name(),
            "write-ahead log open"
        );
        tracing::info!(
            addr = %listener.local_addr()?,
            config = %node.config().source_name,
            config_version = format!("{:08x}", node.config().version),
            shards = node.config().engine.shards,
            "omnia is serving"
        );
        let limits = omnia::server::Limits {
            max_connections: options.max_connections,
            max_frame: options.max_frame,
            idle_timeout: std::time::Duration::from_secs(options.idle_timeout),
            handshake_timeout: std::time::Duration::from_secs(options.handshake_timeout),
            shutdown_timeout: std::time::Duration::from_secs(options.shutdown_timeout),
            read_budget: options.max_buffered_mib << 20,
            ..omnia::server::Limits::default()
        };
        let erasures = Arc::new(omnia::store::snapshot::Erasures::new(
            data_dir.clone(),
            std::time::Duration::from_secs(node.config().privacy.erase_within as u64),
        ));
        // A FORGET replayed may have been acknowledged before a crash ended its erasure.
        if node.engine().last_forget_replayed() > 0 {
            erasures.request(node.engine().last_forget_replayed());
        }
        let mut shared = omnia::server::Shared::new(node, limits)
            .with_erasures(erasures.clone())
            .with_stream(stream.clone());
        if let Some(tls) = tls {
            tracing::info!(
                client_certificates = options.tls_client_ca.is_some(),
                "TLS on the binary and HTTP listeners"
            );
            shared = shared.with_tls(tls);
        }
        match (authenticator, &options.credentials) {
            (Some(auth), Some(path)) => {
                tracing::info!(credentials = %path.display(), principals = auth.principals(), "credentials required");
                shared = shared.with_credentials(path.clone(), auth);
            }
            _ if options.insecure_no_auth => tracing::warn!(
                "no credentials (--insecure-no-auth): anyone who reaches the ports can do anything"
            ),
            _ => tracing::info!("no credentials file: serving loopback clients only, without authentication"),
        }
        if let Some(path) = &options.config {
            shared = shared.with_reload(omnia::server::ReloadSource {
                config: path.clone(),
                overrides,
                data: data_dir.clone(),
            });
        }
        let shared = Arc::new(shared);
        // Snapshots follow the engine a reload swaps in.
        let current = shared.clone();
        let snapshotter = omnia::store::snapshot::Snapshotter::spawn(
            data_dir.clone(),
            Arc::new(move || current.node()),
            storage.snapshot_interval,
            storage.snapshot_log_bytes,
            erasures,
        )
        .context("cannot start the snapshot thread")?;
        let triggers = omnia::server::triggers::TriggerRunner::spawn(shared.clone(), &data_dir.triggers())
            .context("cannot start the trigger runner")?;
        #[cfg(unix)]
        {
            let reloader = shared.clone();
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                    .context("cannot listen for SIGHUP")?;
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the config");
                    // The outcome is logged by the reload itself.
                    let _ = omnia::server::cmd::reload::reload(&reloader).await;
                }
            });
        }
        let metrics = if let Some(listener) = metrics_listener {
            let handle = omnia::server::metrics::install().map_err(anyhow::Error::msg)?;
            tokio::spawn(omnia::http::serve_metrics(
                listener,
                handle.clone(),
                shared.clone(),
                stopped(&stop),
            ));
            Some(handle)
        } else {
            None
        };
        // Timers also run on every read and write of a shard; this spreads the work for
        // shards that see no traffic, and keeps the gauges fresh.
        let ticker = shared.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                every.tick().await;
                ticker.node().tick();
                if let Some(handle) = &metrics {
                    omnia::server::metrics::publish_gauges(&ticker);
                    handle.run_upkeep();
                }
            }
        });
        edge.ready(shared.clone());
        let signal = stop.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = signal.send(());
        });
        let served = omnia::server::run(listener, shared.clone(), stopped(&stop)).await;
        // The binary server may also stop because accepting failed: HTTP stops with it.
        let _ = stop.send(());
        if let Some(http) = http {
            match http.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "the HTTP API stopped with an error"),
                Err(e) => tracing::error!(error = %e, "the HTTP API's task failed"),
            }
        }
        // Deliveries in flight stay open in their journal, and are made at the next start.
        if let Some(triggers) = triggers {
            triggers.stop().await;
        }
        // A snapshot at shutdown makes the next start fast: it replays nothing.
        snapshotter.stop();
        match omnia::store::snapshot::write(&data_dir, &shared.node()) {
            Ok(written) => tracing::info!("{written}"),
            Err(e) => tracing::error!(error = %e, "the snapshot at shutdown failed; the log keeps everything"),
        }
        // Whatever was acknowledged is in the log already; this syncs the rest.
        wal.close();
        stream.close();
        served.context("the server stopped accepting connections")?;
        tracing::info!("omnia stopped");
        anyhow::Ok(())
    })
}

/// Refuses to serve without credentials on an address other than loopback, as Redis's
/// protected mode does: a server reachable from the network would let anyone ingest,
/// read every profile and reload its config.
fn protected_mode(options: &ServeOptions) -> anyhow::Result<()> {
    use std::net::ToSocketAddrs;
    let mut listeners = vec![("--listen", options.listen.clone())];
    if !options.no_http {
        listeners.push(("--http-listen", options.http_listen.clone()));
    }
    if !options.no_metrics {
        listeners.push(("--metrics-listen", options.metrics_listen.to_string()));
    }
    for (flag, addr) in listeners {
        let resolved: Vec<std::net::SocketAddr> = match addr.to_socket_addrs() {
            Ok(addrs) => addrs.collect(),
            Err(e) => anyhow::bail!("{flag} {addr}: {e}"),
        };
        if let Some(open) = resolved.iter().find(|a| !a.ip().is_loopback()) {
            anyhow::bail!(
                "{flag} {addr} is reachable beyond this machine ({open}), and no credentials are configured: anyone reaching it could ingest, read every profile and reload the config.\n  Add credentials: `omnia credentials add ADMIN --role admin --file creds.toml` (and one principal per client), then `omnia serve --credentials creds.toml ...`.\n  Or listen on 127.0.0.1, or pass --insecure-no-auth if something else guards the port."
            );
        }
    }
    Ok(())
}

/// `omnia credentials ...`.
fn credentials(command: CredentialsCommand) -> anyhow::Result<()> {
    use omnia::security::CredentialsFile;
    match command {
        CredentialsCommand::Add { name, roles, file } => {
            let mut credentials = CredentialsFile::load_or_empty(&file)?;
            let now = jiff::Timestamp::now()
                .round(jiff::Unit::Second)?
                .to_string();
            let token = credentials
                .add(&name, &roles, &now)
                .map_err(anyhow::Error::msg)?;
            credentials.save(&file)?;
            let principal = credentials
                .principals
                .iter()
                .find(|p| p.name == name)
                .expect("just added");
            eprintln!(
                "added secret {} for `{name}` (roles: {}) to {}; it is shown this once:",
                token.id,
                principal.roles.join(", "),
                file.display()
            );
            println!("{}", token.text());
            Ok(())
        }
        CredentialsCommand::List { file } => {
            let credentials = CredentialsFile::load(&file)?;
            println!("{:<24} {:<28} secrets", "principal", "roles");
            for p in &credentials.principals {
                let secrets: Vec<String> = p
                    .secrets
                    .iter()
                    .map(|s| match &s.added {
                        Some(added) => format!("{} (added {added})", s.id),
                        None => s.id.clone(),
                    })
                    .collect();
                println!(
                    "{:<24} {:<28} {}",
                    p.name,
                    p.roles.join(", "),
                    secrets.join(", ")
                );
            }
            Ok(())
        }
        CredentialsCommand::Revoke { name, id, file } => {
            let mut credentials = CredentialsFile::load(&file)?;
            credentials.revoke(&name, &id).map_err(anyhow::Error::msg)?;
            credentials.save(&file)?;
            eprintln!(
                "revoked secret {id} of `{name}`; a running server stops taking it at its next reload (SIGHUP or `omnia ctl reload`)"
            );
            Ok(())
        }
    }
}

/// Called when a worker thread has nothing to do: at most once a second per thread, lets
/// mimalloc return the memory this thread freed to the OS. mimalloc purges freed pages
/// lazily, on later allocations by the same thread; a worker that served a burst of
/// connections and then idles would otherwise keep that memory resident for good.
fn give_back_freed_memory() {
    use std::cell::Cell;
    use std::time::Instant;
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    LAST.with(|last| {
        let now = Instant::now();
        if last
            .get()
            .is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1))
        {
            return;
        }
        last.set(Some(now));
        // SAFETY: mi_collect only walks this thread's own heap; any thread may call it.
        unsafe { libmimalloc_sys::mi_collect(true) };
    });
}

fn parse_fsync(text: &str) -> Result<omnia::config::FsyncPolicy, String> {
    match text {
        "always" => Ok(omnia::config::FsyncPolicy::Always),
        "interval" => Ok(omnia::config::FsyncPolicy::Interval),
        "never" => Ok(omnia::config::FsyncPolicy::Never),
        other => Err(format!("`{other}`: expected always, interval or never")),
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// A small deterministic generator (xorshift), so the demo is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn demo(config: Config, customers: u32) -> anyhow::Result<()> {
    let start_ms: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let clock = Arc::new(ManualClock::new(start_ms));
    let has = |e: &str| config.event_id(e).is_some();
    anyhow::ensure!(
        ["page_view", "product_view", "add_to_cart", "purchase", "identify"].iter().all(|e| has(e)),
        "the demo drives the retail journey and needs the event types page_view, product_view, add_to_cart, purchase and identify"
    );
    let engine: Engine = Engine::new(config, clock.clone());
    println!(
        "omnia demo: {customers} simulated customers on {}",
        engine.config().source_name
    );
    println!(
        "profile row: {} bytes per customer for this config",
        engine.profile_row_bytes()
    );

    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut events = Vec::new();
    let channels = ["web", "app", "email", "store"];
    let mut applied = 0u64;
    let started = Instant::now();
    // Simulated day: each customer browses; some add to cart, some buy, some log in.
    for hour in 0..24 {
        for c in 0..customers {
            if rng.below(24) != hour % 24 {
                continue;
            }
            let now = clock.now_ms();
            let anon = format!("anon:c{c}");
            let user = format!("user:{c}");
            let channel = channels[rng.below(2) as usize];
            events.clear();
            for _ in 0..1 + rng.below(6) {
                events.push(RawEvent::new("page_view", channel, now).key(&anon));
            }
            events.push(
                RawEvent::new("product_view", channel, now)
                    .key(&anon)
                    .prop("sku", "SKU-1")
                    .prop("price", 80.0),
            );
            if rng.below(3) == 0 {
                events.push(
                    RawEvent::new("add_to_cart", channel, now)
                        .key(&anon)
                        .prop("sku", "SKU-1")
                        .prop("price", 80.0),
                );
            }
            if rng.below(4) == 0 {
                events.push(
                    RawEvent::new("identify", "app", now)
                        .key(&anon)
                        .key(&user)
                        .key(&format!("email:c{c}@example.com"))
                        .attr("country", if rng.below(2) == 0 { "NL" } else { "DE" })
                        .attr("email_opt_in", true),
                );
            }
            if rng.below(6) == 0 {
                let amount = 20.0 + rng.below(600) as f64;
                events.push(
                    RawEvent::new("purchase", channels[rng.below(4) as usize], now)
                        .key(&anon)
                        .prop("amount", amount)
                        .prop("category", "shoes"),
                );
            }
            for event in &events {
                engine.ingest(event)?;
                applied += 1;
            }
        }
        clock.advance_secs(3600);
        engine.tick();
    }
    let elapsed = started.elapsed();
    println!(
        "ingested {applied} events in {:.2?} ({:.0} events/s on one thread, including name resolution)",
        elapsed,
        applied as f64 / elapsed.as_secs_f64()
    );
    let stats = engine.stats();
    println!(
        "customers {} (keys {}, merges {})",
        stats.customers, stats.keys, stats.merges
    );
    println!("\nsegment sizes after one simulated day:");
    for segment in &engine.config().segments {
        println!(
            "  {:<24} {:>9}",
            segment.name,
            engine.segment_count(&segment.name)?
        );
    }
    clock.advance_secs(31 * 86_400);
    println!("\n31 days later, with no new events:");
    for segment in &engine.config().segments {
        println!(
            "  {:<24} {:>9}",
            segment.name,
            engine.segment_count(&segment.name)?
        );
    }
    if let Some(profile) = engine.profile("anon:c1") {
        println!("\n{profile}");
    }
    Ok(())
}
