//! The HTTP edge: the Segment HTTP Tracking API and health probes, beside the binary
//! server, on the same runtime, the same node, journal, metrics and shutdown.
//!
//! Why HTTP at all: the trackers teams already run (Segment's and RudderStack's SDKs,
//! analytics.js, server libraries in every language) post JSON to `/v1/batch` and its
//! single-call siblings. Pointed at omnia unchanged, they feed it.
//!
//! Data flow for an ingest request (`segment`): the body is read, gunzipped when it says
//! `Content-Encoding: gzip` (tower-http), and bounded after decompression; its events
//! are converted by the same Segment mapping as INGEST_JSON
//! (`server::cmd::ingest_json`) and applied by the same code as INGEST
//! (`server::cmd::ingest`), under the reload fence; the answer waits until the log
//! records of exactly this request are durable, as the binary protocol's does.
//!
//! Invariants: a request is answered 200 only once every event it holds was applied or
//! rejected (by index, with the reason), and the applied ones are as durable as the
//! fsync policy promises. Every other answer (400, 404, 405, 415, 503) applied nothing,
//! but for 503 STORAGE_FAILED after the events were applied, which says, as on the
//! binary protocol, that the log could not store them. No handler panics on any input:
//! every failure is a JSON `{"code", "message"}` body.
//!
//! The listener is bound and served before recovery, so `/healthz` answers while a big
//! data directory loads; until the node is there ([`Edge::ready`]) every other endpoint
//! answers 503 with `Retry-After`.

mod api;
pub mod auth;
mod segment;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::engine::Receipt;
use crate::protocol::{ErrorCode, Response as Reply};
use crate::server::Shared;

/// Bounds on what one HTTP request may hold, Segment's by default.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest body, after decompression.
    pub max_body: usize,
    /// Most events in one `/v1/batch`.
    pub max_batch: usize,
    /// Longest time a request's body may take to arrive (the headers have
    /// `header_timeout`); what follows is not timed, as on the binary protocol.
    pub timeout: Duration,
    /// Most connections served at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Longest time a connection may take to send a request's headers (and, kept alive,
    /// to start the next request): slow or silent clients cannot hold sockets.
    pub header_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body: 500 * 1024,
            max_batch: 2500,
            timeout: Duration::from_secs(30),
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// What the HTTP handlers share: the server's state, once recovery has made it.
pub struct Edge {
    shared: OnceLock<Arc<Shared>>,
    limits: HttpLimits,
    /// TLS for the listener; `None`: plain HTTP.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Edge {
    /// An edge with no node yet: only `/healthz` answers 200 until [`Edge::ready`].
    pub fn new(limits: HttpLimits) -> Arc<Edge> {
        Edge::with_tls(limits, None)
    }

    /// An edge serving HTTPS with `tls` (`crate::tls::server_config`), or HTTP.
    pub fn with_tls(
        limits: HttpLimits,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> Arc<Edge> {
        Arc::new(Edge {
            shared: OnceLock::new(),
            limits,
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
        })
    }

    /// Recovery is done: requests go to `shared` from now on.
    pub fn ready(&self, shared: Arc<Shared>) {
        let _ = self.shared.set(shared);
    }

    fn shared(&self) -> Result<&Arc<Shared>, Failure> {
        self.shared.get().ok_or(Failure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "NOT_READY",
            message: "omnia is still recovering its data directory; send the request again shortly"
                .into(),
        })
    }
}

/// Every route the edge serves.
pub fn router(edge: Arc<Edge>) -> Router {
    Router::new()
        .route("/v1/batch", post(segment::batch))
        .route("/v1/track", post(segment::track))
        .route("/v1/identify", post(segment::identify))
        .route("/v1/page", post(segment::page))
        .route("/v1/screen", post(segment::screen))
        .route("/v1/alias", post(segment::alias))
        .route("/v1/group", post(segment::group))
        .route("/v1/decide", post(api::decide))
        .route("/v1/feedback", post(api::feedback))
        .route("/v1/coupons/{code}/redeem", post(api::redeem))
        .route("/v1/profiles/{key}", get(api::profile).delete(api::forget))
        .route("/v1/profiles/{key}/export", get(api::export))
        .route("/v1/segments/{name}/count", get(api::segment_count))
        .route("/v1/segments/{name}/members", get(api::segment_members))
        .route("/v1/segments/query", post(api::segment_query))
        .route("/v1/stats", get(api::stats))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            edge.clone(),
            auth::guard,
        ))
        .with_state(edge)
        // Unknown encodings pass through to the handler, which answers them in JSON.
        .layer(
            tower_http::decompression::RequestDecompressionLayer::new()
                .gzip(true)
                .pass_through_unaccepted(true),
        )
}

/// How long a shutdown waits for the requests in flight before it drops them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `router(edge)` on `listener` until `shutdown` completes, then lets the
/// requests in flight finish (for at most 10 s).
///
/// hyper's own connection loop rather than `axum::serve`, for what a server on a
/// network needs and `axum::serve` does not set: a bound on connections (one over it is
/// answered 503 and closed, as the binary server answers SERVER_BUSY) and a deadline
/// for a request's headers.
pub async fn run(
    listener: tokio::net::TcpListener,
    edge: Arc<Edge>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = edge.limits;
    let tls = edge.tls.clone();
    let app = router(edge);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "the HTTP listener cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if tls.is_none() {
                tokio::spawn(refuse_busy(stream, limits.max_connections));
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ip = peer.ip();
        let app = tower::ServiceExt::map_request(
            app.clone(),
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(auth::Peer(ip));
                request
            },
        );
        let service = hyper_util::service::TowerToHyperService::new(app);
        let (tls, watcher) = (tls.clone(), graceful.watcher());
        tokio::spawn(async move {
            // The TLS handshake has the headers' deadline.
            let accepted = tokio::time::timeout(
                limits.header_timeout,
                crate::tls::Socket::accept(stream, tls.as_ref()),
            )
            .await;
            let socket = match accepted {
                Ok(Ok(socket)) => socket,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "closing an HTTP connection whose TLS handshake failed (plain HTTP on the HTTPS port?)");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "closing an HTTP connection that did not complete the TLS handshake in time");
                    return;
                }
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service);
            let connection = watcher.watch(connection);
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "an HTTP connection ended with an error");
            }
            drop(slot);
        });
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "HTTP requests still in flight after the shutdown grace period were dropped"
        );
    }
    Ok(())
}

/// Serves `/metrics` (Prometheus text) on `listener` until `shutdown`: to anyone on a
/// server without credentials, else to a principal with the `read` role (a scraper's
/// `authorization` bearer token).
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(
                move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<
                    std::net::SocketAddr,
                >,
                      headers: axum::http::HeaderMap| {
                    let (handle, shared) = (handle.clone(), shared.clone());
                    async move {
                        let role = crate::security::Role::Read;
                        match auth::check(&shared, &headers, Some(peer.ip()), role, "GET /metrics")
                            .await
                        {
                            Ok(()) => (
                                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                                handle.render(),
                            )
                                .into_response(),
                            Err(refusal) => refusal,
                        }
                    }
                },
            ),
        )
        .fallback(not_found);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// The answer to a connection over the limit: 503 with a JSON body, then close.
async fn refuse_busy(mut stream: tokio::net::TcpStream, limit: usize) {
    use tokio::io::AsyncWriteExt;
    let body = serde_json::json!({
        "code": ErrorCode::ServerBusy.name(),
        "number": ErrorCode::ServerBusy as u16,
        "message": format!("the server is at its limit of {limit} HTTP connections; try again shortly"),
    })
    .to_string();
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(reply.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// Runs one request the way the binary server runs it: on the node once it is there,
/// under the reload fence, its answer held until the log records it appended (and only
/// those) are durable. A protocol error becomes a [`Failure`] with its HTTP status.
pub(crate) async fn execute(
    edge: &Edge,
    run: impl FnOnce(&Arc<Shared>, &mut Receipt) -> Result<Reply, Failure>,
) -> Result<Reply, Failure> {
    let shared = edge.shared()?;
    let mut receipt = Receipt::default();
    let reply = {
        let Some(_fence) = shared.hold_requests() else {
            return Err(Failure {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "RELOADING",
                message: "a config reload holds requests back; send the request again shortly"
                    .into(),
            });
        };
        run(shared, &mut receipt)?
    };
    if let Reply::Error { code, message } = reply {
        return Err(Failure::protocol(code, message));
    }
    if let (Some(last), Some(journal)) = (receipt.last(), shared.node().engine().journal()) {
        let journal = journal.clone();
        if let Err(reason) = journal.durable(last).await {
            return Err(Failure::protocol(ErrorCode::StorageFailed as u16, reason));
        }
    }
    Ok(reply)
}

/// A JSON body of type `T`, read as [`segment::read_json`] reads it, its nesting checked
/// before any parser recurses, or the failure that names what is wrong with it.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    edge: &Edge,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<T, Failure> {
    let bytes = segment::read_json(edge, headers, body).await?;
    crate::protocol::json::check_nesting(&bytes, crate::protocol::json::MAX_JSON_DEPTH)
        .map_err(|e| Failure::bad_json(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| Failure::bad_json(format!("bad request body: {e}")))
}

/// A request refused as a whole: nothing of it was applied.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: StatusCode,
    /// The protocol's error name where one fits (BAD_JSON, STORAGE_FAILED, ...), else a
    /// name of HTTP's own (BODY_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, ...).
    pub code: &'static str,
    pub message: String,
}

impl Failure {
    /// The answer to a request the server refused with protocol error `code`: the
    /// status says whose move it is (400 the sender's, 404 nothing there, 409 a budget,
    /// 503 retry later).
    pub fn protocol(code: u16, message: String) -> Failure {
        use ErrorCode::*;
        let known = ErrorCode::from_u16(code);
        let status = match known {
            Some(UnknownCustomer | UnknownDecision | UnknownSegment | UnknownCoupon) => {
                StatusCode::NOT_FOUND
            }
            Some(BudgetSpent | CouponAlreadyRedeemed) => StatusCode::CONFLICT,
            Some(CouponExpired) => StatusCode::GONE,
            Some(CouponWrongChannel) => StatusCode::FORBIDDEN,
            Some(StorageFailed | Capacity | ServerBusy) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        Failure {
            status,
            code: known.map_or("UNKNOWN", ErrorCode::name),
            message,
        }
    }

    /// A command answered what its endpoint does not expect: a bug, said as one.
    pub fn unexpected(reply: Reply) -> Failure {
        Failure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "INTERNAL",
            message: format!("the command answered {reply:?}; this is a bug in omnia"),
        }
    }

    /// A body that is not what the endpoint takes.
    pub fn bad_json(message: String) -> Failure {
        Failure {
            status: StatusCode::BAD_REQUEST,
            code: ErrorCode::BadJson.name(),
            message,
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let retry = matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        );
        let mut body = serde_json::json!({ "code": self.code, "message": self.message });
        // The protocol's number beside its name, for clients that share the binary
        // protocol's error table.
        if let Some(number) =
            (1..64u16).find(|&n| ErrorCode::from_u16(n).is_some_and(|c| c.name() == self.code))
        {
            body["number"] = serde_json::json!(number);
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The process is up.
async fn healthz() -> Response {
    axum::Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// Recovery is done and no reload holds requests back.
async fn readyz(axum::extract::State(edge): axum::extract::State<Arc<Edge>>) -> Response {
    let status = match edge.shared.get() {
        None => "recovering",
        Some(shared) if shared.hold_requests().is_none() => "reloading",
        Some(_) => "ready",
    };
    let code = if status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(serde_json::json!({ "status": status }))).into_response()
}

async fn not_found(uri: axum::http::Uri) -> Failure {
    Failure {
        status: StatusCode::NOT_FOUND,
        code: "NOT_FOUND",
        message: format!(
            "no endpoint at {}; omnia serves POST /v1/batch, /v1/track, /v1/identify, /v1/page, /v1/screen, /v1/alias, /v1/group, /v1/decide, /v1/feedback, /v1/coupons/CODE/redeem, /v1/segments/query and GET /v1/profiles/KEY, /v1/profiles/KEY/export, /v1/segments/NAME/count, /v1/segments/NAME/members, /v1/stats, /healthz, /readyz; DELETE /v1/profiles/KEY",
            uri.path()
        ),
    }
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Failure {
    Failure {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "METHOD_NOT_ALLOWED",
        message: format!("{} does not take {method}", uri.path()),
    }
}
