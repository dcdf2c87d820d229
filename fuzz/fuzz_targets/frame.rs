//! Untrusted bytes from a socket: framing, as a connection reads it (in pieces, into a
//! buffer that grows with what arrived), then every request and response decoder. A
//! decoder may refuse input; it must never panic, hang or allocate without bound, and a
//! declared frame length must never be an allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omnia::protocol::{Frame, Request, Response};
use omnia::server::connection::{ReadBuffer, READ_BASE};

const MAX_FRAME: u32 = 1 << 20;

fn check(frame: Frame) {
    // The body is read in the frame's version, as the server reads it.
    let version = frame.version;
    if let Ok(Some(request)) = Request::decode_in(version, frame.opcode, &frame.body) {
        // What decodes must encode back to the same body (INGEST_JSON carries it raw).
        if let Ok(body) = request.encode_in(version) {
            assert_eq!(
                Request::decode_in(version, frame.opcode, &body).ok().flatten(),
                Some(request)
            );
        }
    }
    let _ = Response::decode(frame.opcode, &frame.body);
}

fuzz_target!(|data: &[u8]| {
    // The first byte sets the size of the pieces the socket delivers.
    let Some((&piece, mut rest)) = data.split_first() else {
        return;
    };
    let piece = piece as usize * 61 + 1;
    let mut read = ReadBuffer::default();
    let mut received = 0usize;
    loop {
        loop {
            match Frame::parse(read.bytes(), MAX_FRAME) {
                Ok(Some(frame)) => check(frame),
                Ok(None) => break,
                // Framing is lost: the connection would be closed.
                Err(_) => return,
            }
        }
        if rest.is_empty() {
            return;
        }
        read.shrink_if_empty();
        if read.needs_growth() {
            read.grow();
        }
        let room = read.bytes().capacity() - read.bytes().len();
        assert!(room > 0, "no room for the next read");
        let n = room.min(piece).min(rest.len());
        read.bytes().extend_from_slice(&rest[..n]);
        received += n;
        rest = &rest[n..];
        // Memory follows the bytes that arrived, whatever a header declared.
        assert!(
            read.allocated() <= READ_BASE.max(2 * received),
            "{} bytes allocated after {received} received",
            read.allocated()
        );
    }
});
