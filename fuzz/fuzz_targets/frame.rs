//! Untrusted bytes from a socket: framing, then every request and response decoder.
//! A decoder may refuse input; it must never panic, hang or allocate without bound.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use omnia::protocol::{Frame, Request, Response};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = Frame::parse(&mut buf, 1 << 20) {
        if let Ok(Some(request)) = Request::decode(frame.opcode, &frame.body) {
            // What decodes must encode back to the same body (INGEST_JSON carries it raw).
            if let Ok(body) = request.encode() {
                assert_eq!(Request::decode(frame.opcode, &body).ok().flatten(), Some(request));
            }
        }
        let _ = Response::decode(frame.opcode, &frame.body);
    }
});
