//! Frames: finding whole frames in a byte stream, and writing them.
//!
//! ```text
//! u32 length        bytes that follow: header (8) + body; 8 <= length <= max frame
//! u8  version       1 or 2 (MIN_PROTOCOL_VERSION to PROTOCOL_VERSION)
//! u8  opcode
//! u16 flags         0 (reserved)
//! u32 request_id    echoed by the response
//! ... body          length - 8 bytes
//! ```
//!
//! As in mini-redis, an incomplete frame is a normal state, not an error:
//! [`Frame::parse`] returns `Ok(None)` until the whole frame is buffered. A length
//! beyond the limit is an error that breaks framing: the reader cannot know where the
//! next frame starts without reading megabytes it refused to buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the header after the length prefix.
pub const HEADER_LEN: usize = 8;

/// One frame: header fields and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub version: u8,
    pub opcode: u8,
    pub flags: u16,
    pub request_id: u32,
    pub body: Bytes,
}

/// Why the bytes are not a frame. Both break framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {length} bytes is larger than the limit of {max} bytes")]
    TooLarge {
        length: u32,
        max: u32,
        request_id: Option<u32>,
    },
    #[error("frame length {length} is shorter than the 8-byte header")]
    TooShort { length: u32 },
}

impl Frame {
    /// A frame in the newest protocol version.
    pub fn new(opcode: u8, request_id: u32, body: Bytes) -> Frame {
        Frame::in_version(super::PROTOCOL_VERSION, opcode, request_id, body)
    }

    /// A frame in protocol `version`: what a connection agreed on in HELLO.
    pub fn in_version(version: u8, opcode: u8, request_id: u32, body: Bytes) -> Frame {
        Frame {
            version,
            opcode,
            flags: 0,
            request_id,
            body,
        }
    }

    /// Takes one whole frame off the front of `buf`, if one is there.
    pub fn parse(buf: &mut BytesMut, max_frame: u32) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let length = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if length > max_frame {
            let request_id =
                (buf.len() >= 12).then(|| u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]));
            return Err(FrameError::TooLarge {
                length,
                max: max_frame,
                request_id,
            });
        }
        if (length as usize) < HEADER_LEN {
            return Err(FrameError::TooShort { length });
        }
        if buf.len() < 4 + length as usize {
            // Nothing is reserved for the rest: a declared length is a promise, and the
            // reader grows its buffer as bytes arrive (see `server::connection`).
            return Ok(None);
        }
        buf.advance(4);
        let version = buf.get_u8();
        let opcode = buf.get_u8();
        let flags = buf.get_u16_le();
        let request_id = buf.get_u32_le();
        let body = buf.split_to(length as usize - HEADER_LEN).freeze();
        Ok(Some(Frame {
            version,
            opcode,
            flags,
            request_id,
            body,
        }))
    }

    /// Appends the frame's bytes to `out`.
    pub fn write_to(&self, out: &mut BytesMut) {
        out.reserve(4 + HEADER_LEN + self.body.len());
        out.put_u32_le((HEADER_LEN + self.body.len()) as u32);
        out.put_u8(self.version);
        out.put_u8(self.opcode);
        out.put_u16_le(self.flags);
        out.put_u32_le(self.request_id);
        out.put_slice(&self.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_frames_wait_and_whole_frames_parse() {
        let frame = Frame::in_version(1, 0x02, 7, Bytes::from_static(b"abc"));
        let mut bytes = BytesMut::new();
        frame.write_to(&mut bytes);
        assert_eq!(
            &bytes[..],
            &[11, 0, 0, 0, 1, 2, 0, 0, 7, 0, 0, 0, b'a', b'b', b'c']
        );
        let mut partial = BytesMut::from(&bytes[..9]);
        assert_eq!(Frame::parse(&mut partial, 1024), Ok(None));
        partial.extend_from_slice(&bytes[9..]);
        assert_eq!(Frame::parse(&mut partial, 1024), Ok(Some(frame)));
        assert!(partial.is_empty());
    }

    #[test]
    fn oversize_and_undersize_lengths_are_errors() {
        let mut big = BytesMut::from(&[0xff, 0xff, 0xff, 0x00, 1, 2, 0, 0, 9, 0, 0, 0][..]);
        assert_eq!(
            Frame::parse(&mut big, 1024),
            Err(FrameError::TooLarge {
                length: 0x00ff_ffff,
                max: 1024,
                request_id: Some(9)
            })
        );
        let mut short = BytesMut::from(&[3, 0, 0, 0, 1, 2, 0][..]);
        assert_eq!(
            Frame::parse(&mut short, 1024),
            Err(FrameError::TooShort { length: 3 })
        );
    }
}
