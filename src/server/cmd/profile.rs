//! PROFILE: everything the engine knows about the customer a key belongs to.

use crate::protocol::Response;
use crate::server::Shared;

pub fn apply(shared: &Shared, key: &str) -> Response {
    Response::Profile(shared.node().engine().profile(key).map(Box::new))
}
