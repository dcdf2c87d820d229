//! HELLO: agree on a protocol version and tell the client the server's limits.
//!
//! The agreed version is the newest both sides speak. Every frame says its version, so
//! the server answers each frame in the version it came in and needs no memory of the
//! agreement; a client keeps to what was agreed.

use crate::protocol::message::ServerHello;
use crate::protocol::{ErrorCode, Response, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use crate::server::Shared;

pub fn apply(shared: &Shared, min_version: u16, max_version: u16, client: &str) -> Response {
    let (oldest, newest) = (MIN_PROTOCOL_VERSION as u16, PROTOCOL_VERSION as u16);
    let version = max_version.min(newest);
    if version < min_version.max(oldest) {
        return Response::error(
            ErrorCode::UnsupportedVersion,
            format!("client `{client}` speaks versions {min_version} to {max_version}; this server speaks versions {oldest} to {newest}"),
        );
    }
    tracing::debug!(client, "hello");
    Response::Hello(ServerHello {
        version,
        max_frame: shared.limits.max_frame,
        max_in_flight: shared.limits.max_in_flight,
        config_version: shared.node().config().version,
        server: format!("omnia {}", env!("CARGO_PKG_VERSION")),
    })
}
