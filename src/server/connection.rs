//! The one place that touches a client's socket: frames in, frames out.
//!
//! Reads go into a `BytesMut` bounded by the frame limit; writes go through a
//! `BufWriter`, flushed when no complete request is left in the read buffer, so a
//! pipelining client gets its responses in few writes, and a lone request is answered
//! at once.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;

use crate::protocol::{Frame, FrameError};

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    ClosedMidFrame(usize),
}

pub struct Connection {
    stream: BufWriter<TcpStream>,
    buffer: BytesMut,
    max_frame: u32,
    out: BytesMut,
    /// How long a write may wait for the client to read; then the connection is
    /// closed, so a client that stops reading cannot hold the server (or its shutdown).
    write_timeout: std::time::Duration,
}

impl Connection {
    pub fn new(
        socket: TcpStream,
        max_frame: u32,
        write_timeout: std::time::Duration,
    ) -> Connection {
        Connection {
            stream: BufWriter::with_capacity(64 * 1024, socket),
            buffer: BytesMut::with_capacity(64 * 1024),
            max_frame,
            out: BytesMut::new(),
            write_timeout,
        }
    }

    /// A frame already in the buffer, without reading the socket.
    pub fn buffered_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        Frame::parse(&mut self.buffer, self.max_frame)
    }

    /// The next frame; `None` when the client closed the connection between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ConnectionError> {
        loop {
            if let Some(frame) = self.buffered_frame()? {
                return Ok(Some(frame));
            }
            if self.stream.get_mut().read_buf(&mut self.buffer).await? == 0 {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnectionError::ClosedMidFrame(self.buffer.len()))
                };
            }
        }
    }

    /// Queues a frame; it is sent at the next [`flush`](Self::flush) or when the
    /// write buffer is full.
    pub async fn write_frame(&mut self, frame: &Frame) -> std::io::Result<()> {
        self.out.clear();
        frame.write_to(&mut self.out);
        let limit = self.write_timeout;
        match tokio::time::timeout(limit, self.stream.write_all(&self.out)).await {
            Ok(written) => written,
            Err(_) => Err(not_reading(limit)),
        }
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        match tokio::time::timeout(self.write_timeout, self.stream.flush()).await {
            Ok(flushed) => flushed,
            Err(_) => Err(not_reading(self.write_timeout)),
        }
    }

    /// Whether another whole request is already buffered (then responses are not
    /// flushed yet, to batch them).
    pub fn has_buffered_frame(&self) -> bool {
        self.buffer.len() >= 4 && {
            let length = u32::from_le_bytes([
                self.buffer[0],
                self.buffer[1],
                self.buffer[2],
                self.buffer[3],
            ]) as usize;
            self.buffer.len() >= 4 + length
        }
    }
}

fn not_reading(limit: std::time::Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the client read no response for {} s", limit.as_secs()),
    )
}
