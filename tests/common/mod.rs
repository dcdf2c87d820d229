//! A real server on an ephemeral port, for integration tests.

#![allow(dead_code)]

pub mod binary;
pub mod observe;
pub mod pki;
pub mod raw;
pub mod receiver;

use std::sync::Arc;

use omnia::clock::ManualClock;
use omnia::config::Config;
use omnia::node::Node;
use omnia::server::{Limits, Shared};
use tokio::sync::oneshot;

/// Log options for a test that crashes or cuts the log itself: no fsync (a test's
/// process crash keeps what was written), files far larger than a test writes.
pub fn unsynced_wal() -> omnia::store::wal::WalOptions {
    omnia::store::wal::WalOptions {
        faults: None,
        policy: omnia::config::FsyncPolicy::Never,
        interval: std::time::Duration::from_millis(5),
        segment_bytes: 64 << 20,
    }
}

/// Copies the directory tree `from` to `to` (a data directory, for a test to work on).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A fresh directory under the system's temporary one, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// `omnia-{suite}-{name}-{pid}`, emptied first.
    pub fn new(suite: &str, name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("omnia-{suite}-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A decision request for the `top` best offers for `key` on `channel`, recording their
/// impressions with `record`, without explanation or context.
pub fn ask(
    key: &str,
    channel: &str,
    top: u8,
    record: bool,
) -> omnia::model::decision::DecisionRequest {
    omnia::model::decision::DecisionRequest {
        key: key.into(),
        channel: channel.into(),
        top,
        record_impression: record,
        explain: false,
        context: Vec::new(),
    }
}

/// Customer `i` logs in on `channel`: the cookie `anon:c{i}`, the account `user:{i}` and
/// an e-mail address in one event, which merges the cookie's profile into the account's.
pub fn login(i: usize, channel: &str, now: i64) -> omnia::engine::RawEvent {
    omnia::engine::RawEvent::new("page_view", channel, now)
        .key(&format!("anon:c{i}"))
        .key(&format!("user:{i}"))
        .key(&format!("email:c{i}@example.com"))
        .attr("email_opt_in", true)
        .attr("country", if i % 3 == 0 { "NL" } else { "FR" })
}

/// The default config without its `[triggers.NAME]` tables, for tests of what
/// `[triggers] stream` alone records (a trigger's segment is recorded too).
pub fn default_config_without_triggers() -> &'static str {
    let text = omnia::config::DEFAULT_CONFIG;
    let at = text
        .find("\n# Triggers:")
        .expect("the default config's triggers start with a `# Triggers:` comment");
    &text[..at]
}

/// An HTTP client for tests. omnia's reqwest has TLS through rustls without a crypto
/// provider of its own (the server's, ring, is installed for it): a client built before
/// one is installed would panic.
pub fn http_client() -> reqwest::Client {
    omnia::tls::install_crypto_provider();
    reqwest::Client::new()
}

/// Monday 2 March 2026, 10:00 UTC.
pub const START_MS: i64 = 1_772_445_600_000;

pub struct TestServer {
    pub addr: String,
    /// `http://127.0.0.1:PORT` of the HTTP edge, when the test asked for one.
    pub http: Option<String>,
    http_stop: Option<oneshot::Sender<()>>,
    pub node: Arc<Node>,
    pub clock: Arc<ManualClock>,
    pub shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
    triggers: Option<omnia::server::triggers::TriggerRunner>,
}

impl TestServer {
    /// The default config, a manual clock at [`START_MS`], default limits.
    pub async fn start() -> TestServer {
        TestServer::with_limits(Limits::default()).await
    }

    pub async fn with_limits(limits: Limits) -> TestServer {
        TestServer::with(Config::embedded_default().expect("default config"), limits).await
    }

    /// A config of the test's own, default limits.
    pub async fn with_config(config: Config) -> TestServer {
        TestServer::with(config, Limits::default()).await
    }

    pub async fn with(config: Config, limits: Limits) -> TestServer {
        let clock = Arc::new(ManualClock::new(START_MS));
        let engine = Arc::new(Node::new(config, clock.clone()));
        TestServer::serve(engine, clock, limits).await
    }

    /// Serves an engine the test made (with a journal attached, say) on `clock`.
    pub async fn serve(engine: Arc<Node>, clock: Arc<ManualClock>, limits: Limits) -> TestServer {
        let shared = Shared::new(engine.clone(), limits);
        TestServer::serve_shared(engine, clock, shared).await
    }

    /// Serves a store's node and change stream (SUBSCRIBE) on `clock`, the store's.
    /// Runs the config's triggers too, with the deliveries journal in the store's
    /// data directory; [`TestServer::shutdown`] stops them.
    pub async fn on_store(store: &omnia::store::Store, clock: Arc<ManualClock>) -> TestServer {
        let shared =
            Shared::new(store.node.clone(), Limits::default()).with_stream(store.stream.clone());
        let mut server = TestServer::serve_shared(store.node.clone(), clock, shared).await;
        server.triggers = omnia::server::triggers::TriggerRunner::spawn(
            server.shared.clone(),
            &store.data.triggers(),
        )
        .expect("start the trigger runner");
        server
    }

    /// The default config, binary and HTTP, requiring the credentials in `file`; failed
    /// authentications are not slowed (the throttle has unit tests of its own).
    pub async fn secured(file: &std::path::Path) -> TestServer {
        let clock = Arc::new(ManualClock::new(START_MS));
        let engine = Arc::new(Node::new(
            Config::embedded_default().expect("default config"),
            clock.clone(),
        ));
        let auth = omnia::security::Authenticator::load(file).expect("credentials");
        let shared = Shared::new(engine.clone(), Limits::default())
            .with_credentials(file.to_path_buf(), auth)
            .with_auth_failures_free(u32::MAX);
        let mut server = TestServer::serve_shared(engine, clock, shared).await;
        let edge = omnia::http::Edge::new(omnia::http::HttpLimits::default());
        edge.ready(server.shared.clone());
        server.serve_http(edge).await;
        server
    }

    async fn serve_shared(
        engine: Arc<Node>,
        clock: Arc<ManualClock>,
        shared: Shared,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local addr").to_string();
        let shared = Arc::new(shared);
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(omnia::server::run(listener, shared.clone(), async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            http: None,
            http_stop: None,
            node: engine,
            clock,
            shared,
            stop: Some(stop),
            handle,
            triggers: None,
        }
    }

    /// The default config's server with the HTTP edge beside it, on another ephemeral
    /// port, sharing its node.
    pub async fn with_http() -> TestServer {
        TestServer::with_http_config(Config::embedded_default().expect("default config")).await
    }

    pub async fn with_http_config(config: Config) -> TestServer {
        let mut server = TestServer::with_config(config).await;
        let edge = omnia::http::Edge::new(omnia::http::HttpLimits::default());
        edge.ready(server.shared.clone());
        server.serve_http(edge).await;
        server
    }

    /// Serves `edge` over HTTP on an ephemeral port.
    pub async fn serve_http(&mut self, edge: Arc<omnia::http::Edge>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        self.http = Some(format!(
            "http://{}",
            listener.local_addr().expect("local addr")
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        self.http_stop = Some(stop);
        tokio::spawn(omnia::http::run(listener, edge, async move {
            let _ = stopped.await;
        }));
    }

    /// Signals shutdown and waits until every connection is closed.
    pub async fn shutdown(mut self) {
        if let Some(triggers) = self.triggers.take() {
            triggers.stop().await;
        }
        if let Some(stop) = self.http_stop.take() {
            let _ = stop.send(());
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.handle)
            .await
            .expect("server task")
            .expect("the server stopped cleanly");
    }

    /// Signals shutdown without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn finished(self) {
        self.handle
            .await
            .expect("server task")
            .expect("the server stopped cleanly");
    }
}

/// The default config with a strict tracking plan (`unknown_properties = "reject"`):
/// an undeclared property or attribute rejects its event.
pub fn strict_retail() -> omnia::config::Config {
    let text = omnia::config::DEFAULT_CONFIG.replacen(
        "unknown_properties = \"ignore\"",
        "unknown_properties = \"reject\"",
        1,
    );
    assert_ne!(text, omnia::config::DEFAULT_CONFIG);
    omnia::config::Config::from_source(&omnia::config::Source::new("strict.toml", text))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The default config changed the way data teams change configs: segments added, one
/// changed, one removed (`engaged_browsers`, its rule now elsewhere), an aggregate and a
/// channel added, an attribute removed, an offer renamed (one removed, one added).
pub fn changed_retail() -> omnia::config::Config {
    let text = omnia::config::DEFAULT_CONFIG
        .replace(
            r#"channels = ["web", "app", "email", "sms", "store", "call_center"]"#,
            r#"channels = ["kiosk", "web", "app", "email", "sms", "store", "call_center"]"#,
        )
        .replace("sum(purchase.amount, 90d) > 500", "sum(purchase.amount, 90d) > 200")
        .replace(
            "[segments.engaged_browsers]",
            "[segments.dutch_buyers]\nrule = 'attr.country == \"NL\" and ever(purchase)'\n\n[segments.email_openers]\nrule = \"count(email_open, 30d) >= 1\"\n\n[segments.engaged_browsers_gone]",
        )
        .replace(
            "rule = \"count(page_view on web, 1h) > 5 and since(purchase) > 1d\"",
            "rule = \"since(purchase) > 1d\"",
        )
        .replace("birth_year = \"number\"\n", "")
        .replace("[offers.free_shipping]", "[offers.free_delivery]");
    omnia::config::Config::from_source(&omnia::config::Source::new("changed.toml", text))
        .unwrap_or_else(|e| panic!("{e}"))
}
