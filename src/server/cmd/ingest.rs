//! INGEST (and the second half of INGEST_JSON): apply a batch, acknowledge how many
//! were accepted, and report every rejected event by its index with a code and a
//! message. Nothing is dropped silently; an accepted event is in the engine before the
//! acknowledgement is written, and the receipt names the log records the
//! acknowledgement must wait for.

use std::sync::atomic::Ordering;

use crate::engine::{EventError, Receipt};
use crate::model::EventView;
use crate::protocol::message::Rejected;
use crate::protocol::{ErrorCode, Response};
use crate::server::Shared;

/// The protocol's code for an engine's event error.
pub fn code_of(e: &EventError) -> ErrorCode {
    match e {
        EventError::UnknownEventType { .. } => ErrorCode::UnknownEventType,
        EventError::UnknownChannel { .. } => ErrorCode::UnknownChannel,
        EventError::NoKeys { .. } | EventError::BadKey { .. } => ErrorCode::BadKey,
        EventError::UnknownProperty { .. } | EventError::PropertyType { .. } => {
            ErrorCode::BadProperty
        }
        EventError::UnknownAttribute { .. } | EventError::AttributeType { .. } => {
            ErrorCode::BadAttribute
        }
        EventError::BadTimestamp { .. } | EventError::TimestampInSeconds { .. } => {
            ErrorCode::BadTimestamp
        }
        EventError::ValueTooLong { .. }
        | EventError::TooLarge { .. }
        | EventError::TooMany { .. } => ErrorCode::EventTooLarge,
        EventError::FromTheFuture { .. } => ErrorCode::FutureTimestamp,
        EventError::StorageFailed { .. } => ErrorCode::StorageFailed,
        EventError::Full { .. } => ErrorCode::Capacity,
        EventError::Suppressed { .. } => ErrorCode::Suppressed,
    }
}

/// Applies events in order. Each item is an event (owned, or read in place from the
/// frame), or the rejection its conversion already produced (JSON events that did not
/// convert).
pub fn apply<E: EventView>(
    shared: &Shared,
    events: impl Iterator<Item = Result<E, (ErrorCode, String)>>,
    receipt: &mut Receipt,
) -> Response {
    let mut accepted = 0u32;
    let mut duplicates = 0u64;
    let mut rejected = Vec::new();
    let node = shared.node();
    let engine = node.engine();
    // A log that cannot store changes refuses the whole request before anything is
    // applied; one that fails in the middle refuses the events after it, one by one.
    if let Err(EventError::StorageFailed { reason }) = engine.writable() {
        return Response::error(ErrorCode::StorageFailed, reason);
    }
    for (index, event) in events.enumerate() {
        let outcome = event.and_then(|raw| {
            engine
                .ingest_with(&raw, receipt)
                .map_err(|e| (code_of(&e), e.to_string()))
        });
        match outcome {
            Ok(applied) if applied.duplicate => {
                duplicates += 1;
                rejected.push(Rejected {
                    index: index as u32,
                    code: ErrorCode::Duplicate as u16,
                    message: format!(
                        "event {index}: its message id was applied already (within engine.dedup_window); this copy was not applied again"
                    ),
                });
            }
            Ok(_) => accepted += 1,
            Err((code, message)) => rejected.push(Rejected {
                index: index as u32,
                code: code as u16,
                message,
            }),
        }
    }
    crate::server::metrics::events(
        accepted,
        duplicates,
        rejected
            .iter()
            .map(|r| r.code)
            .filter(|&c| c != ErrorCode::Duplicate as u16),
    );
    shared
        .stats
        .events_ingested
        .fetch_add(accepted as u64, Ordering::Relaxed);
    shared
        .stats
        .events_rejected
        .fetch_add(rejected.len() as u64 - duplicates, Ordering::Relaxed);
    shared
        .stats
        .events_duplicate
        .fetch_add(duplicates, Ordering::Relaxed);
    Response::Ingested { accepted, rejected }
}
