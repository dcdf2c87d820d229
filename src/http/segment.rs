//! The Segment HTTP Tracking API: `POST /v1/batch` and the single calls `/v1/track`,
//! `/v1/identify`, `/v1/page`, `/v1/screen`, `/v1/alias`, `/v1/group`.
//!
//! One path for all of them ([`ingest`]): check the media type and the encoding, read
//! the body within the limit, convert it with the Segment mapping INGEST_JSON uses (the
//! single calls name their type by their path, so their bodies need no `type`), apply
//! it under the reload fence as INGEST does, wait for the log, answer.
//!
//! The write key is checked before any of this, by the edge's guard (`auth`): on a
//! server with credentials it is a token of a principal with the `ingest` role, sent as
//! the HTTP Basic user name or a Bearer token; a call with neither has its body's
//! `writeKey` checked once the body is read, before anything is parsed for the engine
//! (browsers' beacons cannot set headers). Without credentials every key is taken.
//!
//! A group call (an account a user belongs to) is acknowledged and not applied: omnia's
//! profiles are people, and a group is not a customer key. The answer says so.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use http_body_util::BodyExt;

use super::auth::{self, BodyKey};
use super::{Edge, Failure};
use crate::protocol::{ErrorCode, Response as Reply};
use crate::server::cmd::{ingest, ingest_json};

pub(super) async fn batch(
    edge: State<Arc<Edge>>,
    key: Option<Extension<BodyKey>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(&edge, None, key.map(|k| k.0), &headers, body).await
}

pub(super) async fn track(
    edge: State<Arc<Edge>>,
    key: Option<Extension<BodyKey>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(&edge, Some("track"), key.map(|k| k.0), &headers, body).await
}

pub(super) async fn identify(
    edge: State<Arc<Edge>>,
    key: Option<Extension<BodyKey>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(&edge, Some("identify"), key.map(|k| k.0), &headers, body).await
}

pub(super) async fn page(
    edge: State<Arc<Edge>>,
    key: Option<Extension<BodyKey>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(&edge, Some("page"), key.map(|k| k.0), &headers, body).await
}

pub(super) async fn screen(
    edge: State<Arc<Edge>>,
    key: Option<Extension<BodyKey>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(&edge, Some("screen"), key.map(|k| k.0), &headers, body).await
}

pub(super) async fn alias(
    edge: State<Arc<Edge>>,
    key: Option<Extension<BodyKey>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(&edge, Some("alias"), key.map(|k| k.0), &headers, body).await
}

/// A group call: read and checked like the others, then acknowledged, not applied (see
/// the module doc).
pub(super) async fn group(
    edge: State<Arc<Edge>>,
    key: Option<Extension<BodyKey>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let json = match read_json(&edge, &headers, body).await {
        Ok(json) => json,
        Err(failure) => return failure.into_response(),
    };
    if let Some(key) = key {
        if let Err(refusal) = auth::check_body_key(&edge, key.0, &json, "POST /v1/group").await {
            return refusal;
        }
    }
    let parsed = crate::protocol::json::check_nesting(&json, crate::protocol::json::MAX_JSON_DEPTH)
        .map_err(|e| Failure::bad_json(e.to_string()))
        .and_then(|()| {
            serde_json::from_slice::<serde::de::IgnoredAny>(&json)
                .map_err(|e| Failure::bad_json(format!("bad request body: {e}")))
        });
    match parsed {
        Ok(_) => axum::Json(serde_json::json!({
            "success": true,
            "accepted": 0,
            "ignored": "group calls are not applied: omnia's profiles are people, and a group is not a customer key",
            "rejected": [],
        }))
        .into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// Reads, converts, applies and acknowledges one request's events.
async fn ingest(
    edge: &Edge,
    kind: Option<&str>,
    key: Option<BodyKey>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let json = match read_json(edge, headers, body).await {
        Ok(json) => json,
        Err(failure) => return failure.into_response(),
    };
    if let Some(key) = key {
        let what = format!("POST /v1/{}", kind.unwrap_or("batch"));
        if let Err(refusal) = auth::check_body_key(edge, key, &json, &what).await {
            return refusal;
        }
    }
    // Parsed in place: no copy of a body the engine reads its events from.
    match ingest_events(edge, kind, Vec::from(json)).await {
        Ok(response) => response,
        Err(failure) => failure.into_response(),
    }
}

async fn ingest_events(
    edge: &Edge,
    kind: Option<&str>,
    mut json: Vec<u8>,
) -> Result<Response, Failure> {
    let max_batch = edge.limits.max_batch;
    let reply = super::execute(edge, |shared, receipt| {
        let node = shared.node();
        let events = ingest_json::parse_calls(node.config(), &mut json, node.engine().now_ms(), kind)
            .map_err(Failure::bad_json)?;
        if events.len() > max_batch {
            return Err(Failure {
                status: StatusCode::BAD_REQUEST,
                code: "BATCH_TOO_LARGE",
                message: format!(
                    "the batch holds {} events; at most {max_batch} are taken in one request: send smaller batches",
                    events.len(),
                ),
            });
        }
        Ok(ingest::apply(shared, events.iter(), receipt))
    })
    .await?;
    let Reply::Ingested { accepted, rejected } = reply else {
        return Err(Failure::unexpected(reply));
    };
    let duplicates = rejected
        .iter()
        .filter(|r| r.code == ErrorCode::Duplicate as u16)
        .count();
    let rejected: Vec<serde_json::Value> = rejected
        .iter()
        .filter(|r| r.code != ErrorCode::Duplicate as u16)
        .map(|r| {
            serde_json::json!({
                "index": r.index,
                "code": ErrorCode::from_u16(r.code).map_or("UNKNOWN", ErrorCode::name),
                "message": r.message,
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({
        "success": true,
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": rejected,
    }))
    .into_response())
}

/// The body of a JSON request, decompressed and within the limit.
pub(super) async fn read_json(
    edge: &Edge,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, Failure> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = media.split(';').next().unwrap_or("").trim();
    // text/plain: what browsers send with navigator.sendBeacon, which cannot set JSON.
    if !(essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("text/plain"))
    {
        return Err(Failure {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "UNSUPPORTED_MEDIA_TYPE",
            message: format!("Content-Type is `{media}`; send `application/json`"),
        });
    }
    // The decompression layer removes the header of a body it decoded: one left is an
    // encoding it does not take.
    if let Some(encoding) = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .filter(|e| !e.eq_ignore_ascii_case("identity"))
    {
        return Err(Failure {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "UNSUPPORTED_ENCODING",
            message: format!("Content-Encoding `{encoding}` is not taken; send gzip or none"),
        });
    }
    let max = edge.limits.max_body;
    let timeout = edge.limits.timeout;
    // Only the body's arrival is timed: once it is read, the request runs to its answer
    // (an answer cut short after the events were applied would invite a retry).
    let read = tokio::time::timeout(timeout, http_body_util::Limited::new(body, max).collect());
    let Ok(read) = read.await else {
        return Err(Failure {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "REQUEST_TIMEOUT",
            message: format!(
                "the body did not arrive within {} s; nothing was applied",
                timeout.as_secs()
            ),
        });
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Failure {
            // 400, not 413: what Segment answers, and what its SDKs expect.
            status: StatusCode::BAD_REQUEST,
            code: "BODY_TOO_LARGE",
            message: format!(
                "the body is larger than {max} bytes (after decompression); send smaller batches"
            ),
        }),
        Err(e) => Err(Failure {
            status: StatusCode::BAD_REQUEST,
            code: "BAD_BODY",
            message: format!(
                "the body could not be read: {e} (a damaged gzip stream, or a connection cut short)"
            ),
        }),
    }
}
