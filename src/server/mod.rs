//! The omnia server: the engine behind the binary protocol, over TCP.
//!
//! Shape (after mini-redis): [`run`] owns an accept loop that bounds connections with
//! a semaphore and backs off on accept errors; each connection gets a task with a
//! [`Handler`] that reads frames, dispatches by opcode to one file per command in
//! [`cmd`], and writes responses in request order. Shutdown is a broadcast: the accept
//! loop stops, each handler answers the requests it has already received, flushes and
//! closes, and `run` returns once every handler has dropped its completion sender.
//!
//! Backpressure: a connection's requests are handled one at a time, and a response is
//! written before the next request is read from the buffer. A client that pipelines
//! without reading fills the socket buffers, the server's write waits, and the server
//! stops reading that connection: its memory stays bounded by one frame in and the
//! write buffer out.

pub mod cmd;
mod connection;
pub mod metrics;
mod shutdown;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, Semaphore};
use tracing::{debug, info, warn};

use crate::engine::Engine;
use crate::protocol::{opcode, ErrorCode, Frame, FrameError, Request, Response, PROTOCOL_VERSION};
use connection::{Connection, ConnectionError};
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_frame: crate::protocol::DEFAULT_MAX_FRAME,
            max_in_flight: 1024,
            idle_timeout: Duration::from_secs(300),
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
            reloads: AtomicU32::new(0),
            reload_progress: std::sync::atomic::AtomicU8::new(u8::MAX),
        }
    }
}

/// What every connection shares.
pub struct Shared {
    /// The engine requests go to; a reload swaps it.
    engine: parking_lot::RwLock<Arc<Engine>>,
    pub limits: Limits,
    pub stats: ServerStats,
    /// Held for reading while a request runs, and for writing while a reload swaps
    /// engines: no request sees half of a swap, and none changes the old engine after
    /// the new one has caught up with it.
    gate: parking_lot::RwLock<()>,
    /// Where the config comes from, for RELOAD and SIGHUP; `None` when the server runs
    /// on the embedded default config.
    pub reload: Option<ReloadSource>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

/// What a reload needs besides the running engine.
#[derive(Debug, Clone)]
pub struct ReloadSource {
    /// The config file, read again at each reload.
    pub config: std::path::PathBuf,
    /// `serve --shards`, applied to the file's config as at start.
    pub shards: Option<u32>,
    /// The data directory, whose log the new engine catches up from.
    pub data: crate::store::DataDir,
}

impl Shared {
    pub fn new(engine: Arc<Engine>, limits: Limits) -> Shared {
        Shared {
            engine: parking_lot::RwLock::new(engine),
            limits,
            stats: ServerStats::default(),
            gate: parking_lot::RwLock::new(()),
            reload: None,
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// Lets RELOAD and SIGHUP re-read `source.config`.
    pub fn with_reload(mut self, source: ReloadSource) -> Shared {
        self.reload = Some(source);
        self
    }

    /// The engine now (a reload may swap it at any time; hold the `Arc` for one request).
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.read().clone()
    }
}

/// Serves `listener` until `shutdown` completes, then drains connections and returns.
/// Serves until `shutdown` completes (`Ok`), or until accepting connections keeps
/// failing (`Err`, after the open connections are drained): a supervisor must see that
/// as a failure, not a clean stop.
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future,
) -> std::io::Result<()> {
    let (notify_shutdown, _) = broadcast::channel(1);
    let (shutdown_complete_tx, mut shutdown_complete_rx) = mpsc::channel::<()>(1);
    let limit = Arc::new(Semaphore::new(shared.limits.max_connections));
    let accept = accept_loop(
        &listener,
        &shared,
        &limit,
        &notify_shutdown,
        &shutdown_complete_tx,
    );
    let outcome = tokio::select! {
        failed = accept => failed,
        _ = shutdown => {
            info!("shutting down: no new connections; finishing requests in flight");
            Ok(())
        }
    };
    drop(notify_shutdown);
    drop(shutdown_complete_tx);
    let _ = shutdown_complete_rx.recv().await;
    info!("every connection is closed");
    outcome
}

async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    limit: &Arc<Semaphore>,
    notify: &broadcast::Sender<()>,
    complete: &mpsc::Sender<()>,
) -> std::io::Result<()> {
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return Ok(());
        };
        let socket = match accept(listener).await {
            Ok(socket) => socket,
            Err(e) => {
                warn!(error = %e, "accept keeps failing; the server stops");
                return Err(e);
            }
        };
        let _ = socket.set_nodelay(true);
        let peer = socket
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut handler = Handler {
            journal: shared.engine().journal().cloned(),
            held: std::collections::VecDeque::new(),
            connection: Connection::new(
                socket,
                shared.limits.max_frame,
                shared.limits.idle_timeout,
            ),
            shared: shared.clone(),
            shutdown: Shutdown::new(notify.subscribe()),
            greeted: false,
            peer,
            _complete: complete.clone(),
        };
        tokio::spawn(async move {
            handler
                .shared
                .stats
                .connections
                .fetch_add(1, Ordering::Relaxed);
            if let Err(e) = handler.run().await {
                warn!(peer = %handler.peer, error = %e, "connection closed");
            }
            handler
                .shared
                .stats
                .connections
                .fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
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

struct Handler {
    connection: Connection,
    /// The write-ahead log, if the server has one.
    journal: Option<Arc<crate::store::wal::Wal>>,
    /// Replies waiting for their requests' log records, in request order, with the last
    /// record each one needs.
    held: std::collections::VecDeque<(Frame, Option<u64>)>,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    greeted: bool,
    peer: String,
    _complete: mpsc::Sender<()>,
}

impl Handler {
    async fn run(&mut self) -> Result<(), ConnectionError> {
        debug!(peer = %self.peer, "connection opened");
        let mut drain_deadline: Option<tokio::time::Instant> = None;
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
                    tokio::select! {
                        read = tokio::time::timeout(self.shared.limits.idle_timeout, self.connection.read_frame()) => match read {
                            Ok(Ok(frame)) => frame,
                            Ok(Err(ConnectionError::Frame(e))) => return self.framing_broken(e).await,
                            Ok(Err(e)) => return Err(e),
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
                self.connection.flush().await?;
                debug!(peer = %self.peer, "connection closed");
                return Ok(());
            };
            let started = Instant::now();
            let logged_before = self.journal.as_ref().map_or(0, |j| j.last_appended());
            let response = if self.greeted && frame.opcode == opcode::RELOAD {
                // Not under the gate: a reload takes it for writing itself.
                match Request::decode(frame.opcode, &frame.body) {
                    Ok(Some(Request::Reload)) => cmd::reload::apply(&self.shared).await,
                    Ok(_) => Response::error(ErrorCode::UnknownOpcode, "RELOAD did not decode"),
                    Err(e) => Self::decode_error(frame.opcode, e),
                }
            } else {
                let shared = self.shared.clone();
                let _gate = shared.gate.read();
                self.respond(&frame)
            };
            let logged = self.journal.as_ref().map_or(0, |j| j.last_appended());
            let error = match &response {
                Response::Error { code, .. } => Some(*code),
                _ => None,
            };
            metrics::request(frame.opcode, started.elapsed(), error);
            let reply = Frame::new(
                response.opcode(frame.opcode),
                frame.request_id,
                response.encode(),
            );
            // What a request changed must be durable, as the fsync policy promises,
            // before the client hears of it. Replies wait in order; the requests the
            // client has already sent are handled meanwhile, so a pipelining client's
            // requests share one wait for the log.
            let needs_log = logged > logged_before;
            if needs_log || !self.held.is_empty() {
                self.held.push_back((reply, needs_log.then_some(logged)));
            } else {
                self.connection.write_frame(&reply).await?;
            }
            if !self.connection.has_buffered_frame() {
                self.release_replies().await?;
                self.connection.flush().await?;
            }
        }
    }

    /// Waits until every held reply's log records are stored, then writes the replies in
    /// order. If the log failed, the replies that needed it become STORAGE_FAILED errors.
    async fn release_replies(&mut self) -> Result<(), ConnectionError> {
        let last = self.held.iter().filter_map(|(_, lsn)| *lsn).max();
        let failed = match (&self.journal, last) {
            (Some(journal), Some(last)) => journal.durable(last).await.err(),
            _ => None,
        };
        if let Some(e) = &failed {
            warn!(peer = %self.peer, error = %e, "cannot acknowledge: the log failed");
        }
        while let Some((reply, lsn)) = self.held.pop_front() {
            let reply = match (&failed, lsn) {
                (Some(e), Some(_)) => Frame::new(
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
            .write_frame(&Frame::new(opcode::ERROR, request_id, reply.encode()))
            .await;
        let _ = self.connection.flush().await;
        Ok(())
    }

    fn decode_error(op: u8, e: crate::protocol::codec::DecodeError) -> Response {
        let code = match e {
            crate::protocol::codec::DecodeError::Utf8 { .. } => ErrorCode::InvalidUtf8,
            _ => ErrorCode::MalformedFrame,
        };
        Response::error(code, format!("{} request: {e}", opcode::name(op)))
    }

    fn respond(&mut self, frame: &Frame) -> Response {
        if frame.version != PROTOCOL_VERSION {
            return Response::error(
                ErrorCode::UnsupportedVersion,
                format!(
                    "frame has protocol version {}, this server speaks version {PROTOCOL_VERSION}",
                    frame.version
                ),
            );
        }
        if frame.opcode == opcode::INGEST && self.greeted {
            // The hot path: events are read in place from the frame, never copied.
            return match crate::protocol::IngestBatch::decode(&frame.body) {
                Ok(batch) => cmd::ingest::apply(&self.shared, batch.iter().map(Ok)),
                Err(e) => Self::decode_error(frame.opcode, e),
            };
        }
        let request = match Request::decode(frame.opcode, &frame.body) {
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
                self.greeted |= matches!(response, Response::Hello(_));
                response
            }
            Request::Ping => Response::Pong,
            // Handled before `respond`, outside the gate.
            Request::Reload => Response::error(
                ErrorCode::HelloRequired,
                "the first request on a connection must be HELLO",
            ),
            Request::Ingest { events } => cmd::ingest::apply(shared, events.iter().map(Ok)),
            Request::IngestJson { json } => cmd::ingest_json::apply(shared, &json),
            Request::Profile { key } => cmd::profile::apply(shared, &key),
            Request::SegmentCount { query } => cmd::segment::count(shared, &query),
            Request::SegmentMembers {
                query,
                cursor,
                limit,
            } => cmd::segment::members(shared, &query, cursor, limit),
            Request::SegmentContains { segment, key } => {
                cmd::segment::contains(shared, &segment, &key)
            }
            Request::Stats { offers } => cmd::stats::apply(shared, offers),
            Request::Decide(request) => cmd::decide::decide(shared, &request),
            Request::Feedback { kind, target } => cmd::decide::feedback(shared, kind, &target),
        }
    }
}
