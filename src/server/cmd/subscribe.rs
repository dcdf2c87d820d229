//! SUBSCRIBE and ACK: a connection that streams the change stream's changes.
//!
//! After a SUBSCRIBE is accepted the connection belongs to the subscription: the
//! server pushes CHANGES frames (with the SUBSCRIBE's request id) and reads only ACK
//! and PING. Changes come from the stream's files through a `Reader`, a batch at a
//! time, and a batch is read only once the previous one was written to the socket: a
//! subscriber that stops reading stops the reader, so it falls behind in the files and
//! holds no more server memory than one batch (and the socket's send buffer, fixed at
//! `SEND_BUFFER`); a write that
//! waits longer than the idle timeout closes the connection, and a named subscription
//! resumes after its last ACK on the next one.
//!
//! Keys are looked up when a change is sent, by customer id and slot generation: the
//! files hold no keys (a forgotten customer's keys leave the disk), and a change of a
//! customer forgotten or merged away since is sent with none.
//!
//! Names: one connection streams a named subscription at a time. A SUBSCRIBE with a
//! name in use takes it over: the connection that held it gets an ERROR frame
//! (SUBSCRIPTION_STATE, naming the new connection's address) and ends. A subscriber
//! that reconnects after a network failure must not wait until the server notices the
//! old connection is dead.
//!
//! Order: changes are pushed in position order, which within a customer is the order
//! they happened in (a customer's changes are recorded under its shard's lock).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::model::StreamedChange;
use crate::protocol::message::StreamFrom;
use crate::protocol::{opcode, ErrorCode, Frame, Request, Response};
use crate::server::connection::{Connection, ConnectionError};
use crate::server::Shared;
use crate::store::stream::{NameClaim, Reader, Stream, StreamError};

/// Changes read and pushed at a time.
const BATCH: usize = 512;
/// With no change to push, a frame that only moves `through` on is sent at most this
/// often (so a filtering subscriber can acknowledge, and knows the server is there).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The kernel's send buffer of a streaming connection, fixed: left to autotuning it
/// grows to megabytes per subscriber on a fast link, which a subscriber that stops
/// reading would then hold in the kernel. 256 KiB sends some 4,000 changes ahead of
/// the subscriber, enough to keep a link of 50 ms round trip busy at 80,000 a second.
const SEND_BUFFER: usize = 256 << 10;
/// Longest subscription name.
const MAX_NAME: usize = 64;

/// What a SUBSCRIBE asked for.
pub struct Subscription {
    pub name: String,
    pub from: StreamFrom,
    pub segments: Vec<String>,
}

/// Where a streaming connection's frames go: its version and SUBSCRIBE's request id.
struct Reply {
    version: u8,
    request_id: u32,
}

impl Reply {
    fn frame(&self, response: &Response, request_op: u8) -> Frame {
        Frame::in_version(
            self.version,
            response.opcode(request_op),
            self.request_id,
            response.encode(),
        )
    }
}

/// Serves a SUBSCRIBE: answers it, then streams until the client closes, the server
/// shuts down, or the subscription fails (which is said in an ERROR frame).
pub async fn stream(
    shared: &Arc<Shared>,
    connection: &mut Connection,
    shutdown: &mut crate::server::shutdown::Shutdown,
    version: u8,
    request_id: u32,
    subscription: Subscription,
    peer: &str,
) -> Result<(), ConnectionError> {
    let reply = Reply {
        version,
        request_id,
    };
    let started = match start(shared, &subscription, peer) {
        Ok(started) => started,
        Err((code, message)) => {
            let error = Response::error(code, message);
            connection
                .write_frame(&reply.frame(&error, opcode::SUBSCRIBE))
                .await?;
            connection.flush().await?;
            return Ok(());
        }
    };
    let Started {
        stream,
        mut reader,
        segments,
        mut claim,
        from,
    } = started;
    info!(%peer, name = %subscription.name, from, "SUBSCRIBE");
    if let Err(e) = connection.set_send_buffer(SEND_BUFFER) {
        debug!(%peer, error = %e, "cannot size a streaming connection's send buffer");
    }
    let subscribed = Response::Subscribed {
        from,
        earliest: stream.earliest(),
        position: stream.archived(),
    };
    connection
        .write_frame(&reply.frame(&subscribed, opcode::SUBSCRIBE))
        .await?;
    connection.flush().await?;
    let mut archived = stream.watch();
    let mut sent_through = from.saturating_sub(1);
    let follower = stream.follow(&subscription.name, sent_through);
    let mut last_push = Instant::now();
    // Whether another connection can still take the name over (false once it cannot).
    let mut claimed = claim.is_some();
    loop {
        if let Some(by) = claim.as_mut().and_then(|c| c.taken.try_recv().ok()) {
            return taken_over(connection, &reply, &subscription.name, &by, peer).await;
        }
        let batch = match reader.read(BATCH) {
            Ok(batch) => batch,
            Err(e) => {
                warn!(%peer, name = %subscription.name, error = %e, "a subscription ends");
                let error = Response::error(stream_error_code(&e), e.to_string());
                connection
                    .write_frame(&reply.frame(&error, opcode::SUBSCRIBE))
                    .await?;
                connection.flush().await?;
                return Ok(());
            }
        };
        let full = batch.len() == BATCH;
        let through = reader.next_position().saturating_sub(1);
        let node = shared.node();
        let changes: Vec<StreamedChange> = batch
            .into_iter()
            .filter(|(_, c)| segments.as_ref().map_or(true, |s| s.contains(&c.segment)))
            .map(|(position, c)| StreamedChange {
                position,
                time: c.time,
                customer: c.customer,
                keys: node.engine().keys_of(c.customer, c.generation),
                segment: c.segment,
                kind: c.kind,
                cause: c.cause,
                event: c.event,
            })
            .collect();
        drop(node);
        let moved = through > sent_through;
        if !changes.is_empty() || (moved && last_push.elapsed() >= HEARTBEAT) {
            let pushed = Response::Changes { through, changes };
            connection
                .write_frame(&reply.frame(&pushed, opcode::CHANGES))
                .await?;
            connection.flush().await?;
            sent_through = through;
            follower.sent(through);
            last_push = Instant::now();
        }
        if full {
            tokio::task::yield_now().await;
            continue;
        }
        // Nothing more in the files now: wait for more, or for the client.
        let frame = match connection.buffered_frame() {
            Ok(Some(frame)) => Some(frame),
            Err(e) => {
                debug!(%peer, error = %e, "a streaming connection's framing is lost");
                return Ok(());
            }
            Ok(None) => {
                tokio::select! {
                    _ = archived.changed() => None,
                    read = connection.read_frame() => match read? {
                        Some(frame) => Some(frame),
                        None => return Ok(()),
                    },
                    _ = tokio::time::sleep(HEARTBEAT) => None,
                    _ = shutdown.recv() => return Ok(()),
                    by = async {
                        match claim.as_mut() {
                            Some(c) => (&mut c.taken).await.ok(),
                            None => std::future::pending().await,
                        }
                    }, if claimed => match by {
                        Some(by) => return taken_over(connection, &reply, &subscription.name, &by, peer).await,
                        None => {
                            claimed = false;
                            None
                        }
                    },
                }
            }
        };
        if let Some(frame) = frame {
            if let Some(answer) = handle(&stream, &subscription.name, &frame, sent_through) {
                let out = Frame::in_version(
                    version,
                    answer.opcode(frame.opcode),
                    frame.request_id,
                    answer.encode(),
                );
                connection.write_frame(&out).await?;
                connection.flush().await?;
            }
        }
    }
}

/// Ends a connection whose subscription name another connection (from `by`) took over.
async fn taken_over(
    connection: &mut Connection,
    reply: &Reply,
    name: &str,
    by: &str,
    peer: &str,
) -> Result<(), ConnectionError> {
    info!(%peer, %name, %by, "a subscription was taken over by another connection");
    let error = Response::error(
        ErrorCode::SubscriptionState,
        format!("subscription `{name}` was taken over by another connection ({by}); this one ends"),
    );
    connection
        .write_frame(&reply.frame(&error, opcode::SUBSCRIBE))
        .await?;
    connection.flush().await?;
    Ok(())
}

/// A request on a streaming connection: ACK (no answer unless refused), PING, or a
/// refusal of anything else.
fn handle(stream: &Stream, name: &str, frame: &Frame, sent_through: u64) -> Option<Response> {
    match Request::decode_in(frame.version, frame.opcode, &frame.body) {
        Ok(Some(Request::Ack { position })) if position > sent_through => Some(Response::error(
            ErrorCode::SubscriptionState,
            format!("ACK of position {position}, but this connection was sent positions up to {sent_through}; acknowledge a CHANGES frame's `through`"),
        )),
        Ok(Some(Request::Ack { position })) => {
            if name.is_empty() {
                return None;
            }
            match stream.ack(name, position) {
                Ok(()) => None,
                Err(e) => Some(Response::error(
                    ErrorCode::StorageFailed,
                    format!("the acknowledgement of subscription `{name}` could not be stored: {e}; it resumes from its previous one"),
                )),
            }
        }
        Ok(Some(Request::Ping)) => Some(Response::Pong),
        Ok(_) => Some(Response::error(
            ErrorCode::SubscriptionState,
            format!(
                "this connection streams changes (SUBSCRIBE) and takes only ACK and PING; send {} on another connection",
                opcode::name(frame.opcode).to_uppercase()
            ),
        )),
        Err(e) => Some(crate::server::Handler::decode_error(frame.opcode, e)),
    }
}

/// ACK on a connection that has not subscribed.
pub fn ack_outside() -> Response {
    Response::error(
        ErrorCode::SubscriptionState,
        "ACK on a connection that is not streaming changes: SUBSCRIBE first, on this connection",
    )
}

struct Started {
    stream: Arc<Stream>,
    reader: Reader,
    /// The segments to send; `None`: every one on the stream.
    segments: Option<HashSet<String>>,
    /// `None` for an unnamed subscription.
    claim: Option<NameClaim>,
    from: u64,
}

type Denied = (ErrorCode, String);

/// Checks a SUBSCRIBE and opens its reader.
fn start(shared: &Shared, s: &Subscription, peer: &str) -> Result<Started, Denied> {
    let Some(stream) = shared.stream.clone() else {
        return Err((
            ErrorCode::NotStreamed,
            "this server keeps no change stream (it runs without a data directory)".into(),
        ));
    };
    if !s.name.is_empty()
        && (s.name.len() > MAX_NAME
            || !s
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)))
    {
        return Err((
            ErrorCode::SubscriptionState,
            format!(
                "subscription name `{}` is not 1 to {MAX_NAME} letters, digits, `_`, `-` or `.`",
                s.name
            ),
        ));
    }
    let node = shared.node();
    let config = node.config();
    let streamed: Vec<&str> = config
        .segments
        .iter()
        .enumerate()
        .filter(|(i, _)| config.triggers.records(*i))
        .map(|(_, seg)| seg.name.as_str())
        .collect();
    if streamed.is_empty() {
        return Err((
            ErrorCode::NotStreamed,
            "no segment is on the change stream: list segments in `[triggers] stream` in the config (or `[\"*\"]` for all)".into(),
        ));
    }
    for name in &s.segments {
        if !config.segments.iter().any(|seg| &seg.name == name) {
            let all: Vec<&str> = config.segments.iter().map(|s| s.name.as_str()).collect();
            return Err((
                ErrorCode::UnknownSegment,
                format!(
                    "unknown segment `{name}`; the segments are: {}",
                    all.join(", ")
                ),
            ));
        }
        if !streamed.contains(&name.as_str()) {
            return Err((
                ErrorCode::NotStreamed,
                format!("segment `{name}` is not on the change stream; add it to `[triggers] stream` in the config (on the stream now: {})", streamed.join(", ")),
            ));
        }
    }
    let segments = (!s.segments.is_empty()).then(|| s.segments.iter().cloned().collect());
    // Claimed before the acknowledged position is read. The connection taken over may
    // still store an ACK after that (one it had read already): this one then resends
    // changes that one's client handled, which at-least-once delivery allows.
    let claim = (!s.name.is_empty()).then(|| stream.claim(&s.name, peer));
    let acked = (!s.name.is_empty())
        .then(|| stream.acked(&s.name))
        .flatten();
    let from = match (s.from, acked) {
        (StreamFrom::Position(p), _) => p.max(1),
        (_, Some(acked)) => acked + 1,
        (StreamFrom::Now, None) => stream.archived() + 1,
        (StreamFrom::Earliest, None) => stream.earliest(),
    };
    let reader = stream
        .reader(from)
        .map_err(|e| (stream_error_code(&e), e.to_string()))?;
    Ok(Started {
        stream,
        reader,
        segments,
        claim,
        from,
    })
}

fn stream_error_code(e: &StreamError) -> ErrorCode {
    match e {
        StreamError::BeyondRetention { .. } => ErrorCode::BeyondRetention,
        StreamError::Ahead { .. } => ErrorCode::SubscriptionState,
        StreamError::Io(_) | StreamError::Corrupt { .. } => ErrorCode::StorageFailed,
    }
}
