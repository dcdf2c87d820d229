//! The async Rust client: typed requests, pipelined over one connection.
//!
//! Any number of tasks may call one [`Client`] at once; each request gets an id, is
//! queued to a writer task that batches frames into few writes, and its response is
//! matched by id by a reader task. So many requests are in flight on one connection
//! without one waiting for another (pipelining).
//!
//! [`Client::connect`] retries with exponential backoff, within the connect timeout,
//! and says HELLO. Every request has a response timeout ([`ClientOptions`]): a server
//! that stops answering is an error, not a hang; the request may still have been
//! applied. If the
//! connection breaks, requests in flight fail with [`ClientError::ConnectionLost`]
//! (they may or may not have been applied, so they are not resent silently), and the
//! next request reconnects. Server errors arrive as [`ClientError::Server`] with the
//! protocol's [`ErrorCode`].

pub mod stages;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::model::decision::{
    Decision, DecisionRequest, FeedbackKind, FeedbackResult, FeedbackTarget,
};
use crate::model::{ProfileView, RawEvent};
use crate::protocol::message::{Rejected, ServerHello, Stats};
use crate::protocol::{
    ErrorCode, Frame, Layout, Request, Response, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection to the server was lost: {0}")]
    ConnectionLost(String),
    #[error("server error {}: {message}", code.map_or_else(|| raw_code.to_string(), |c| c.to_string()))]
    Server {
        code: Option<ErrorCode>,
        raw_code: u16,
        message: String,
    },
    #[error(
        "no response from {addr} within {after:?}; the request may or may not have been applied"
    )]
    Timeout { addr: String, after: Duration },
    #[error("bad response from the server: {0}")]
    Protocol(String),
    #[error("request cannot be encoded: {0}")]
    Encode(String),
}

impl ClientError {
    /// The protocol error code, for server errors.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => *code,
            _ => None,
        }
    }
}

/// Largest response the client accepts: an ingest acknowledgement lists every rejected
/// event with its message, so it can be much larger than the request was.
const RESPONSE_LIMIT: u32 = 1 << 30;

type Pending = Arc<std::sync::Mutex<HashMap<u32, oneshot::Sender<Result<Frame, ClientError>>>>>;
type Pushes = Arc<std::sync::Mutex<Option<mpsc::Sender<Frame>>>>;

/// One live connection: a queue to its writer task and the requests awaiting answers.
struct Link {
    outgoing: mpsc::Sender<Frame>,
    pending: Pending,
    /// Where frames no request waits for go on a streaming connection (CHANGES, and
    /// errors for ACKs and for the subscription); `None` elsewhere.
    pushes: Pushes,
    /// Set by the reader when the connection ends, before it fails what is pending.
    dead: Arc<AtomicBool>,
    /// The protocol version frames are sent in: the oldest until HELLO agrees on one, so
    /// that a server of any version understands the HELLO itself.
    version: AtomicU8,
}

/// An ingest acknowledgement.
#[derive(Debug, Clone, PartialEq)]
pub struct Ingested {
    pub accepted: u32,
    pub rejected: Vec<Rejected>,
}

/// How long a client waits, who it is, and how it reaches the server.
#[derive(Clone)]
pub struct ClientOptions {
    /// For a connection, retries included (its HELLO then has the response timeout).
    pub connect_timeout: Duration,
    /// For each response.
    pub request_timeout: Duration,
    /// A token from `omnia credentials add`, sent with AUTH after each HELLO: what a
    /// server with a credentials file requires.
    pub token: Option<String>,
    /// TLS to a server started with `--tls-cert` (`crate::tls::client_config`); the
    /// server's certificate is checked against the host of the address.
    pub tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl std::fmt::Debug for ClientOptions {
    // The token is a secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            // A RELOAD of millions of customers takes seconds; nothing else comes close.
            request_timeout: Duration::from_secs(60),
            token: None,
            tls: None,
        }
    }
}

/// A pipelined connection to an omnia server. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Client {
    addr: String,
    options: ClientOptions,
    link: Arc<Mutex<Option<Arc<Link>>>>,
    next_id: Arc<AtomicU32>,
    info: Arc<std::sync::Mutex<Option<ServerHello>>>,
}

impl Client {
    /// Connects (retrying with backoff for up to 5 s) and says HELLO; responses time out
    /// after 60 s.
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        Client::connect_with(addr, ClientOptions::default()).await
    }

    /// Connects with timeouts of the caller's choosing.
    pub async fn connect_with(addr: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let client = Client {
            options,
            addr: addr.to_string(),
            link: Arc::new(Mutex::new(None)),
            next_id: Arc::new(AtomicU32::new(1)),
            info: Arc::new(std::sync::Mutex::new(None)),
        };
        client.link().await?;
        Ok(client)
    }

    /// What the server announced on the current connection.
    pub fn server_info(&self) -> Option<ServerHello> {
        self.info.lock().ok().and_then(|i| i.clone())
    }

    /// The live link, connecting (with backoff) if there is none.
    async fn link(&self) -> Result<Arc<Link>, ClientError> {
        let mut guard = self.link.lock().await;
        if let Some(link) = guard.as_ref() {
            if !link.dead.load(Ordering::SeqCst) {
                return Ok(link.clone());
            }
        }
        let mut delay = Duration::from_millis(25);
        let give_up = tokio::time::Instant::now() + self.options.connect_timeout;
        let socket = loop {
            let left = give_up.saturating_duration_since(tokio::time::Instant::now());
            let error = match tokio::time::timeout(left, TcpStream::connect(&self.addr)).await {
                Ok(Ok(socket)) => break socket,
                Ok(Err(e)) => e,
                Err(_) => std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", self.options.connect_timeout),
                ),
            };
            if tokio::time::Instant::now() + delay >= give_up {
                return Err(ClientError::Connect {
                    addr: self.addr.clone(),
                    source: error,
                });
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        };
        let _ = socket.set_nodelay(true);
        let link = Arc::new(match &self.options.tls {
            None => spawn_link(socket),
            Some(config) => {
                let name = crate::tls::server_name(&self.addr)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let handshake = tokio::time::timeout(
                    self.options.connect_timeout,
                    connector.connect(name, socket),
                );
                match handshake.await {
                    Ok(Ok(stream)) => spawn_link(stream),
                    Ok(Err(e)) => {
                        return Err(ClientError::Connect {
                            addr: self.addr.clone(),
                            source: std::io::Error::other(format!("TLS handshake failed: {e}")),
                        })
                    }
                    Err(_) => {
                        return Err(ClientError::Connect {
                            addr: self.addr.clone(),
                            source: std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "the TLS handshake did not finish in time",
                            ),
                        })
                    }
                }
            }
        });
        // The link is shared only once HELLO agreed on a version: no request goes out
        // before it in the wrong version.
        let hello = Request::Hello {
            min_version: MIN_PROTOCOL_VERSION as u16,
            max_version: PROTOCOL_VERSION as u16,
            client: format!("omnia-rust {}", env!("CARGO_PKG_VERSION")),
        };
        match self.send_on(&link, &hello).await? {
            Response::Hello(hello) => {
                let agreed = u8::try_from(hello.version)
                    .ok()
                    .filter(|v| (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(v))
                    .ok_or_else(|| {
                        ClientError::Protocol(format!(
                            "HELLO agreed on protocol version {}, which this client does not speak ({MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})",
                            hello.version
                        ))
                    })?;
                link.version.store(agreed, Ordering::Relaxed);
                if let Some(token) = &self.options.token {
                    let auth = Request::Auth {
                        token: token.clone(),
                    };
                    match self.send_on(&link, &auth).await? {
                        Response::Authenticated { .. } => {}
                        other => {
                            return Err(ClientError::Protocol(format!(
                                "AUTH answered with {other:?}"
                            )))
                        }
                    }
                }
                if let Ok(mut info) = self.info.lock() {
                    *info = Some(hello);
                }
                *guard = Some(link.clone());
                Ok(link)
            }
            other => Err(ClientError::Protocol(format!(
                "HELLO answered with {other:?}"
            ))),
        }
    }

    async fn send_on(&self, link: &Link, request: &Request) -> Result<Response, ClientError> {
        let body = request
            .encode_in(link.version.load(Ordering::Relaxed))
            .map_err(ClientError::Encode)?;
        self.send_body(link, request.opcode(), body).await
    }

    async fn send_body(&self, link: &Link, op: u8, body: Bytes) -> Result<Response, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = link.pending.lock() {
            pending.insert(id, tx);
        }
        // Checked after registering: if the reader died after this check, it drains
        // `pending` after our insert and fails this request too.
        if link.dead.load(Ordering::SeqCst) {
            if let Ok(mut pending) = link.pending.lock() {
                pending.remove(&id);
            }
            return Err(ClientError::ConnectionLost(
                "the connection is closed".into(),
            ));
        }
        let frame = Frame::in_version(link.version.load(Ordering::Relaxed), op, id, body);
        if link.outgoing.send(frame).await.is_err() {
            return Err(ClientError::ConnectionLost(
                "the connection closed before the request was sent".into(),
            ));
        }
        let frame = match tokio::time::timeout(self.options.request_timeout, rx).await {
            Ok(answer) => answer.map_err(|_| {
                ClientError::ConnectionLost("no response before the connection closed".into())
            })??,
            Err(_) => {
                // A late answer finds no one waiting and is dropped by the reader.
                if let Ok(mut pending) = link.pending.lock() {
                    pending.remove(&id);
                }
                return Err(ClientError::Timeout {
                    addr: self.addr.clone(),
                    after: self.options.request_timeout,
                });
            }
        };
        match Response::decode(frame.opcode, &frame.body)
            .map_err(|e| ClientError::Protocol(e.to_string()))?
        {
            Response::Error { code, message } => Err(ClientError::Server {
                code: ErrorCode::from_u16(code),
                raw_code: code,
                message,
            }),
            response => Ok(response),
        }
    }

    /// Sends any request and returns its response (server errors as `Err`).
    pub async fn request(&self, request: &Request) -> Result<Response, ClientError> {
        let link = self.link().await?;
        self.send_on(&link, request).await
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        match self.request(&Request::Ping).await? {
            Response::Pong => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Forgets the customer `key` belongs to (FORGET; the `admin` role on a server with
    /// credentials): returns the erasure's id and how many keys the customer had.
    pub async fn forget(&self, key: &str) -> Result<(u64, u16), ClientError> {
        match self.request(&Request::Forget { key: key.into() }).await? {
            Response::Forgotten { erasure_id, keys } => Ok((erasure_id, keys)),
            other => Err(unexpected(other)),
        }
    }

    /// Whether erasure `id` (a FORGET's) is done: `Some(ms)` once no file of the data
    /// directory holds what was logged before it (0 if erased before the server
    /// started), `None` while pending.
    pub async fn forget_status(&self, id: u64) -> Result<Option<i64>, ClientError> {
        match self
            .request(&Request::ForgetStatus { erasure_id: id })
            .await?
        {
            Response::ErasureStatus {
                erased,
                erased_at_ms,
            } => Ok(erased.then_some(erased_at_ms)),
            other => Err(unexpected(other)),
        }
    }

    /// Everything held on the customer `key` belongs to (EXPORT; the `admin` role on a
    /// server with credentials).
    /// The document is JSON (`model::export::Export`, written by the server).
    pub async fn export(&self, key: &str) -> Result<serde_json::Value, ClientError> {
        match self.request(&Request::Export { key: key.into() }).await? {
            Response::Exported { json } => serde_json::from_str(&json)
                .map_err(|e| ClientError::Protocol(format!("the export is not valid JSON: {e}"))),
            other => Err(unexpected(other)),
        }
    }

    pub async fn ingest(&self, events: Vec<RawEvent>) -> Result<Ingested, ClientError> {
        ingested(self.request(&Request::Ingest { events }).await?)
    }

    /// Sends an INGEST body already written with
    /// [`IngestWriter`](crate::protocol::IngestWriter): the fast path for producers of
    /// millions of events a second.
    pub async fn ingest_body(&self, body: Bytes) -> Result<Ingested, ClientError> {
        let link = self.link().await?;
        let version = link.version.load(Ordering::Relaxed);
        if Layout::of_protocol(version) != Layout::V2 {
            return Err(ClientError::Encode(format!(
                "the server speaks protocol version {version}, whose INGEST events have no message id; an IngestWriter body is event layout 2 (protocol version 2): upgrade the server, or send the events with `ingest`"
            )));
        }
        ingested(
            self.send_body(&link, crate::protocol::opcode::INGEST, body)
                .await?,
        )
    }

    /// Sends JSON events (Segment Spec shape; an array, `{"batch": [...]}`, one event,
    /// or one event per line).
    pub async fn ingest_json(&self, json: impl Into<Bytes>) -> Result<Ingested, ClientError> {
        ingested(
            self.request(&Request::IngestJson { json: json.into() })
                .await?,
        )
    }

    pub async fn profile(&self, key: &str) -> Result<Option<ProfileView>, ClientError> {
        match self.request(&Request::Profile { key: key.into() }).await? {
            Response::Profile(p) => Ok(p.map(|p| *p)),
            other => Err(unexpected(other)),
        }
    }

    pub async fn segment_count(&self, query: &str) -> Result<u64, ClientError> {
        match self
            .request(&Request::SegmentCount {
                query: query.into(),
            })
            .await?
        {
            Response::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// One page of members: `(customer id, primary key)` and the next cursor.
    pub async fn segment_members(
        &self,
        query: &str,
        cursor: u32,
        limit: u32,
    ) -> Result<(Vec<(u32, String)>, Option<u32>), ClientError> {
        match self
            .request(&Request::SegmentMembers {
                query: query.into(),
                cursor,
                limit,
            })
            .await?
        {
            Response::Members {
                members,
                next_cursor,
            } => Ok((members, next_cursor)),
            other => Err(unexpected(other)),
        }
    }

    pub async fn segment_contains(&self, segment: &str, key: &str) -> Result<bool, ClientError> {
        match self
            .request(&Request::SegmentContains {
                segment: segment.into(),
                key: key.into(),
            })
            .await?
        {
            Response::Contains(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    /// Asks the server to read its config file again and swap it in; the report says
    /// what changed. Errors: INVALID_CONFIG (the file's errors), RELOAD_REFUSED.
    pub async fn reload(&self) -> Result<crate::model::reload::ReloadReport, ClientError> {
        match self.request(&Request::Reload).await? {
            Response::Reloaded(report) => Ok(*report),
            other => Err(unexpected(other)),
        }
    }

    pub async fn stats(&self) -> Result<Stats, ClientError> {
        self.stats_with(false, false, false).await
    }

    /// Server counters including every offer's decisions and feedback per channel and
    /// experiment arm.
    pub async fn stats_with_offers(&self) -> Result<Stats, ClientError> {
        self.stats_with(true, false, false).await
    }

    /// Server counters, with the sections asked for: per-offer counters, tracking-plan
    /// drift (properties ingest dropped, unknown event types), the triggers' deliveries.
    pub async fn stats_with(
        &self,
        offers: bool,
        drift: bool,
        triggers: bool,
    ) -> Result<Stats, ClientError> {
        let request = Request::Stats {
            offers,
            drift,
            triggers,
            experiments: false,
        };
        match self.request(&request).await? {
            Response::Stats(mut s) => {
                // Sent (empty) before the triggers section when only that was asked for.
                if !drift {
                    s.drift = None;
                }
                Ok(s)
            }
            other => Err(unexpected(other)),
        }
    }

    /// The report of every measured experiment (STATS, its experiments section).
    pub async fn experiments(
        &self,
    ) -> Result<Vec<crate::model::experiment::ExperimentReport>, ClientError> {
        let request = Request::Stats {
            offers: false,
            drift: false,
            triggers: false,
            experiments: true,
        };
        match self.request(&request).await? {
            Response::Stats(s) => Ok(s.experiments.unwrap_or_default()),
            other => Err(unexpected(other)),
        }
    }

    /// Asks which offers to present to a customer on a channel.
    pub async fn decide(&self, request: DecisionRequest) -> Result<Decision, ClientError> {
        match self.request(&Request::Decide(request)).await? {
            Response::Decision(d) => Ok(*d),
            other => Err(unexpected(other)),
        }
    }

    /// Reports what a customer did with an offer.
    pub async fn feedback(
        &self,
        kind: FeedbackKind,
        target: FeedbackTarget,
    ) -> Result<FeedbackResult, ClientError> {
        match self.request(&Request::Feedback { kind, target }).await? {
            Response::Feedback(f) => Ok(f),
            other => Err(unexpected(other)),
        }
    }

    /// Redeems a coupon by its code on `channel`, once (a till scanning a code); the
    /// order value, if given, goes into the holder's profile with the redemption.
    pub async fn redeem(
        &self,
        code: &str,
        channel: &str,
        order_value: Option<f64>,
    ) -> Result<crate::model::decision::Redeemed, ClientError> {
        let request = Request::Redeem {
            code: code.into(),
            channel: channel.into(),
            order_value,
        };
        match self.request(&request).await? {
            Response::Redeemed(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }
}

/// A streaming connection of its own, opened by [`Client::subscribe`]: the changes
/// of the change stream in order, acknowledged with [`Subscription::ack`].
pub struct Subscription {
    /// Keeps the connection's link alive.
    client: Client,
    link: Arc<Link>,
    pushes: mpsc::Receiver<Frame>,
    /// The first position this subscription reads.
    pub from: u64,
    /// The oldest position the stream kept when it started.
    pub earliest: u64,
    /// The last position the stream had when it started.
    pub position: u64,
}

/// A CHANGES frame: every change up to `through` was sent, these the ones subscribed to.
#[derive(Debug, Clone, PartialEq)]
pub struct Changes {
    pub through: u64,
    pub changes: Vec<crate::model::StreamedChange>,
}

impl Subscription {
    /// The next CHANGES frame (a frame with no changes moves `through` on). An error
    /// when the server ends the subscription (BEYOND_RETENTION, say), refuses an ACK,
    /// or the connection is lost; a named subscription then resumes after its last
    /// ACK on a new one.
    pub async fn next(&mut self) -> Result<Changes, ClientError> {
        let Some(frame) = self.pushes.recv().await else {
            return Err(ClientError::ConnectionLost(
                "the streaming connection closed".into(),
            ));
        };
        match Response::decode(frame.opcode, &frame.body)
            .map_err(|e| ClientError::Protocol(e.to_string()))?
        {
            Response::Changes { through, changes } => Ok(Changes { through, changes }),
            Response::Error { code, message } => Err(ClientError::Server {
                code: ErrorCode::from_u16(code),
                raw_code: code,
                message,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Says every change up to `position` is handled: a named subscription resumes
    /// after it. Not answered; a refusal comes from [`Subscription::next`].
    pub async fn ack(&self, position: u64) -> Result<(), ClientError> {
        let id = self.client.next_id.fetch_add(1, Ordering::Relaxed);
        let body = Request::Ack { position }
            .encode()
            .map_err(ClientError::Encode)?;
        let frame = Frame::in_version(
            self.link.version.load(Ordering::Relaxed),
            crate::protocol::opcode::ACK,
            id,
            body,
        );
        self.link
            .outgoing
            .send(frame)
            .await
            .map_err(|_| ClientError::ConnectionLost("the streaming connection closed".into()))
    }
}

impl Subscription {
    /// Stops taking changes and waits until the server has handled everything sent
    /// before (the ACKs among them), then closes the connection.
    pub async fn finish(mut self) -> Result<(), ClientError> {
        self.pushes.close();
        // Frames already queued would hold the reader up: let them go.
        while self.pushes.try_recv().is_ok() {}
        match self.client.send_on(&self.link, &Request::Ping).await? {
            Response::Pong => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

impl Client {
    /// Opens a streaming connection of its own (same address and options) and
    /// subscribes on it: `name` (empty: unnamed) resumes after its last ACK when it has
    /// one (unless `from` is a position); `segments` empty: every segment on the stream.
    pub async fn subscribe(
        &self,
        name: &str,
        from: crate::protocol::message::StreamFrom,
        segments: &[String],
    ) -> Result<Subscription, ClientError> {
        let client = Client::connect_with(&self.addr, self.options.clone()).await?;
        let link = client.link().await?;
        // Frames no request waits for go here from now on; a small buffer.
        let (tx, pushes) = mpsc::channel(4);
        if let Ok(mut p) = link.pushes.lock() {
            *p = Some(tx);
        }
        let request = Request::Subscribe {
            name: name.to_string(),
            from,
            segments: segments.to_vec(),
        };
        match client.send_on(&link, &request).await? {
            Response::Subscribed {
                from,
                earliest,
                position,
            } => Ok(Subscription {
                client,
                link,
                pushes,
                from,
                earliest,
                position,
            }),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(response: Response) -> ClientError {
    ClientError::Protocol(format!("unexpected response {response:?}"))
}

fn ingested(response: Response) -> Result<Ingested, ClientError> {
    match response {
        Response::Ingested { accepted, rejected } => Ok(Ingested { accepted, rejected }),
        other => Err(unexpected(other)),
    }
}

/// Starts the writer and reader tasks of a connection.
fn spawn_link<S>(socket: S) -> Link
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut read, mut write) = tokio::io::split(socket);
    let (outgoing, mut queue) = mpsc::channel::<Frame>(4096);
    let pending: Pending = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let fail_all = |pending: &Pending, why: &str| {
        if let Ok(mut p) = pending.lock() {
            for (_, tx) in p.drain() {
                let _ = tx.send(Err(ClientError::ConnectionLost(why.to_string())));
            }
        }
    };
    let writer_pending = pending.clone();
    tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        while let Some(frame) = queue.recv().await {
            frame.write_to(&mut buf);
            // Batch whatever else is already queued into the same write.
            while buf.len() < 256 * 1024 {
                match queue.try_recv() {
                    Ok(frame) => frame.write_to(&mut buf),
                    Err(_) => break,
                }
            }
            if let Err(e) = write.write_all(&buf).await {
                fail_all(&writer_pending, &e.to_string());
                return;
            }
            buf.clear();
        }
    });
    let reader_pending = pending.clone();
    let pushes: Pushes = Arc::default();
    let reader_pushes = pushes.clone();
    let dead = Arc::new(AtomicBool::new(false));
    let reader_dead = dead.clone();
    tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let why = loop {
            match Frame::parse(&mut buf, RESPONSE_LIMIT) {
                Ok(Some(frame)) => {
                    let tx = reader_pending
                        .lock()
                        .ok()
                        .and_then(|mut p| p.remove(&frame.request_id));
                    let push = match &tx {
                        None => reader_pushes.lock().ok().and_then(|p| p.clone()),
                        Some(_) => None,
                    };
                    match tx {
                        Some(tx) => {
                            let _ = tx.send(Ok(frame));
                        }
                        // Bounded: a subscriber that does not read stops this reader,
                        // and so the server, instead of buffering here.
                        None if push.is_some() => {
                            // A closed subscription ([`Subscription::finish`]) drops
                            // what comes after; the connection stays for its answers.
                            let _ = push.unwrap().send(frame).await;
                        }
                        // An error for a request the server could not identify.
                        None if frame.request_id == 0 => fail_first(&reader_pending, frame),
                        // The answer to a request that timed out.
                        None => {}
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => break e.to_string(),
            }
            match read.read_buf(&mut buf).await {
                Ok(0) => break "the server closed the connection".to_string(),
                Ok(_) => {}
                Err(e) => break e.to_string(),
            }
        };
        reader_dead.store(true, Ordering::SeqCst);
        fail_all(&reader_pending, &why);
        // Ends the subscription's receiver.
        if let Ok(mut p) = reader_pushes.lock() {
            p.take();
        }
    });
    Link {
        outgoing,
        pending,
        pushes,
        dead,
        version: AtomicU8::new(MIN_PROTOCOL_VERSION),
    }
}

/// Hands a frame the server could not attribute to the oldest waiting request.
fn fail_first(pending: &Pending, frame: Frame) {
    if let Ok(mut p) = pending.lock() {
        if let Some(&id) = p.keys().min() {
            if let Some(tx) = p.remove(&id) {
                let _ = tx.send(Ok(frame));
            }
        }
    }
}
