//! Authentication and authorization for both edges, binary and HTTP.
//!
//! With no credentials file the server serves everyone (and `omnia serve` then listens
//! on loopback only: docs/security.md). With one, every operation but HELLO, PING and
//! AUTH needs a credential whose principal has the operation's role ([`role_of`]): a
//! binary connection authenticates once, with AUTH after HELLO, and keeps a [`Session`];
//! an HTTP request brings its credential each time.
//!
//! Checking a secret the first time costs an argon2 verification (about 20 ms of CPU):
//! it runs on the blocking pool, one at a time ([`Shared::verifying`]), after the
//! client's address has waited out its failures ([`crate::security::Throttle`]), so
//! neither a guesser nor a flood of new connections can take the request threads.
//! Verified credentials are then checked in well under a microsecond.
//!
//! A session outlives a reload of the credentials file only as its secret does: at the
//! next request after a reload the session takes its principal's roles from the new
//! file, or ends with UNAUTHENTICATED if its secret was revoked.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::Shared;
use crate::protocol::{opcode, ErrorCode};
use crate::security::{AuthError, Authenticator, Principal, Role, Token};

/// The role an operation needs; `None` for those anyone may send.
pub fn role_of(op: u8) -> Option<Role> {
    match op {
        opcode::INGEST | opcode::INGEST_JSON => Some(Role::Ingest),
        opcode::DECIDE | opcode::FEEDBACK | opcode::REDEEM | opcode::PROFILE => Some(Role::Decide),
        opcode::SEGMENT_COUNT
        | opcode::SEGMENT_MEMBERS
        | opcode::SEGMENT_CONTAINS
        | opcode::STATS
        | opcode::SUBSCRIBE
        | opcode::ACK => Some(Role::Read),
        opcode::RELOAD | opcode::FORGET | opcode::FORGET_STATUS | opcode::EXPORT => {
            Some(Role::Admin)
        }
        _ => None,
    }
}

/// Who a connection authenticated as.
#[derive(Clone)]
pub struct Session {
    pub principal: Arc<Principal>,
    secret_id: String,
    /// The credentials it was checked against; a reload replaces them.
    under: Arc<Authenticator>,
}

/// Why a request was not allowed: the code and a message that says what to do.
pub type Denied = (ErrorCode, String);

/// Whether `session` may run an operation needing `role` (`None`: anyone may). Brings
/// the session up to date with a reloaded credentials file, or ends it.
pub fn authorize(
    shared: &Shared,
    session: &mut Option<Session>,
    role: Option<Role>,
    what: &str,
) -> Result<(), Denied> {
    let Some(role) = role else { return Ok(()) };
    let Some(current) = shared.authenticator() else {
        return Ok(());
    };
    let Some(held) = session.as_mut() else {
        return Err((
            ErrorCode::Unauthenticated,
            format!("{what} needs a credential with the `{}` role: this server requires one (AUTH with a token after HELLO)", role.name()),
        ));
    };
    if !Arc::ptr_eq(&held.under, &current) {
        match current.holder(&held.secret_id) {
            Some(principal) => {
                held.principal = principal;
                held.under = current;
            }
            None => {
                *session = None;
                return Err((
                    ErrorCode::Unauthenticated,
                    "the secret this connection authenticated with was revoked: authenticate again with a current one".into(),
                ));
            }
        }
    }
    if held.principal.roles.contains(role) {
        Ok(())
    } else {
        let has = held.principal.roles.names();
        Err((
            ErrorCode::Forbidden,
            format!(
                "{what} needs the `{}` role; principal `{}` has {}",
                role.name(),
                held.principal.name,
                if has.is_empty() {
                    "none".to_string()
                } else {
                    has.join(", ")
                }
            ),
        ))
    }
}

/// Checks a presented credential: at once when it was verified before, otherwise after
/// the address's turn and on the blocking pool. Failures and successes are logged with
/// the address, never with the secret.
pub async fn authenticate(
    shared: &Arc<Shared>,
    peer: Option<IpAddr>,
    presented: &str,
) -> Result<Session, Denied> {
    let Some(auth) = shared.authenticator() else {
        return Err((
            ErrorCode::NotImplemented,
            "this server has no credentials file: every client may do everything (see docs/security.md); AUTH is not needed".into(),
        ));
    };
    let outcome = if auth.is_known(presented) {
        auth.authenticate(presented)
    } else {
        if let Some(addr) = peer {
            let wait = shared.throttle.wait(addr, Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let _one = shared.verifying.acquire().await;
        let (check, presented) = (auth.clone(), presented.to_string());
        tokio::task::spawn_blocking(move || check.authenticate(&presented))
            .await
            .unwrap_or(Err(AuthError::Refused))
    };
    let addr = peer.map_or_else(|| "unknown".to_string(), |a| a.to_string());
    match outcome {
        Ok(principal) => {
            if let Some(addr) = peer {
                shared.throttle.succeeded(addr);
            }
            let secret_id = Token::parse(presented.trim())
                .map(|t| t.id)
                .unwrap_or_default();
            info!(principal = %principal.name, secret = %secret_id, %addr, "authenticated");
            Ok(Session {
                principal,
                secret_id,
                under: auth,
            })
        }
        Err(e) => {
            if let Some(addr) = peer {
                shared.throttle.failed(addr, Instant::now());
            }
            warn!(%addr, reason = %e, "authentication failed");
            Err((ErrorCode::Unauthenticated, e.to_string()))
        }
    }
}
