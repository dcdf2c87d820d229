//! The omnia wire protocol, shared by the server and the client.
//!
//! Everything about frames and messages on the wire lives here: [`frame`] finds
//! frames in a byte stream, [`codec`] names the primitive types (omnia's one byte
//! codec, [`crate::codec`], shared with the log and snapshots; so is the INGEST event
//! layout, [`crate::codec::events`]),
//! [`message`] turns frame bodies into typed requests and responses and back, and
//! [`ErrorCode`] is the error table, and [`json`] bounds the JSON bodies clients send
//! before anything parses them. Nothing here knows about the engine or sockets; the
//! server joins them. The specification for client authors is `docs/protocol.md`.
//!
//! In short: little-endian; a frame is `u32 length` (of what follows) then an 8-byte
//! header `u8 version, u8 opcode, u16 flags, u32 request_id` then the body. Responses
//! echo the request id, carry `opcode | 0x80`, or `0xFF` for an error, and come back in
//! the order the requests were sent.

pub mod codec;
mod error;
pub mod frame;
pub mod json;
pub mod message;

pub use crate::codec::events::{EventRef, IngestBatch, IngestWriter, Layout};
pub use error::ErrorCode;
pub use frame::{Frame, FrameError, HEADER_LEN};
pub use message::{Request, Response};

/// The newest protocol version this build speaks. Version 2 differs from version 1
/// only in INGEST, whose events start with a message id (event layout 2,
/// [`crate::codec::events`]).
pub const PROTOCOL_VERSION: u8 = 2;

/// The oldest protocol version this build still speaks: a server answers version 1
/// clients in version 1, and the client talks version 1 to a server that knows no
/// newer one.
pub const MIN_PROTOCOL_VERSION: u8 = 1;

/// Default largest frame, header included, in bytes.
pub const DEFAULT_MAX_FRAME: u32 = 8 * 1024 * 1024;

/// Operation codes. A response carries `opcode | RESPONSE_BIT`; an error carries
/// [`opcode::ERROR`].
pub mod opcode {
    pub const HELLO: u8 = 0x01;
    pub const PING: u8 = 0x02;
    pub const AUTH: u8 = 0x03;
    pub const INGEST: u8 = 0x10;
    pub const INGEST_JSON: u8 = 0x11;
    pub const PROFILE: u8 = 0x20;
    pub const SEGMENT_COUNT: u8 = 0x21;
    pub const SEGMENT_MEMBERS: u8 = 0x22;
    pub const SEGMENT_CONTAINS: u8 = 0x23;
    pub const STATS: u8 = 0x30;
    pub const DECIDE: u8 = 0x40;
    pub const FEEDBACK: u8 = 0x41;
    pub const REDEEM: u8 = 0x42;
    pub const RELOAD: u8 = 0x50;
    pub const FORGET: u8 = 0x51;
    pub const FORGET_STATUS: u8 = 0x52;
    pub const EXPORT: u8 = 0x53;
    pub const SUBSCRIBE: u8 = 0x60;
    pub const ACK: u8 = 0x61;
    /// Pushed by the server on a streaming connection (as `CHANGES | RESPONSE_BIT`);
    /// never sent by a client.
    pub const CHANGES: u8 = 0x62;
    pub const RESPONSE_BIT: u8 = 0x80;
    pub const ERROR: u8 = 0xFF;

    /// The name of an operation, for logs and metrics.
    pub fn name(op: u8) -> &'static str {
        match op & !RESPONSE_BIT {
            HELLO => "hello",
            PING => "ping",
            AUTH => "auth",
            INGEST => "ingest",
            INGEST_JSON => "ingest_json",
            PROFILE => "profile",
            SEGMENT_COUNT => "segment_count",
            SEGMENT_MEMBERS => "segment_members",
            SEGMENT_CONTAINS => "segment_contains",
            STATS => "stats",
            DECIDE => "decide",
            FEEDBACK => "feedback",
            REDEEM => "redeem",
            RELOAD => "reload",
            FORGET => "forget",
            FORGET_STATUS => "forget_status",
            EXPORT => "export",
            SUBSCRIBE => "subscribe",
            ACK => "ack",
            CHANGES => "changes",
            _ if op == ERROR => "error",
            _ => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventView, RawEvent};

    #[test]
    /// INGEST of protocol version 2 is event layout 2, of version 1 layout 1: what
    /// `IngestWriter` writes is what `Request::encode` makes, and both read back.
    fn an_ingest_body_is_the_event_layout_of_its_version() {
        let mut events = vec![
            RawEvent::new("purchase", "store", 1_700_000_000_000)
                .key("user:1")
                .key("card:9")
                .prop("amount", 12.5)
                .attr("vip", true),
            RawEvent::new("page_view", "web", 5)
                .key("anon:x")
                .prop("url", "/"),
        ];
        events[0].message_id = Some("m-1".into());
        let mut w = IngestWriter::with_capacity(16);
        for e in &events {
            let id = e.message_id.as_deref().unwrap_or("");
            w.event_with_id(id, &e.event, &e.channel, e.timestamp_ms, e.keys.len() as u8);
            e.keys.iter().for_each(|k| w.key(k));
            w.properties(e.properties.len() as u8);
            e.properties
                .iter()
                .for_each(|(n, v)| w.property(n, v.as_ref()));
            w.attributes(e.attributes.len() as u8);
            e.attributes
                .iter()
                .for_each(|(n, v)| w.attribute(n, v.as_ref()));
        }
        assert_eq!(w.len(), 2);
        let body = w.finish();
        let request = Request::Ingest {
            events: events.clone(),
        };
        assert_eq!(body, request.encode().unwrap());
        let batch = IngestBatch::decode(&body, Layout::V2).unwrap();
        assert_eq!(
            batch.iter().map(|e| e.to_owned()).collect::<Vec<_>>(),
            events
        );
        // Each event's logged bytes are layout 1, the message id left out.
        let first = batch.iter().next().unwrap();
        let logged = [&1u32.to_le_bytes()[..], first.encoded().unwrap()].concat();
        let v1 = IngestBatch::decode(&logged, Layout::V1).unwrap();
        assert_eq!(
            v1.iter().next().unwrap().to_owned(),
            RawEvent {
                message_id: None,
                ..events[0].clone()
            }
        );
        // Version 1 cannot carry the id: the encoder says so rather than drop it.
        let err = request.encode_in(1).unwrap_err();
        assert!(err.contains("protocol version 1 cannot carry"), "{err}");
        events[0].message_id = None;
        let body = Request::Ingest {
            events: events.clone(),
        }
        .encode_in(1)
        .unwrap();
        let batch = IngestBatch::decode(&body, Layout::V1).unwrap();
        assert_eq!(
            batch.iter().map(|e| e.to_owned()).collect::<Vec<_>>(),
            events
        );
    }

    /// A batch up to `KEPT_EVENTS` events long keeps what validation read; a longer one
    /// reads its body again: either way the events come out as they were written, in
    /// order, and an empty batch yields nothing.
    #[test]
    fn kept_and_reread_batches_yield_the_same_events() {
        use crate::codec::events::KEPT_EVENTS;
        for n in [0, 1, 3, KEPT_EVENTS, KEPT_EVENTS + 1] {
            let events: Vec<RawEvent> = (0..n)
                .map(|i| {
                    RawEvent::new("page_view", "web", 1_700_000_000_000 + i as i64)
                        .key(&format!("anon:{i}"))
                        .prop("path", format!("/p/{i}").as_str())
                })
                .collect();
            let body = Request::Ingest {
                events: events.clone(),
            }
            .encode()
            .unwrap();
            let batch = IngestBatch::decode(&body, Layout::V2).unwrap();
            assert_eq!(batch.len(), n as usize);
            assert_eq!(batch.is_empty(), n == 0);
            let read: Vec<RawEvent> = batch.iter().map(|e| e.to_owned()).collect();
            assert!(read == events, "{n} events");
            // Iterating twice reads the same again.
            assert_eq!(batch.iter().count(), n as usize);
        }
    }
}
