//! EXPORT: everything omnia holds on the customer a key belongs to, as one JSON
//! document (`model::export`, documented field by field in docs/privacy.md).

use crate::protocol::{ErrorCode, Response};
use crate::server::Shared;

pub fn apply(shared: &Shared, key: &str) -> Response {
    match shared.node().export(key) {
        Some(export) => match serde_json::to_string(&export) {
            Ok(json) => Response::Exported { json },
            Err(e) => Response::error(
                ErrorCode::NotImplemented,
                format!("the export could not be written as JSON: {e}; this is a bug in omnia"),
            ),
        },
        None => Response::error(
            ErrorCode::UnknownCustomer,
            format!("no customer has the key `{key}`: nothing to export"),
        ),
    }
}
