//! FORGET: erase the customer a key belongs to, everything of it at once (see
//! `engine::forget` and `Node::forget_with`), and suppress its keys. The answer waits
//! until the FORGET record is durable, as a change's does.

use tracing::info;

use crate::engine::{ForgetError, Receipt};
use crate::protocol::{ErrorCode, Response};
use crate::server::Shared;

pub fn apply(shared: &Shared, key: &str, receipt: &mut Receipt, by: &str) -> Response {
    match shared.node().forget_with(key, receipt) {
        Ok(forgotten) => {
            // Who asked and the erasure's id; never the key.
            info!(principal = %by, erasure = forgotten.sequence, keys = forgotten.keys.len(), "FORGET: a customer was forgotten");
            Response::Forgotten {
                erasure_id: forgotten.sequence,
                keys: forgotten.keys.len().min(u16::MAX as usize) as u16,
            }
        }
        Err(e @ ForgetError::Unknown { .. }) => {
            Response::error(ErrorCode::UnknownCustomer, e.to_string())
        }
        Err(e @ ForgetError::StorageFailed { .. }) => {
            Response::error(ErrorCode::StorageFailed, e.to_string())
        }
    }
}
