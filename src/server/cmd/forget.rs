//! FORGET: erase the customer a key belongs to, everything of it at once (see
//! `engine::forget` and `Node::forget_with`), and suppress its keys. The answer waits
//! until the FORGET record is durable, as a change's does.

use tracing::info;

use crate::engine::{ForgetError, Receipt};
use crate::protocol::{ErrorCode, Response};
use crate::server::Shared;
use crate::store::snapshot::ErasureStatus;

pub fn apply(shared: &Shared, key: &str, receipt: &mut Receipt, by: &str) -> Response {
    match shared.node().forget_with(key, receipt) {
        Ok(forgotten) => {
            if let (Some(erasures), true) = (&shared.erasures, forgotten.sequence > 0) {
                erasures.request(forgotten.sequence);
            }
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

/// FORGET_STATUS: whether an erasure from the data directory is done.
pub fn status(shared: &Shared, erasure_id: u64) -> Response {
    let Some(erasures) = &shared.erasures else {
        return Response::error(
            ErrorCode::NotImplemented,
            "this server keeps no data directory: a forgotten customer was only ever in memory",
        );
    };
    match erasures.status(erasure_id) {
        Ok(ErasureStatus::Pending) => Response::ErasureStatus {
            erased: false,
            erased_at_ms: 0,
        },
        Ok(ErasureStatus::Erased { at_ms }) => Response::ErasureStatus {
            erased: true,
            erased_at_ms: at_ms.unwrap_or(0),
        },
        Err(e) => Response::error(ErrorCode::StorageFailed, e.to_string()),
    }
}
