//! A raw socket speaking frames, for tests that send bytes no client would.

use bytes::{Bytes, BytesMut};
use omnia::protocol::{opcode, ErrorCode, Frame, Request, Response, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Raw {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

impl Raw {
    pub async fn connect(addr: &str) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    /// Connected with a receive buffer of `bytes` (set before connecting, so the
    /// kernel does not grow it): a client whose socket holds little.
    pub async fn with_receive_buffer(addr: &str, bytes: u32) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        Raw {
            stream: socket.connect(addr.parse().unwrap()).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    /// Says HELLO on a connection made.
    pub async fn hello(mut self) -> Raw {
        let hello = Request::Hello {
            min_version: 1,
            max_version: PROTOCOL_VERSION as u16,
            client: "raw".into(),
        };
        let reply = self
            .request(opcode::HELLO, 1, hello.encode().unwrap())
            .await;
        assert_eq!(reply.opcode, opcode::HELLO | opcode::RESPONSE_BIT);
        self
    }

    pub async fn greeted(addr: &str) -> Raw {
        Raw::connect(addr).await.hello().await
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` once the server closed the connection.
    pub async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = Frame::parse(&mut self.buf, u32::MAX).unwrap() {
                return Some(frame);
            }
            if self.stream.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                return None;
            }
        }
    }

    pub async fn request(&mut self, op: u8, id: u32, body: Bytes) -> Frame {
        self.request_in(PROTOCOL_VERSION, op, id, body).await
    }

    /// A request in a frame of protocol `version`.
    pub async fn request_in(&mut self, version: u8, op: u8, id: u32, body: Bytes) -> Frame {
        let mut bytes = BytesMut::new();
        Frame::in_version(version, op, id, body).write_to(&mut bytes);
        self.send(&bytes).await;
        self.frame().await.expect("a response")
    }

    /// Framing still works: a PING is answered.
    pub async fn still_alive(&mut self) {
        let pong = self.request(opcode::PING, 99, Bytes::new()).await;
        assert_eq!(
            (pong.opcode, pong.request_id),
            (opcode::PING | opcode::RESPONSE_BIT, 99)
        );
    }
}

#[track_caller]
pub fn assert_error(frame: &Frame, id: u32, code: ErrorCode, message_part: &str) {
    assert_eq!(
        frame.opcode,
        opcode::ERROR,
        "expected an error, got {frame:?}"
    );
    assert_eq!(frame.request_id, id);
    let Response::Error { code: got, message } =
        Response::decode(frame.opcode, &frame.body).unwrap()
    else {
        unreachable!()
    };
    assert_eq!(ErrorCode::from_u16(got), Some(code), "{message}");
    assert!(
        message.contains(message_part),
        "`{message}` does not contain `{message_part}`"
    );
}

/// The bytes of a HELLO frame with request id 1, for clients that write raw bytes.
pub fn hello_frame(client: &str) -> BytesMut {
    let hello = Request::Hello {
        min_version: 1,
        max_version: PROTOCOL_VERSION as u16,
        client: client.into(),
    };
    let mut bytes = BytesMut::new();
    Frame::new(opcode::HELLO, 1, hello.encode().unwrap()).write_to(&mut bytes);
    bytes
}
