//! The one place that touches a client's socket: frames in, frames out.
//!
//! Reads go into a `BytesMut` that grows with what has arrived, never with what a
//! header declares: a length prefix is a promise, not an allocation. A connection
//! owns [`READ_BASE`] bytes of read buffer outright; anything beyond, it first
//! reserves from the server-wide [`ReadBudget`], for the whole frame it is reading, and
//! while the budget is spent it does not read (backpressure: the client's sends wait
//! in TCP). A connection that holds a reservation can always finish its frame, so the
//! budget cannot deadlock; the others wait their turn (the semaphore is fair). Once a
//! large frame is consumed and nothing is buffered, the buffer shrinks back to its base
//! and the reservation is returned.
//!
//! Invariant: `allocated <= READ_BASE + reserved`, and the reservations of all
//! connections never exceed the budget, so the read buffers of `n` connections take at
//! most `n * READ_BASE + budget` bytes (`docs/operations.md` states the whole bound).
//!
//! Writes go through a `BufWriter` of [`WRITE_BASE`] bytes, flushed when no complete
//! request is left in the read buffer, so a pipelining client gets its responses in few
//! writes, and a lone request is answered at once.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::protocol::{Frame, FrameError};

/// Read buffer every connection has without reserving: ingest batches of a few
/// hundred events and every other request fit in it.
pub const READ_BASE: usize = 16 * 1024;
/// Write buffer of every connection.
pub const WRITE_BASE: usize = 16 * 1024;
/// An encoded response buffer larger than this is not kept for the next response.
const OUT_KEEP: usize = 64 * 1024;
/// Reservations are counted in units of this many bytes.
const UNIT: usize = 1024;

/// Bytes of read buffer all connections together may hold beyond their base.
#[derive(Debug, Clone)]
pub struct ReadBudget {
    units: Arc<Semaphore>,
}

impl ReadBudget {
    pub fn new(bytes: usize) -> ReadBudget {
        ReadBudget {
            units: Arc::new(Semaphore::new(bytes.div_ceil(UNIT))),
        }
    }

    /// Bytes not reserved by any connection now.
    pub fn available(&self) -> usize {
        self.units.available_permits() * UNIT
    }
}

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
    /// Capacity of the read buffer's allocation.
    allocated: usize,
    /// Units of the budget this connection holds.
    reserved: usize,
    budget: ReadBudget,
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
        budget: ReadBudget,
    ) -> Connection {
        Connection {
            stream: BufWriter::with_capacity(WRITE_BASE, socket),
            buffer: BytesMut::with_capacity(READ_BASE),
            allocated: READ_BASE,
            reserved: 0,
            budget,
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
            if self.buffer.is_empty() && self.allocated > READ_BASE {
                self.shrink();
            }
            self.make_room().await;
            if self.stream.get_mut().read_buf(&mut self.buffer).await? == 0 {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnectionError::ClosedMidFrame(self.buffer.len()))
                };
            }
        }
    }

    /// Makes room for the next read: at least one byte, and as the frame at the front
    /// grows, an allocation that doubles toward its declared length (reserved from the
    /// budget first, for the whole frame at once) but never past it.
    async fn make_room(&mut self) {
        let len = self.buffer.len();
        let frame_end = if len >= 4 {
            4 + u32::from_le_bytes([
                self.buffer[0],
                self.buffer[1],
                self.buffer[2],
                self.buffer[3],
            ]) as usize
        } else {
            4
        };
        if self.buffer.capacity() > len {
            return;
        }
        // The frame's bytes fit in the allocation once the consumed frames before it
        // are moved out of the way (the usual case while pipelining).
        let want = frame_end.max(READ_BASE);
        if want <= self.allocated && self.buffer.try_reclaim(want - len) {
            return;
        }
        let needed = want.saturating_sub(READ_BASE).div_ceil(UNIT);
        if needed > self.reserved {
            // Waits while other connections hold the budget: this connection reads
            // nothing meanwhile.
            if let Ok(permits) = self
                .budget
                .units
                .acquire_many((needed - self.reserved) as u32)
                .await
            {
                permits.forget();
                self.reserved = needed;
            }
        }
        let target = want.min((self.allocated * 2).max(len + 1));
        let mut bigger = BytesMut::with_capacity(target);
        bigger.extend_from_slice(&self.buffer);
        self.buffer = bigger;
        self.allocated = target;
    }

    /// Back to the base buffer, returning the reservation.
    fn shrink(&mut self) {
        self.buffer = BytesMut::with_capacity(READ_BASE);
        self.allocated = READ_BASE;
        self.release();
    }

    fn release(&mut self) {
        if self.reserved > 0 {
            self.budget.units.add_permits(self.reserved);
            self.reserved = 0;
        }
    }

    /// Queues a frame; it is sent at the next [`flush`](Self::flush) or when the
    /// write buffer is full.
    pub async fn write_frame(&mut self, frame: &Frame) -> std::io::Result<()> {
        self.out.clear();
        frame.write_to(&mut self.out);
        let limit = self.write_timeout;
        let written = match tokio::time::timeout(limit, self.stream.write_all(&self.out)).await {
            Ok(written) => written,
            Err(_) => Err(not_reading(limit)),
        };
        if self.out.capacity() > OUT_KEEP {
            self.out = BytesMut::new();
        }
        written
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

impl Drop for Connection {
    fn drop(&mut self) {
        self.release();
    }
}
