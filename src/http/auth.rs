//! Credentials on the HTTP edge: every request but the health probes names its
//! principal, checked before its body is read.
//!
//! The credential is the `Authorization` header: HTTP Basic with the token as the user
//! name and an empty password (what Segment's and RudderStack's SDKs send with their
//! write key), or `Bearer <token>`. Which role a path needs is [`role_of`]; the check
//! itself is the binary server's (`server::auth`), throttle and argon2 off the request
//! threads included. A server with no credentials file takes every request.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Edge, Failure};
use crate::protocol::ErrorCode;
use crate::security::Role;
use crate::server::auth;

/// The client's address, put on each request by the connection loop.
#[derive(Debug, Clone, Copy)]
pub(super) struct Peer(pub IpAddr);

/// A Segment call with no `Authorization` header on a server with credentials: its
/// handler checks the body's `writeKey` once the body is read (a browser's
/// `navigator.sendBeacon` cannot set headers, so analytics.js puts the key there).
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyKey {
    pub peer: Option<IpAddr>,
}

/// The role a request needs; `None` for the health probes and paths that do not exist.
pub fn role_of(method: &axum::http::Method, path: &str) -> Option<Role> {
    let profile = path.starts_with("/v1/profiles/");
    if profile && (method == axum::http::Method::DELETE || path.ends_with("/export")) {
        return Some(Role::Admin);
    }
    match path {
        "/v1/batch" | "/v1/track" | "/v1/identify" | "/v1/page" | "/v1/screen" | "/v1/alias"
        | "/v1/group" => Some(Role::Ingest),
        "/v1/decide" | "/v1/feedback" => Some(Role::Decide),
        "/v1/stats" => Some(Role::Read),
        p if p.starts_with("/v1/profiles/") || p.starts_with("/v1/coupons/") => Some(Role::Decide),
        p if p.starts_with("/v1/segments/") => Some(Role::Read),
        _ => None,
    }
}

/// The token in an `Authorization` header: Basic's user name, or Bearer's token.
fn credential(value: &HeaderValue) -> Result<String, &'static str> {
    let text = value
        .to_str()
        .map_err(|_| "the Authorization header is not ASCII")?;
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(rest.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = <base64ct::Base64 as base64ct::Encoding>::decode_vec(rest.trim())
            .map_err(|_| "the Basic credentials are not base64")?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| "the Basic credentials are not UTF-8")?;
        // `user:password`; the token is the user name, the password empty.
        let user = decoded.split_once(':').map_or(decoded.as_str(), |(u, _)| u);
        return Ok(user.to_string());
    }
    Err("the Authorization scheme is neither Basic (the write key as user name) nor Bearer")
}

/// The middleware: refuses a request whose credential is missing, wrong or lacks the
/// path's role (401 or 403 with a JSON body), before any handler reads its body.
pub(super) async fn guard(
    State(edge): State<Arc<Edge>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(role) = role_of(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    // Until recovery is done there is nothing to check against; the handler says so.
    let Ok(shared) = edge.shared() else {
        return next.run(request).await;
    };
    let what = format!("{} {}", request.method(), request.uri().path());
    let peer = request.extensions().get::<Peer>().map(|p| p.0);
    if role == Role::Ingest
        && shared.authenticator().is_some()
        && !request.headers().contains_key(header::AUTHORIZATION)
    {
        request.extensions_mut().insert(BodyKey { peer });
        return next.run(request).await;
    }
    match check(shared, request.headers(), peer, role, &what).await {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal,
    }
}

/// Whether the request's `Authorization` names a principal with `role`; on a server
/// without credentials, yes. The refusal is the 401 or 403 to answer.
pub(crate) async fn check(
    shared: &Arc<crate::server::Shared>,
    headers: &axum::http::HeaderMap,
    peer: Option<IpAddr>,
    role: Role,
    what: &str,
) -> Result<(), Response> {
    if shared.authenticator().is_none() {
        return Ok(());
    }
    let presented = match headers.get(header::AUTHORIZATION) {
        None => Err("no Authorization header: send the token as the Basic user name (an SDK's write key) or as a Bearer token".to_string()),
        Some(value) => credential(value).map_err(str::to_string),
    };
    check_presented(shared, presented, peer, role, what).await
}

/// The body's `writeKey` as the credential of a Segment call that came without an
/// `Authorization` header ([`BodyKey`]).
pub(super) async fn check_body_key(
    edge: &Edge,
    key: BodyKey,
    json: &[u8],
    what: &str,
) -> Result<(), Response> {
    let Ok(shared) = edge.shared() else {
        return Ok(());
    };
    #[derive(serde::Deserialize)]
    struct Keyed {
        #[serde(rename = "writeKey")]
        write_key: Option<String>,
    }
    let presented = serde_json::from_slice::<Keyed>(json)
        .ok()
        .and_then(|k| k.write_key)
        .ok_or_else(|| {
            "no Authorization header and no `writeKey` in the body: send the token as the write key"
                .to_string()
        });
    check_presented(shared, presented, key.peer, Role::Ingest, what).await
}

async fn check_presented(
    shared: &Arc<crate::server::Shared>,
    presented: Result<String, String>,
    peer: Option<IpAddr>,
    role: Role,
    what: &str,
) -> Result<(), Response> {
    let mut session = match presented {
        Ok(token) => match auth::authenticate(shared, peer, &token).await {
            Ok(session) => Some(session),
            Err((_, message)) => return Err(unauthenticated(format!("{what}: {message}"))),
        },
        Err(message) => {
            return Err(unauthenticated(format!(
                "{what} needs a credential with the `{}` role: {message}",
                role.name()
            )))
        }
    };
    match auth::authorize(shared, &mut session, Some(role), what) {
        Ok(()) => Ok(()),
        Err((ErrorCode::Forbidden, message)) => Err(Failure {
            status: StatusCode::FORBIDDEN,
            code: ErrorCode::Forbidden.name(),
            message,
        }
        .into_response()),
        Err((_, message)) => Err(unauthenticated(message)),
    }
}

fn unauthenticated(message: String) -> Response {
    let mut response = Failure {
        status: StatusCode::UNAUTHORIZED,
        code: ErrorCode::Unauthenticated.name(),
        message,
    }
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"omnia\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_bearer_carry_the_token() {
        let basic = HeaderValue::from_static("Basic b21fMTIzNDU2NzhfYWJjOg=="); // om_12345678_abc:
        assert_eq!(credential(&basic).unwrap(), "om_12345678_abc");
        let bearer = HeaderValue::from_static("Bearer om_12345678_abc");
        assert_eq!(credential(&bearer).unwrap(), "om_12345678_abc");
        assert!(credential(&HeaderValue::from_static("Digest x")).is_err());
        assert!(credential(&HeaderValue::from_static("Basic !!")).is_err());
        let get = axum::http::Method::GET;
        assert_eq!(role_of(&get, "/v1/segments/vip/count"), Some(Role::Read));
        assert_eq!(role_of(&get, "/v1/profiles/user:1"), Some(Role::Decide));
        assert_eq!(
            role_of(&axum::http::Method::DELETE, "/v1/profiles/user:1"),
            Some(Role::Admin)
        );
        assert_eq!(role_of(&get, "/healthz"), None);
    }
}
