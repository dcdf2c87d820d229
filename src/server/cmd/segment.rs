//! SEGMENT_COUNT, SEGMENT_MEMBERS and SEGMENT_CONTAINS: segment queries on bitmaps.

use crate::engine::QueryError;
use crate::protocol::{ErrorCode, Response};
use crate::server::Shared;

/// Most members one page may hold, whatever the client asks for.
pub const MAX_PAGE: u32 = 10_000;

fn error(e: QueryError) -> Response {
    let code = match e {
        QueryError::UnknownSegment { .. } => ErrorCode::UnknownSegment,
        QueryError::Syntax { .. } => ErrorCode::BadQuery,
    };
    Response::error(code, e.to_string())
}

pub fn count(shared: &Shared, query: &str) -> Response {
    match shared.node().engine().query(query) {
        Ok(q) => Response::Count(shared.node().engine().count(&q)),
        Err(e) => error(e),
    }
}

pub fn members(shared: &Shared, query: &str, cursor: u32, limit: u32) -> Response {
    match shared.node().engine().query(query) {
        Ok(q) => {
            let page =
                shared
                    .node()
                    .engine()
                    .members(&q, cursor, limit.clamp(1, MAX_PAGE) as usize);
            Response::Members {
                members: page.members,
                next_cursor: page.next_cursor,
            }
        }
        Err(e) => error(e),
    }
}

pub fn contains(shared: &Shared, segment: &str, key: &str) -> Response {
    match shared.node().engine().contains(segment, key) {
        Ok(member) => Response::Contains(member),
        Err(e) => error(e),
    }
}
