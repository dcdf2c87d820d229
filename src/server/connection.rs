//! The one place that touches a client's socket: frames in, frames out.
//!
//! Reads go into a `BytesMut` that grows with what has arrived, never with what a
//! header declares: a length prefix is a promise, not an allocation. A connection
//! owns [`READ_BASE`] bytes of read buffer outright; anything beyond, it first
//! reserves from the server-wide [`ReadBudget`], for the whole frame it is reading, and
//! while the budget is spent it does not read (backpressure: the client's sends wait
//! in TCP). A connection whose reservation covers its frame can always finish it; the
//! others wait their turn (the semaphore is fair). Once a large frame is consumed and
//! nothing is buffered, the buffer shrinks back to its base and the reservation is
//! returned. Before HELLO, frames are limited to [`READ_BASE`], so a connection that has
//! not greeted cannot reserve anything.
//!
//! Known limits: a reservation is for the declared frame, so a client that declares a
//! large frame and sends it slowly holds that much of the budget until the frame
//! completes or the idle timeout closes it (32 such clients hold the default 256 MiB,
//! and other large frames wait; frames within the base buffer never wait). And a
//! connection whose next frame needs more than it holds waits while holding its
//! reservation; several such can wait on each other until the idle timeout.
//!
//! Invariant: `allocated <= READ_BASE + reserved`, and the reservations of all
//! connections never exceed the budget, so the read buffers of `n` connections take at
//! most `n * READ_BASE + budget` bytes (`docs/operations.md` states the whole bound).
//!
//! Writes go through a `BufWriter` of [`WRITE_BASE`] bytes, flushed when no complete
//! request is left in the read buffer, so a pipelining client gets its responses in few
//! writes, and a lone request is answered at once.

use std::sync::Arc;

use crate::tls::Socket;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
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

/// A connection's read buffer and how it grows, apart from the socket and the budget so
/// that tests and the `frame` fuzz target drive it with any bytes in any pieces.
///
/// Invariant: a new allocation is at most `max(READ_BASE, 2 x buffered bytes)`, and
/// never more than `max(READ_BASE, the front frame's length)`: memory follows what
/// arrived, and a declared length only bounds it.
#[derive(Debug)]
pub struct ReadBuffer {
    buffer: BytesMut,
    /// Capacity of the buffer's allocation.
    allocated: usize,
}

impl Default for ReadBuffer {
    fn default() -> Self {
        ReadBuffer {
            buffer: BytesMut::with_capacity(READ_BASE),
            allocated: READ_BASE,
        }
    }
}

impl ReadBuffer {
    /// The bytes received and not yet taken as frames.
    pub fn bytes(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    /// Capacity of the buffer's allocation.
    pub fn allocated(&self) -> usize {
        self.allocated
    }

    /// The end of the frame at the front, from its length prefix (4 until the prefix is
    /// in).
    fn frame_end(&self) -> usize {
        match self.buffer.get(..4) {
            Some(&[a, b, c, d]) => 4 + u32::from_le_bytes([a, b, c, d]) as usize,
            _ => 4,
        }
    }

    /// Whether the next read needs a larger allocation; makes room without one when it
    /// can (spare capacity, or consumed frames moved out of the way, the usual case while
    /// pipelining).
    pub fn needs_growth(&mut self) -> bool {
        let len = self.buffer.len();
        if self.buffer.capacity() > len {
            return false;
        }
        let want = self.frame_end().max(READ_BASE);
        !(want <= self.allocated && self.buffer.try_reclaim(want - len))
    }

    /// Bytes beyond [`READ_BASE`] the front frame needs: what the caller reserves from
    /// the budget, for the whole frame at once, before [`ReadBuffer::grow`].
    pub fn reservation(&self) -> usize {
        self.frame_end().saturating_sub(READ_BASE)
    }

    /// A new allocation of twice the bytes buffered (at least the base), toward the
    /// front frame's length but never past it, with room for at least one more byte.
    pub fn grow(&mut self) {
        let len = self.buffer.len();
        let want = self.frame_end().max(READ_BASE);
        // `len < want`, as the front frame is incomplete, so there is room for a byte.
        let target = want.min((2 * len).max(READ_BASE));
        let mut bigger = BytesMut::with_capacity(target);
        bigger.extend_from_slice(&self.buffer);
        self.buffer = bigger;
        self.allocated = target;
    }

    /// Back to the base allocation if nothing is buffered and it had grown; whether it
    /// shrank.
    pub fn shrink_if_empty(&mut self) -> bool {
        if !self.buffer.is_empty() || self.allocated <= READ_BASE {
            return false;
        }
        *self = ReadBuffer::default();
        true
    }
}

pub struct Connection {
    stream: BufWriter<Socket>,
    read: ReadBuffer,
    /// Units of the budget this connection holds.
    reserved: usize,
    budget: ReadBudget,
    /// The frame limit now: [`READ_BASE`] until HELLO, so that a connection that has
    /// not said who it is cannot reserve any of the budget; then the server's limit.
    max_frame: u32,
    /// The server's frame limit, from HELLO on.
    greeted_max_frame: u32,
    out: BytesMut,
    /// How long a write may wait for the client to read; then the connection is
    /// closed, so a client that stops reading cannot hold the server (or its shutdown).
    write_timeout: std::time::Duration,
    /// When the last read from the socket returned: the arrival of every frame it
    /// completed (the socket is not read while a whole frame is buffered).
    read_at: std::time::Instant,
}

impl Connection {
    pub fn new(
        socket: Socket,
        max_frame: u32,
        write_timeout: std::time::Duration,
        budget: ReadBudget,
    ) -> Connection {
        Connection {
            stream: BufWriter::with_capacity(WRITE_BASE, socket),
            read: ReadBuffer::default(),
            reserved: 0,
            budget,
            max_frame: max_frame.min(READ_BASE as u32),
            greeted_max_frame: max_frame,
            out: BytesMut::new(),
            write_timeout,
            read_at: std::time::Instant::now(),
        }
    }

    /// When the frames now buffered arrived: the end of the socket read that completed
    /// them. (Time in the kernel's socket buffer before that read is not seen.)
    pub fn read_at(&self) -> std::time::Instant {
        self.read_at
    }

    /// HELLO succeeded: frames up to the server's limit from now on.
    pub fn greeted(&mut self) {
        self.max_frame = self.greeted_max_frame;
    }

    /// A frame already in the buffer, without reading the socket.
    pub fn buffered_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        Frame::parse(self.read.bytes(), self.max_frame)
    }

    /// The next frame; `None` when the client closed the connection between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ConnectionError> {
        loop {
            if let Some(frame) = self.buffered_frame()? {
                return Ok(Some(frame));
            }
            if self.read.shrink_if_empty() {
                self.release();
            }
            self.make_room().await;
            let read = self.stream.get_mut().read_buf(self.read.bytes()).await?;
            self.read_at = std::time::Instant::now();
            if read == 0 {
                let buffered = self.read.bytes().len();
                return if buffered == 0 {
                    Ok(None)
                } else {
                    Err(ConnectionError::ClosedMidFrame(buffered))
                };
            }
        }
    }

    /// Makes room for the next read; a larger allocation is first reserved from the
    /// budget, for the whole frame at the front at once.
    async fn make_room(&mut self) {
        if !self.read.needs_growth() {
            return;
        }
        let needed = self.read.reservation().div_ceil(UNIT);
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
        self.read.grow();
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

    /// Fixes the kernel's send buffer for this connection (see `cmd::subscribe`).
    pub fn set_send_buffer(&self, bytes: usize) -> std::io::Result<()> {
        self.stream.get_ref().set_send_buffer(bytes)
    }

    /// Whether another whole request is already buffered (then responses are not
    /// flushed yet, to batch them).
    pub fn has_buffered_frame(&self) -> bool {
        let buffered = self.read.buffer.len();
        buffered >= 4 && buffered >= self.read.frame_end()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `piece` as a socket would, taking frames as they
    /// complete; returns the largest allocation seen and the frames taken.
    fn feed(bytes: &[u8], piece: usize) -> (usize, usize) {
        let mut read = ReadBuffer::default();
        let (mut largest, mut frames, mut rest) = (0, 0, bytes);
        loop {
            while let Ok(Some(_)) = Frame::parse(read.bytes(), u32::MAX) {
                frames += 1;
            }
            if rest.is_empty() {
                return (largest, frames);
            }
            read.shrink_if_empty();
            if read.needs_growth() {
                read.grow();
            }
            let room = read.bytes().capacity() - read.bytes().len();
            let n = room.min(piece).min(rest.len());
            assert!(n > 0, "room for the next read");
            read.bytes().extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            largest = largest.max(read.allocated());
        }
    }

    #[test]
    fn a_declared_length_is_not_an_allocation() {
        // A header declaring 8 MiB and 100 bytes of it: the base buffer, no more.
        let mut bytes = (8u32 << 20).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[1, 0x10, 0, 0, 2, 0, 0, 0]);
        bytes.extend_from_slice(&[0; 100]);
        assert_eq!(feed(&bytes, 7), (READ_BASE, 0));
    }

    #[test]
    fn a_large_frame_grows_the_buffer_with_its_bytes_and_no_further() {
        let body = bytes::Bytes::from(vec![7u8; 300_000]);
        let mut bytes = BytesMut::new();
        Frame::new(0x11, 1, body.clone()).write_to(&mut bytes);
        Frame::new(0x02, 2, bytes::Bytes::new()).write_to(&mut bytes);
        let (largest, frames) = feed(&bytes, 4096);
        assert_eq!(frames, 2);
        assert_eq!(
            largest,
            12 + 300_000,
            "exactly the frame, reached by doubling"
        );
        // Half of it: at most twice what arrived.
        let (largest, _) = feed(&bytes[..150_000], 4096);
        assert!(largest <= 2 * 150_000, "{largest}");
    }
}
