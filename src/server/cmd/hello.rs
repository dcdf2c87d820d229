//! HELLO: agree on a protocol version and tell the client the server's limits.

use crate::protocol::message::ServerHello;
use crate::protocol::{ErrorCode, Response, PROTOCOL_VERSION};
use crate::server::Shared;

pub fn apply(shared: &Shared, min_version: u16, max_version: u16, client: &str) -> Response {
    let ours = PROTOCOL_VERSION as u16;
    if !(min_version..=max_version).contains(&ours) {
        return Response::error(
            ErrorCode::UnsupportedVersion,
            format!("client `{client}` speaks versions {min_version} to {max_version}; this server speaks version {ours}"),
        );
    }
    tracing::debug!(client, "hello");
    Response::Hello(ServerHello {
        version: ours,
        max_frame: shared.limits.max_frame,
        max_in_flight: shared.limits.max_in_flight,
        config_version: shared.node().config().version,
        server: format!("omnia {}", env!("CARGO_PKG_VERSION")),
    })
}
