//! The omnia server: the engine behind the binary protocol, over TCP.
//!
//! Shape (after mini-redis): [`run`] owns an accept loop that bounds connections with
//! a semaphore and backs off on accept errors; each connection gets a task with a
//! `Handler` that reads frames, dispatches by opcode to one file per command in
//! [`cmd`], and writes responses in request order. Shutdown is a broadcast: the accept
//! loop stops, each handler answers the requests it has already received, flushes and
//! closes, and `run` returns once every handler task has finished, or at the shutdown
//! deadline, when the ones left are dropped.
//!
//! Backpressure: a connection's requests are handled one at a time, and a response is
//! written before the next request is read from the buffer. A client that pipelines
//! without reading fills the socket buffers, the server's write waits, and the server
//! stops reading that connection: its memory stays bounded by one frame in and the
//! write buffer out.
//!
//! Scheduling: a request that took long to handle (`LONG_REQUEST`, an INGEST batch) is
//! followed by a yield, so that a connection it woke is not stuck in the worker's
//! unstealable LIFO slot while another worker sleeps.
//!
//! Greedy clients. At the connection limit a new connection is still accepted, told
//! SERVER_BUSY (as the answer to its first request) and closed, so a client never
//! waits on a socket nobody serves. A connection that has not completed HELLO within
//! the handshake timeout is closed, so silent sockets cannot hold the slots. Shutdown
//! has a hard deadline: handlers still running then (a client that never reads its
//! responses, say) are dropped, so the caller can write its shutdown snapshot within a
//! supervisor's grace period. A dropped handler's unanswered requests were never
//! acknowledged.

pub mod auth;
pub mod cmd;
pub mod connection;
pub mod metrics;
pub(crate) mod shutdown;
pub mod triggers;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::engine::Receipt;
use crate::node::Node;
use crate::protocol::{
    opcode, ErrorCode, Frame, FrameError, Request, Response, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use crate::tls::Socket;
use connection::{Connection, ConnectionError};
use metrics::Stage;
use shutdown::Shutdown;

/// Limits a server enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_frame: u32,
    /// Requests a client may have in flight on one connection (announced in HELLO).
    pub max_in_flight: u32,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// A connection that has not completed HELLO this long after it was accepted is
    /// closed.
    pub handshake_timeout: Duration,
    /// How long shutdown waits for connections to finish before it drops them.
    pub shutdown_timeout: Duration,
    /// Bytes of read buffer all connections together may hold beyond their base
    /// ([`connection::READ_BASE`] each); at least `max_frame`.
    pub read_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_frame: crate::protocol::DEFAULT_MAX_FRAME,
            max_in_flight: 1024,
            idle_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            read_budget: 256 << 20,
        }
    }
}

/// Counters the server keeps besides the engine's.
#[derive(Debug)]
pub struct ServerStats {
    pub started: Instant,
    pub connections: AtomicU32,
    pub events_ingested: AtomicU64,
    pub events_rejected: AtomicU64,
    /// Copies of events already applied (by message id), acknowledged and not applied.
    pub events_duplicate: AtomicU64,
    /// Reloads completed.
    pub reloads: AtomicU32,
    /// While a reload runs, the percentage of customers moved; 255 otherwise.
    pub reload_progress: std::sync::atomic::AtomicU8,
}

impl Default for ServerStats {
    fn default() -> Self {
        ServerStats {
            started: Instant::now(),
            connections: AtomicU32::new(0),
            events_ingested: AtomicU64::new(0),
            events_rejected: AtomicU64::new(0),
            events_duplicate: AtomicU64::new(0),
            reloads: AtomicU32::new(0),
            reload_progress: std::sync::atomic::AtomicU8::new(u8::MAX),
        }
    }
}

/// What every connection shares.
pub struct Shared {
    /// The node requests go to; a reload swaps it.
    node: parking_lot::RwLock<Arc<Node>>,
    pub limits: Limits,
    pub stats: ServerStats,
    /// Held for reading while a request runs, and for writing while a reload swaps
    /// engines: no request sees half of a swap, and none changes the old engine after
    /// the new one has caught up with it.
    reload_fence: parking_lot::RwLock<()>,
    /// Where the config comes from, for RELOAD and SIGHUP; `None` when the server runs
    /// on the embedded default config.
    pub reload: Option<ReloadSource>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Read buffer beyond each connection's base, shared by all of them.
    read_budget: connection::ReadBudget,
    /// Who may do what; `None` serves everyone (no credentials file). A reload of the
    /// file swaps it.
    auth: parking_lot::RwLock<Option<Arc<crate::security::Authenticator>>>,
    /// The credentials file, read again at each RELOAD and SIGHUP.
    pub credentials: Option<std::path::PathBuf>,
    /// Failed authentications per client address (`auth`).
    pub throttle: crate::security::Throttle,
    /// One argon2 verification at a time (`auth`).
    pub verifying: tokio::sync::Semaphore,
    /// TLS for the binary listener; `None`: plain TCP.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Erasures from the data directory of forgotten customers; `None` without one.
    pub erasures: Option<Arc<crate::store::snapshot::Erasures>>,
    /// The change stream's files, for SUBSCRIBE; `None` without a data directory.
    pub stream: Option<Arc<crate::store::stream::Stream>>,
    /// What the trigger runner reports; `None` when none runs.
    pub triggers: Option<Arc<triggers::TriggerStatus>>,
}

/// What a reload needs besides the running engine.
#[derive(Debug, Clone)]
pub struct ReloadSource {
    /// The config file, read again at each reload.
    pub config: std::path::PathBuf,
    /// `serve --shards`, `--fsync`, `--snapshot-interval`: applied to the file's
    /// settings before they are checked, as at start.
    pub overrides: crate::config::Overrides,
    /// The data directory, whose log the new engine catches up from.
    pub data: crate::store::DataDir,
}

impl Shared {
    pub fn new(node: Arc<Node>, limits: Limits) -> Shared {
        Shared {
            read_budget: connection::ReadBudget::new(
                limits.read_budget.max(limits.max_frame as usize),
            ),
            node: parking_lot::RwLock::new(node),
            limits,
            stats: ServerStats::default(),
            reload_fence: parking_lot::RwLock::new(()),
            reload: None,
            reloading: tokio::sync::Mutex::new(()),
            auth: parking_lot::RwLock::new(None),
            credentials: None,
            throttle: crate::security::Throttle::default(),
            verifying: tokio::sync::Semaphore::new(1),
            tls: None,
            erasures: None,
            stream: None,
            triggers: None,
        }
    }

    /// Serves SUBSCRIBE from the change stream's files in `stream`.
    /// A stream is what triggers act on: [`triggers::TriggerRunner::spawn`] runs them.
    pub fn with_stream(mut self, stream: Arc<crate::store::stream::Stream>) -> Shared {
        self.stream = Some(stream);
        self.triggers = Some(Arc::default());
        self
    }

    /// Erases forgotten customers from the data directory through `erasures`.
    pub fn with_erasures(mut self, erasures: Arc<crate::store::snapshot::Erasures>) -> Shared {
        self.erasures = Some(erasures);
        self
    }

    /// Serves the binary protocol over TLS with `config` (`crate::tls::server_config`).
    pub fn with_tls(mut self, config: Arc<tokio_rustls::rustls::ServerConfig>) -> Shared {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }

    /// Requires credentials from the file at `path` (already loaded as `auth`).
    pub fn with_credentials(
        mut self,
        path: std::path::PathBuf,
        auth: crate::security::Authenticator,
    ) -> Shared {
        self.credentials = Some(path);
        *self.auth.get_mut() = Some(Arc::new(auth));
        self
    }

    /// Lets `free` failed authentications per address and minute pass unslowed (the
    /// default is [`crate::security::Throttle::FREE`]).
    pub fn with_auth_failures_free(mut self, free: u32) -> Shared {
        self.throttle = crate::security::Throttle::new(free);
        self
    }

    /// The credentials requests are checked against; `None` when the server has none.
    pub fn authenticator(&self) -> Option<Arc<crate::security::Authenticator>> {
        self.auth.read().clone()
    }

    /// Reads the credentials file again; on an error the running credentials stay.
    /// Returns how many principals the new file names (`None`: no file configured).
    pub fn reload_credentials(&self) -> Result<Option<usize>, crate::security::CredentialsError> {
        let Some(path) = &self.credentials else {
            return Ok(None);
        };
        let auth = crate::security::Authenticator::load(path)?;
        let principals = auth.principals();
        *self.auth.write() = Some(Arc::new(auth));
        Ok(Some(principals))
    }

    /// Lets RELOAD and SIGHUP re-read `source.config`.
    pub fn with_reload(mut self, source: ReloadSource) -> Shared {
        self.reload = Some(source);
        self
    }

    /// Bytes of the read budget no connection holds now.
    pub fn read_budget_available(&self) -> usize {
        self.read_budget.available()
    }

    /// Holds reloads back while a request runs, as the binary server does for each of
    /// its requests; `None` while a reload holds requests back (the HTTP edge answers
    /// 503 then, where the binary server waits).
    pub fn hold_requests(&self) -> Option<parking_lot::RwLockReadGuard<'_, ()>> {
        self.reload_fence.try_read()
    }

    /// The node now (a reload may swap it at any time; hold the `Arc` for one request).
    pub fn node(&self) -> Arc<Node> {
        self.node.read().clone()
    }
}

/// Serves until `shutdown` completes (`Ok`), or until accepting connections keeps
/// failing (`Err`, after the open connections are drained): a supervisor must see that
/// as a failure, not a clean stop. Either way it returns within
/// [`Limits::shutdown_timeout`] of the stop, having dropped the connections still open
/// then.
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future,
) -> std::io::Result<()> {
    let (notify_shutdown, _) = broadcast::channel(1);
    let limit = Arc::new(Semaphore::new(shared.limits.max_connections));
    let busy = Arc::new(Semaphore::new(BUSY_REPLIES));
    let mut tasks = JoinSet::new();
    let outcome = {
        let accept = accept_loop(
            &listener,
            &shared,
            &limit,
            &busy,
            &notify_shutdown,
            &mut tasks,
        );
        tokio::select! {
            failed = accept => failed,
            _ = shutdown => {
                info!("shutting down: no new connections; finishing requests in flight");
                Ok(())
            }
        }
    };
    drop(notify_shutdown);
    drop(listener);
    let deadline = tokio::time::sleep(shared.limits.shutdown_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { break },
            _ = &mut deadline => {
                warn!(
                    connections = tasks.len(),
                    "shutdown deadline of {:?} passed: dropping the connections still open; their unanswered requests were not acknowledged",
                    shared.limits.shutdown_timeout
                );
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
    info!("every connection is closed");
    outcome
}

/// Connections over the limit being told SERVER_BUSY at once; beyond that they are
/// closed without a word (closing is the answer a flood gets).
const BUSY_REPLIES: usize = 64;
/// How long a refused connection gets to send its first request and read the answer.
const BUSY_WAIT: Duration = Duration::from_secs(1);

async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    limit: &Arc<Semaphore>,
    busy: &Arc<Semaphore>,
    notify: &broadcast::Sender<()>,
    tasks: &mut JoinSet<()>,
) -> std::io::Result<()> {
    let mut accepting = Box::pin(accept(listener));
    loop {
        // Finished handlers leave the set as they finish, so it holds (and keeps the
        // memory of) live connections only.
        let accepted = tokio::select! {
            accepted = &mut accepting => accepted,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        accepting.set(accept(listener));
        let socket = match accepted {
            Ok(socket) => socket,
            Err(e) => {
                warn!(error = %e, "accept keeps failing; the server stops");
                return Err(e);
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            metrics::connection_refused();
            if shared.tls.is_some() {
                // A refusal in clear would be noise to a TLS client: close at once.
                debug!("a TLS connection over the limit is closed");
                continue;
            }
            if let Ok(permit) = busy.clone().try_acquire_owned() {
                let max = shared.limits.max_connections;
                tasks.spawn(async move {
                    refuse_busy(socket, max).await;
                    drop(permit);
                });
            }
            continue;
        };
        let _ = socket.set_nodelay(true);
        let peer_addr = socket.peer_addr().ok();
        let peer = peer_addr.map(|a| a.to_string()).unwrap_or_default();
        let shared = shared.clone();
        let shutdown = Shutdown::new(notify.subscribe());
        tasks.spawn(async move {
            // Counted down on drop, so a handler dropped at the shutdown deadline is too.
            let _open = OpenConnection::new(shared.clone(), permit);
            // The TLS handshake has the HELLO's deadline: a client that never finishes
            // it (a plaintext client that waits for the server to speak first) is
            // closed then, and one that sends plaintext fails it at once.
            let limit = shared.limits.handshake_timeout;
            let socket =
                match tokio::time::timeout(limit, Socket::accept(socket, shared.tls.as_ref())).await {
                    Ok(Ok(socket)) => socket,
                    Ok(Err(e)) => {
                        info!(%peer, error = %e, "closing a connection whose TLS handshake failed (a plaintext client on the TLS port?)");
                        return;
                    }
                    Err(_) => {
                        info!(%peer, "closing a connection that did not complete the TLS handshake within {limit:?}");
                        return;
                    }
                };
            let mut handler = Handler {
                journal: shared.node().engine().journal().cloned(),
                held: std::collections::VecDeque::new(),
                unflushed: Vec::new(),
                metrics: metrics::RequestMetrics::default(),
                connection: Connection::new(
                    socket,
                    shared.limits.max_frame,
                    shared.limits.idle_timeout,
                    shared.read_budget.clone(),
                ),
                shared,
                shutdown,
                greeted: false,
                session: None,
                peer_ip: peer_addr.map(|a| a.ip()),
                peer,
            };
            match handler.run().await {
                Ok(()) => {}
                // A client that goes away without closing cleanly is a client's affair
                // (over TLS: without its close_notify, which most clients never send).
                Err(ConnectionError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::BrokenPipe
                            | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    debug!(peer = %handler.peer, error = %e, "connection reset by the client");
                }
                Err(e) => warn!(peer = %handler.peer, error = %e, "connection closed"),
            }
        });
    }
}

/// A connection being served: holds its slot and counts it in the stats.
struct OpenConnection {
    shared: Arc<Shared>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(shared: Arc<Shared>, permit: tokio::sync::OwnedSemaphorePermit) -> OpenConnection {
        shared.stats.connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection {
            shared,
            _permit: permit,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.shared
            .stats
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Tells a connection over the limit that the server is busy, as the answer to its
/// first request (so a client matches it to its HELLO), then closes it. The request is
/// read whole first: closing a socket with unread bytes resets it, and the reset could
/// reach the client before the answer.
async fn refuse_busy(mut socket: TcpStream, max_connections: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut first = bytes::BytesMut::with_capacity(256);
    let read_first = async {
        while first.len() < 12 || first.len() < 4 + frame_length(&first).min(1024) {
            if socket.read_buf(&mut first).await? == 0 {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(BUSY_WAIT, read_first).await;
    let request_id = if first.len() >= 12 {
        u32::from_le_bytes([first[8], first[9], first[10], first[11]])
    } else {
        0
    };
    let reply = Response::error(
        ErrorCode::ServerBusy,
        format!("the server is at its limit of {max_connections} connections; try again later"),
    );
    let mut out = bytes::BytesMut::new();
    Frame::in_version(
        MIN_PROTOCOL_VERSION,
        opcode::ERROR,
        request_id,
        reply.encode(),
    )
    .write_to(&mut out);
    let answered = async {
        socket.write_all(&out).await?;
        socket.shutdown().await?;
        // Until the client closes too, so the answer is not lost to a reset.
        let mut sink = [0u8; 1024];
        while socket.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(BUSY_WAIT, answered).await;
}

/// The length field of a frame whose first four bytes are in `buf`.
fn frame_length(buf: &[u8]) -> usize {
    u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
}

/// Accepts with exponential backoff on errors (1, 2, 4 … 64 s), as transient errors
/// such as running out of file descriptors usually pass.
async fn accept(listener: &TcpListener) -> std::io::Result<TcpStream> {
    let mut backoff = 1;
    loop {
        match listener.accept().await {
            Ok((socket, _)) => return Ok(socket),
            Err(e) => {
                if backoff > 64 {
                    return Err(e);
                }
                warn!(error = %e, "accept failed; retrying in {backoff}s");
            }
        }
        tokio::time::sleep(Duration::from_secs(backoff)).await;
        backoff *= 2;
    }
}

/// After shutdown, a connection is closed once it has been quiet this long…
const DRAIN_QUIET: Duration = Duration::from_millis(200);
/// …or this long after the shutdown signal, whichever comes first.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// A request whose handling took this long (an INGEST batch of hundreds of events) is
/// followed by a yield. A task the running one wakes (a connection waiting for the log
/// records this one just wrote, say) goes into the worker's LIFO slot, which other
/// workers cannot steal, and no idle worker is woken for it: without the yield, two
/// ingesting connections took turns on one worker while the other slept (the server used
/// about one core of two). A yielded task goes to the worker's queue, which the idle
/// worker is woken to steal from.
const LONG_REQUEST: Duration = Duration::from_micros(200);

/// A reply waiting for the log.
struct Held {
    reply: Frame,
    /// The last log record its request needs; `None` if it only waits behind others.
    lsn: Option<u64>,
    op: u8,
    /// When the reply was ready.
    ready: Instant,
}

struct Handler {
    connection: Connection,
    /// The engine's journal, if the server has one.
    journal: Option<Arc<dyn crate::engine::Journal>>,
    /// Replies waiting for their requests' log records, in request order.
    held: std::collections::VecDeque<Held>,
    /// Replies written but not flushed yet: the operation, and since when the reply
    /// stage counts (see `metrics::Stage`).
    unflushed: Vec<(u8, Instant)>,
    metrics: metrics::RequestMetrics,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    greeted: bool,
    /// Who the connection authenticated as (AUTH); `None` before, or without one.
    session: Option<auth::Session>,
    peer_ip: Option<std::net::IpAddr>,
    peer: String,
}

impl Handler {
    async fn run(&mut self) -> Result<(), ConnectionError> {
        debug!(peer = %self.peer, "connection opened");
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        let handshake_deadline = tokio::time::Instant::now() + self.shared.limits.handshake_timeout;
        loop {
            // Between requests: a whole buffered request is answered even during
            // shutdown. After the shutdown signal, requests still arriving (sent before
            // the client learnt of it) are answered until the connection is quiet.
            let frame = match self.connection.buffered_frame() {
                Ok(Some(frame)) => Some(frame),
                Err(e) => return self.framing_broken(e).await,
                Ok(None) if self.shutdown.is_shutdown() => {
                    let deadline = *drain_deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + DRAIN_LIMIT);
                    let quiet = DRAIN_QUIET
                        .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                    match tokio::time::timeout(quiet, self.connection.read_frame()).await {
                        Ok(Ok(frame)) => frame,
                        Ok(Err(ConnectionError::Frame(e))) => return self.framing_broken(e).await,
                        Ok(Err(e)) => return Err(e),
                        Err(_) => None,
                    }
                }
                Ok(None) => {
                    // Until HELLO, the handshake's deadline; then the idle timeout.
                    let wait = if self.greeted {
                        self.shared.limits.idle_timeout
                    } else {
                        handshake_deadline.saturating_duration_since(tokio::time::Instant::now())
                    };
                    tokio::select! {
                        read = tokio::time::timeout(wait, self.connection.read_frame()) => match read {
                            Ok(Ok(frame)) => frame,
                            Ok(Err(ConnectionError::Frame(e))) => return self.framing_broken(e).await,
                            Ok(Err(e)) => return Err(e),
                            Err(_) if !self.greeted => return self.handshake_timed_out().await,
                            Err(_) => {
                                info!(peer = %self.peer, "closing idle connection");
                                None
                            }
                        },
                        _ = self.shutdown.recv() => continue,
                    }
                }
            };
            let Some(frame) = frame else {
                self.release_replies().await?;
                self.flush().await?;
                debug!(peer = %self.peer, "connection closed");
                return Ok(());
            };
            let started = Instant::now();
            self.metrics.stage(
                frame.opcode,
                Stage::Queued,
                started.saturating_duration_since(self.connection.read_at()),
            );
            // The log records this request appends, and only those, are what its reply
            // waits for: a read-only request waits for nothing.
            let mut receipt = Receipt::default();
            let response = if self.greeted && frame.opcode == opcode::AUTH {
                // Not on the request path: a first check of a secret is slow on purpose.
                match Request::decode(frame.opcode, &frame.body) {
                    Ok(Some(Request::Auth { token })) => {
                        match auth::authenticate(&self.shared, self.peer_ip, &token).await {
                            Ok(session) => {
                                let principal = session.principal.clone();
                                self.session = Some(session);
                                Response::Authenticated {
                                    principal: principal.name.clone(),
                                    roles: principal.roles.bits(),
                                }
                            }
                            Err((code, message)) => {
                                self.session = None;
                                Response::error(code, message)
                            }
                        }
                    }
                    Ok(_) => Response::error(ErrorCode::UnknownOpcode, "AUTH did not decode"),
                    Err(e) => Self::decode_error(frame.opcode, e),
                }
            } else if self.greeted && frame.opcode == opcode::RELOAD {
                // Not under the reload fence: a reload takes it for writing itself.
                let allowed = auth::authorize(
                    &self.shared,
                    &mut self.session,
                    auth::role_of(frame.opcode),
                    "reload",
                );
                match Request::decode(frame.opcode, &frame.body) {
                    Ok(Some(Request::Reload)) if allowed.is_ok() => {
                        let by = self
                            .session
                            .as_ref()
                            .map_or("(no credentials)", |s| s.principal.name.as_str())
                            .to_string();
                        info!(principal = %by, peer = %self.peer, "RELOAD");
                        cmd::reload::apply(&self.shared).await
                    }
                    Ok(Some(Request::Reload)) => {
                        let (code, message) = allowed.unwrap_err();
                        Response::error(code, message)
                    }
                    Ok(_) => Response::error(ErrorCode::UnknownOpcode, "RELOAD did not decode"),
                    Err(e) => Self::decode_error(frame.opcode, e),
                }
            } else if self.greeted && frame.opcode == opcode::SUBSCRIBE {
                match self.subscription(&frame) {
                    Ok(subscription) => {
                        // The connection streams from now on: answer what came before.
                        self.release_replies().await?;
                        self.flush().await?;
                        let shared = self.shared.clone();
                        return cmd::subscribe::stream(
                            &shared,
                            &mut self.connection,
                            &mut self.shutdown,
                            frame.version,
                            frame.request_id,
                            subscription,
                            &self.peer,
                        )
                        .await;
                    }
                    Err(refused) => *refused,
                }
            } else {
                let shared = self.shared.clone();
                let _fence = shared.reload_fence.read();
                self.respond(&frame, &mut receipt)
            };
            let error = match &response {
                Response::Error { code, .. } => Some(*code),
                _ => None,
            };
            let ready = Instant::now();
            let applied = ready.saturating_duration_since(started);
            self.metrics.request(frame.opcode, applied, error);
            // A reply is in its request's version; a request in a version this server
            // does not speak is told so in the oldest, which every client reads.
            let version = if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&frame.version) {
                frame.version
            } else {
                MIN_PROTOCOL_VERSION
            };
            let reply = Frame::in_version(
                version,
                response.opcode(frame.opcode),
                frame.request_id,
                response.encode(),
            );
            // What a request changed must be durable, as the fsync policy promises,
            // before the client hears of it. Replies wait in order; the requests the
            // client has already sent are handled meanwhile, so a pipelining client's
            // requests share one wait for the log.
            let needs_log = receipt.last();
            if needs_log.is_some() || !self.held.is_empty() {
                self.held.push_back(Held {
                    reply,
                    lsn: needs_log,
                    op: frame.opcode,
                    ready,
                });
            } else {
                self.connection.write_frame(&reply).await?;
                self.unflushed.push((frame.opcode, ready));
            }
            if !self.connection.has_buffered_frame() {
                self.release_replies().await?;
                self.flush().await?;
            }
            if applied >= LONG_REQUEST {
                // Let the other worker take this connection: see LONG_REQUEST.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Waits until every held reply's log records are stored, then writes the replies in
    /// order. If the log failed, the replies that needed it become STORAGE_FAILED errors.
    async fn release_replies(&mut self) -> Result<(), ConnectionError> {
        let last = self.held.iter().filter_map(|h| h.lsn).max();
        let failed = match (&self.journal, last) {
            (Some(journal), Some(last)) => journal.durable(last).await.err(),
            _ => None,
        };
        if let Some(e) = &failed {
            warn!(peer = %self.peer, error = %e, "cannot acknowledge: the log failed");
        }
        let durable_at = Instant::now();
        while let Some(Held {
            reply,
            lsn,
            op,
            ready,
        }) = self.held.pop_front()
        {
            self.metrics.stage(
                op,
                Stage::Journal,
                durable_at.saturating_duration_since(ready),
            );
            self.unflushed.push((op, durable_at));
            let reply = match (&failed, lsn) {
                (Some(e), Some(_)) => Frame::in_version(
                    reply.version,
                    opcode::ERROR,
                    reply.request_id,
                    Response::error(ErrorCode::StorageFailed, e.clone()).encode(),
                ),
                _ => reply,
            };
            self.connection.write_frame(&reply).await?;
        }
        Ok(())
    }

    /// Sends what is written, and records the reply stage of every reply it sent.
    async fn flush(&mut self) -> Result<(), ConnectionError> {
        self.connection.flush().await?;
        let flushed = Instant::now();
        for (op, since) in self.unflushed.drain(..) {
            self.metrics
                .stage(op, Stage::Reply, flushed.saturating_duration_since(since));
        }
        Ok(())
    }

    /// No HELLO within the handshake timeout: say so and close, freeing the slot.
    async fn handshake_timed_out(&mut self) -> Result<(), ConnectionError> {
        let limit = self.shared.limits.handshake_timeout;
        info!(peer = %self.peer, "closing a connection that sent no HELLO within {limit:?}");
        let reply = Response::error(
            ErrorCode::HelloRequired,
            format!("no HELLO within {limit:?} of connecting; the connection is closed"),
        );
        let _ = self
            .connection
            .write_frame(&Frame::in_version(
                MIN_PROTOCOL_VERSION,
                opcode::ERROR,
                0,
                reply.encode(),
            ))
            .await;
        let _ = self.connection.flush().await;
        Ok(())
    }

    /// Framing is lost: say why to the client if we can, log it, and close.
    async fn framing_broken(&mut self, e: FrameError) -> Result<(), ConnectionError> {
        // The requests before the broken frame are answered first.
        self.release_replies().await?;
        let (code, request_id) = match &e {
            FrameError::TooLarge { request_id, .. } => {
                (ErrorCode::FrameTooLarge, request_id.unwrap_or(0))
            }
            FrameError::TooShort { .. } => (ErrorCode::MalformedFrame, 0),
        };
        let message = format!("{e}; the connection is closed because frame boundaries are lost");
        warn!(peer = %self.peer, error = %e, "closing connection: framing broken");
        let reply = Response::error(code, message);
        let _ = self
            .connection
            .write_frame(&Frame::in_version(
                MIN_PROTOCOL_VERSION,
                opcode::ERROR,
                request_id,
                reply.encode(),
            ))
            .await;
        let _ = self.connection.flush().await;
        Ok(())
    }

    /// A SUBSCRIBE the connection may make, or the answer that refuses it (boxed: a
    /// `Response` is large, and the refusal is the rare way out).
    fn subscription(
        &mut self,
        frame: &Frame,
    ) -> Result<cmd::subscribe::Subscription, Box<Response>> {
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&frame.version) {
            return Err(Box::new(self.respond(frame, &mut Receipt::default())));
        }
        auth::authorize(
            &self.shared,
            &mut self.session,
            auth::role_of(frame.opcode),
            "subscribe",
        )
        .map_err(|(code, message)| Box::new(Response::error(code, message)))?;
        match Request::decode_in(frame.version, frame.opcode, &frame.body) {
            Ok(Some(Request::Subscribe {
                name,
                from,
                segments,
            })) => Ok(cmd::subscribe::Subscription {
                name,
                from,
                segments,
            }),
            Ok(_) => Err(Box::new(Response::error(
                ErrorCode::UnknownOpcode,
                "SUBSCRIBE did not decode",
            ))),
            Err(e) => Err(Box::new(Self::decode_error(frame.opcode, e))),
        }
    }

    /// The answer to a request body that does not decode (also on streaming
    /// connections, `cmd::subscribe`).
    pub(crate) fn decode_error(op: u8, e: crate::protocol::codec::DecodeError) -> Response {
        let code = match e {
            crate::protocol::codec::DecodeError::Utf8 { .. } => ErrorCode::InvalidUtf8,
            _ => ErrorCode::MalformedFrame,
        };
        Response::error(code, format!("{} request: {e}", opcode::name(op)))
    }

    fn respond(&mut self, frame: &Frame, receipt: &mut Receipt) -> Response {
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&frame.version) {
            return Response::error(
                ErrorCode::UnsupportedVersion,
                format!(
                    "frame has protocol version {}, this server speaks versions {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}",
                    frame.version
                ),
            );
        }
        if self.greeted {
            let what = opcode::name(frame.opcode);
            if let Err((code, message)) = auth::authorize(
                &self.shared,
                &mut self.session,
                auth::role_of(frame.opcode),
                what,
            ) {
                return Response::error(code, message);
            }
        }
        if frame.opcode == opcode::INGEST && self.greeted {
            // The hot path: events are read in place from the frame, never copied.
            let layout = crate::protocol::Layout::of_protocol(frame.version);
            return match crate::protocol::IngestBatch::decode(&frame.body, layout) {
                Ok(batch) => cmd::ingest::apply(&self.shared, batch.iter().map(Ok), receipt),
                Err(e) => Self::decode_error(frame.opcode, e),
            };
        }
        let request = match Request::decode_in(frame.version, frame.opcode, &frame.body) {
            Ok(Some(request)) => request,
            Ok(None) => {
                return Response::error(
                    ErrorCode::UnknownOpcode,
                    format!("unknown opcode {:#04x}", frame.opcode),
                )
            }
            Err(e) => return Self::decode_error(frame.opcode, e),
        };
        if !self.greeted && !matches!(request, Request::Hello { .. }) {
            return Response::error(
                ErrorCode::HelloRequired,
                "the first request on a connection must be HELLO",
            );
        }
        let shared = &self.shared;
        match request {
            Request::Hello {
                min_version,
                max_version,
                client,
            } => {
                let response = cmd::hello::apply(shared, min_version, max_version, &client);
                if matches!(response, Response::Hello(_)) && !self.greeted {
                    self.greeted = true;
                    self.connection.greeted();
                }
                response
            }
            Request::Ping => Response::Pong,
            // Handled before `respond`, outside the reload fence.
            Request::Reload | Request::Auth { .. } => Response::error(
                ErrorCode::HelloRequired,
                "the first request on a connection must be HELLO",
            ),
            Request::Ingest { events } => {
                cmd::ingest::apply(shared, events.iter().map(Ok), receipt)
            }
            Request::IngestJson { json } => cmd::ingest_json::apply(shared, &json, receipt),
            Request::Profile { key } => cmd::profile::apply(shared, &key),
            Request::Forget { key } => {
                let by = format!(
                    "{} from {}",
                    self.session
                        .as_ref()
                        .map_or("(no credentials)", |s| s.principal.name.as_str()),
                    self.peer
                );
                cmd::forget::apply(shared, &key, receipt, &by)
            }
            Request::ForgetStatus { erasure_id } => cmd::forget::status(shared, erasure_id),
            Request::Export { key } => cmd::export::apply(shared, &key),
            Request::SegmentCount { query } => cmd::segment::count(shared, &query),
            Request::SegmentMembers {
                query,
                cursor,
                limit,
            } => cmd::segment::members(shared, &query, cursor, limit),
            Request::SegmentContains { segment, key } => {
                cmd::segment::contains(shared, &segment, &key)
            }
            Request::Stats {
                offers,
                drift,
                triggers,
                experiments,
            } => cmd::stats::apply(shared, offers, drift, triggers, experiments),
            Request::Decide(request) => cmd::decide::decide(shared, &request, receipt),
            Request::Feedback { kind, target } => {
                cmd::decide::feedback(shared, kind, &target, receipt)
            }
            Request::Redeem {
                code,
                channel,
                order_value,
            } => cmd::redeem::apply(shared, &code, &channel, order_value, receipt),
            // SUBSCRIBE is handled before `respond` once greeted.
            Request::Subscribe { .. } => Response::error(
                ErrorCode::HelloRequired,
                "the first request on a connection must be HELLO",
            ),
            Request::Ack { .. } => cmd::subscribe::ack_outside(),
        }
    }
}
