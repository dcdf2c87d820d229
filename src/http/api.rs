//! HTTP/JSON for channel backends that cannot speak the binary protocol: DECIDE,
//! FEEDBACK, PROFILE, the segment queries and STATS, as JSON.
//!
//! Each endpoint builds the same request the binary protocol decodes and runs it
//! through the same command (`server::cmd`) with [`super::execute`], so semantics,
//! limits and error codes are the binary operations' own; only the encoding differs.
//! Decision ids are strings in JSON: they exceed 2^53, past which JSON numbers lose
//! digits in most parsers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{execute, json_body as body, Edge, Failure};
use crate::model::decision::{DecisionRequest, FeedbackKind, FeedbackTarget};
use crate::model::RawValue;
use crate::protocol::{ErrorCode, Response as Reply};
use crate::server::cmd;

/// `POST /v1/decide`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideBody {
    key: String,
    channel: String,
    #[serde(default = "one")]
    top: u8,
    #[serde(default)]
    record: bool,
    #[serde(default)]
    explain: bool,
    #[serde(default)]
    context: HashMap<String, serde_json::Value>,
}

fn one() -> u8 {
    1
}

/// `POST /v1/feedback`: by decision id, or by customer, offer and channel.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    kind: String,
    offer: String,
    #[serde(default)]
    decision_id: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    channel: Option<String>,
}

/// `POST /v1/coupons/{code}/redeem`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemBody {
    channel: String,
    #[serde(default)]
    order_value: Option<f64>,
}

/// `POST /v1/segments/query`: a count, or a page of members with `page`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    query: String,
    #[serde(default)]
    page: Option<PageParams>,
}

/// Where a page of members starts and how long it is.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PageParams {
    #[serde(default)]
    cursor: u32,
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    1000
}

/// `GET /v1/stats` sections.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatsParams {
    #[serde(default)]
    offers: bool,
    #[serde(default)]
    drift: bool,
    #[serde(default)]
    triggers: bool,
    #[serde(default)]
    experiments: bool,
}

fn json(value: serde_json::Value) -> Response {
    axum::Json(value).into_response()
}

/// The answer of an endpoint: its JSON, or its failure.
fn answer(result: Result<serde_json::Value, Failure>) -> Response {
    match result {
        Ok(value) => json(value),
        Err(failure) => failure.into_response(),
    }
}

/// A context value as the binary protocol carries it.
fn context_value(name: &str, v: &serde_json::Value) -> Result<RawValue, Failure> {
    match v {
        serde_json::Value::Number(n) => Ok(RawValue::Num(n.as_f64().unwrap_or(f64::NAN))),
        serde_json::Value::String(s) => Ok(RawValue::Str(s.clone())),
        serde_json::Value::Bool(b) => Ok(RawValue::Bool(*b)),
        _ => Err(Failure::protocol(
            ErrorCode::BadContext as u16,
            format!("context field `{name}` must be a number, a string or a boolean"),
        )),
    }
}

pub(super) async fn decide(edge: State<Arc<Edge>>, headers: HeaderMap, raw: Body) -> Response {
    answer(decide_json(&edge, &headers, raw).await)
}

async fn decide_json(
    edge: &Edge,
    headers: &HeaderMap,
    raw: Body,
) -> Result<serde_json::Value, Failure> {
    let b: DecideBody = body(edge, headers, raw).await?;
    let mut context: Vec<(String, RawValue)> = Vec::with_capacity(b.context.len());
    for (name, value) in &b.context {
        context.push((name.clone(), context_value(name, value)?));
    }
    let request = DecisionRequest {
        key: b.key,
        channel: b.channel,
        top: b.top,
        record_impression: b.record,
        explain: b.explain,
        context,
    };
    let reply = execute(edge, |shared, receipt| {
        Ok(cmd::decide::decide(shared, &request, receipt))
    })
    .await?;
    let Reply::Decision(decision) = reply else {
        return Err(Failure::unexpected(reply));
    };
    let mut value = serde_json::to_value(&*decision).unwrap_or_default();
    value["decision_id"] = serde_json::json!(decision.decision_id.to_string());
    Ok(value)
}

pub(super) async fn feedback(edge: State<Arc<Edge>>, headers: HeaderMap, raw: Body) -> Response {
    answer(feedback_json(&edge, &headers, raw).await)
}

async fn feedback_json(
    edge: &Edge,
    headers: &HeaderMap,
    raw: Body,
) -> Result<serde_json::Value, Failure> {
    let b: FeedbackBody = body(edge, headers, raw).await?;
    let kind = FeedbackKind::from_name(&b.kind).ok_or_else(|| {
        Failure::bad_json(format!(
            "field `kind` is `{}`; it is one of impression, click, accept, dismiss",
            b.kind
        ))
    })?;
    let target = match (b.decision_id, b.key, b.channel) {
        (Some(id), None, None) => FeedbackTarget::Decision {
            decision_id: id.parse().map_err(|_| {
                Failure::bad_json(format!(
                    "field `decision_id` is `{id}`, not a decision id (a string of digits, as /v1/decide returns it)"
                ))
            })?,
            offer: b.offer,
        },
        (None, Some(key), Some(channel)) => FeedbackTarget::Customer {
            key,
            offer: b.offer,
            channel,
        },
        _ => {
            return Err(Failure::bad_json(
                "send either `decision_id` (feedback on a decision) or `key` and `channel` (feedback by customer), with `offer`".into(),
            ))
        }
    };
    let reply = execute(edge, |shared, receipt| {
        Ok(cmd::decide::feedback(shared, kind, &target, receipt))
    })
    .await?;
    let Reply::Feedback(result) = reply else {
        return Err(Failure::unexpected(reply));
    };
    Ok(serde_json::json!({
        "decision_id": result.decision_id.to_string(),
        "coupon": result.coupon,
    }))
}

/// `POST /v1/coupons/{code}/redeem`: a coupon redeemed by its code, once (REDEEM).
pub(super) async fn redeem(
    edge: State<Arc<Edge>>,
    code: PathParam,
    headers: HeaderMap,
    raw: Body,
) -> Response {
    answer(redeem_json(&edge, code, &headers, raw).await)
}

async fn redeem_json(
    edge: &Edge,
    code: PathParam,
    headers: &HeaderMap,
    raw: Body,
) -> Result<serde_json::Value, Failure> {
    let code = path_param(code)?;
    let b: RedeemBody = body(edge, headers, raw).await?;
    let reply = execute(edge, |shared, receipt| {
        Ok(cmd::redeem::apply(
            shared,
            &code,
            &b.channel,
            b.order_value,
            receipt,
        ))
    })
    .await?;
    let Reply::Redeemed(redeemed) = reply else {
        return Err(Failure::unexpected(reply));
    };
    let mut value = serde_json::to_value(&redeemed).unwrap_or_default();
    value["decision_id"] = serde_json::json!(redeemed.decision_id.to_string());
    Ok(value)
}

/// A path parameter, or the failure that says it could not be read.
type PathParam = Result<Path<String>, axum::extract::rejection::PathRejection>;

fn path_param(p: PathParam) -> Result<String, Failure> {
    p.map(|Path(v)| v)
        .map_err(|e| Failure::bad_json(format!("bad path: {e}")))
}

pub(super) async fn profile(edge: State<Arc<Edge>>, key: PathParam) -> Response {
    let key = match path_param(key) {
        Ok(key) => key,
        Err(failure) => return failure.into_response(),
    };
    answer(
        execute(&edge, |shared, _| Ok(cmd::profile::apply(shared, &key)))
            .await
            .and_then(|reply| match reply {
                Reply::Profile(Some(profile)) => {
                    Ok(serde_json::to_value(&*profile).unwrap_or_default())
                }
                Reply::Profile(None) => Err(Failure::protocol(
                    ErrorCode::UnknownCustomer as u16,
                    format!("no customer has the key `{key}`"),
                )),
                other => Err(Failure::unexpected(other)),
            }),
    )
}

/// `GET /v1/profiles/{key}/export`: everything held on the customer (EXPORT).
pub(super) async fn export(edge: State<Arc<Edge>>, key: PathParam) -> Response {
    let key = match path_param(key) {
        Ok(key) => key,
        Err(failure) => return failure.into_response(),
    };
    match execute(&edge, |shared, _| Ok(cmd::export::apply(shared, &key))).await {
        // The command wrote the document as JSON already: sent as it is, not re-read.
        Ok(Reply::Exported { json }) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response(),
        Ok(other) => Failure::unexpected(other).into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// `DELETE /v1/profiles/{key}`: FORGET the customer the key belongs to.
pub(super) async fn forget(edge: State<Arc<Edge>>, key: PathParam) -> Response {
    let key = match path_param(key) {
        Ok(key) => key,
        Err(failure) => return failure.into_response(),
    };
    answer(
        execute(&edge, |shared, receipt| {
            Ok(cmd::forget::apply(shared, &key, receipt, "(HTTP)"))
        })
        .await
        .and_then(|reply| match reply {
            // The id is a log sequence: a string, as decision ids are (past 2^53).
            Reply::Forgotten { erasure_id, keys } => Ok(serde_json::json!({
                "erasure_id": erasure_id.to_string(),
                "keys": keys,
            })),
            other => Err(Failure::unexpected(other)),
        }),
    )
}

pub(super) async fn segment_count(edge: State<Arc<Edge>>, name: PathParam) -> Response {
    match path_param(name) {
        Ok(name) => answer(count(&edge, &name).await),
        Err(failure) => failure.into_response(),
    }
}

async fn count(edge: &Edge, query: &str) -> Result<serde_json::Value, Failure> {
    match execute(edge, |shared, _| Ok(cmd::segment::count(shared, query))).await? {
        Reply::Count(n) => Ok(serde_json::json!({ "query": query, "count": n })),
        other => Err(Failure::unexpected(other)),
    }
}

pub(super) async fn segment_members(
    edge: State<Arc<Edge>>,
    name: PathParam,
    page: Result<Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let page = match page {
        Ok(Query(page)) => page,
        Err(e) => return Failure::bad_json(format!("bad query string: {e}")).into_response(),
    };
    let name = match path_param(name) {
        Ok(name) => name,
        Err(failure) => return failure.into_response(),
    };
    answer(members(&edge, &name, &page).await)
}

async fn members(
    edge: &Edge,
    query: &str,
    page: &PageParams,
) -> Result<serde_json::Value, Failure> {
    let reply = execute(edge, |shared, _| {
        Ok(cmd::segment::members(
            shared,
            query,
            page.cursor,
            page.limit,
        ))
    })
    .await?;
    let Reply::Members {
        members,
        next_cursor,
    } = reply
    else {
        return Err(Failure::unexpected(reply));
    };
    let members: Vec<serde_json::Value> = members
        .into_iter()
        .map(|(id, key)| serde_json::json!({ "customer": id, "key": key }))
        .collect();
    Ok(serde_json::json!({ "query": query, "members": members, "next_cursor": next_cursor }))
}

pub(super) async fn segment_query(
    edge: State<Arc<Edge>>,
    headers: HeaderMap,
    raw: Body,
) -> Response {
    let query: QueryBody = match body(&edge, &headers, raw).await {
        Ok(query) => query,
        Err(failure) => return failure.into_response(),
    };
    answer(match &query.page {
        None => count(&edge, &query.query).await,
        Some(page) => members(&edge, &query.query, page).await,
    })
}

pub(super) async fn stats(
    edge: State<Arc<Edge>>,
    params: Result<Query<StatsParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(params)) => params,
        Err(e) => return Failure::bad_json(format!("bad query string: {e}")).into_response(),
    };
    answer(
        execute(&edge, |shared, _| {
            Ok(cmd::stats::apply(
                shared,
                params.offers,
                params.drift,
                params.triggers,
                params.experiments,
            ))
        })
        .await
        .and_then(|reply| match reply {
            Reply::Stats(stats) => Ok(serde_json::to_value(&stats).unwrap_or_default()),
            other => Err(Failure::unexpected(other)),
        }),
    )
}
