//! The write-ahead log: every event the engine accepts, in files, before the client
//! hears that it was accepted.
//!
//! Record: `u32 length, u32 crc32c, payload`, little-endian, where `length` counts the
//! payload and the checksum covers it. The payload is `u64 sequence`, a `u8` kind, and
//! the body:
//! - [`EVENT`]: the event as a one-event INGEST body (the protocol's layout, so the log
//!   needs no format of its own for events);
//! - [`ACTION`]: one decision that recorded impressions, or one feedback: the profile
//!   events and the offer state change together (`decide::record::ActionRecord`);
//! - [`CHANGE`]: a segment membership change of the change stream
//!   (`engine::changes`); recovery checks it and leaves the state to the events;
//! - [`OFFER_ACTION`]: format 2 wrote a decision or feedback as an EVENT record and this
//!   offer state record; still replayed, no longer written (see `decide::record::OfferAction`).
//!
//! Sequences start at 1 and have no gaps.
//!
//! Appends happen under the lock of the shard the record changes, so within a shard the
//! log's order is the order of changes: that is what lets a snapshot cut each shard at
//! its own sequence (see `store::snapshot`).
//!
//! Files: `wal/<first sequence, 20 digits>.log`, a new one when the current passes the
//! segment size, so whole files can be removed once a snapshot covers them.
//!
//! Group commit: [`Wal::append`] copies a record into a shared buffer and returns its
//! sequence; a writer thread takes everything buffered in one `write`, then syncs as the
//! fsync policy says and publishes how far it got. A connection waits with
//! [`Wal::durable`] for its last event's sequence before it answers, so records from
//! many connections share one write and one fsync. Under `interval` and `never`, where a
//! write is all a reply waits for, the waiter first writes what is buffered itself if
//! nothing else is writing (`write_inline`): no hand-off to the writer thread and back,
//! which on two busy cores was most of a recorded decision's wait. Whoever writes takes
//! the buffer and writes it under one output lock, so the file holds records in sequence
//! order either way; new segments, retries and the close stay with the writer thread.
//! Under those two policies an append does not wake the writer thread either (a futex
//! wake and a context switch per batch were a tenth of the server's time under ingest):
//! a waiter that finds someone else writing waits for that batch to be stored and then
//! writes what is left, and the thread comes by every `PATROL` for records whose
//! waiter went away.
//!
//! Policies: `always` publishes a sequence only after `fdatasync`; `interval` publishes
//! after the write (the data is in the kernel: a crash of the process loses nothing) and
//! syncs at most every interval; `never` leaves syncing to the kernel.
//!
//! Failures (a full disk, an I/O error) are a degraded mode, not a dead end. The writer
//! keeps the batch it could not store, cuts the file back to where the batch began (a
//! write that ran out of space may have stored part of it; under `always`, a failed
//! `fdatasync` may have dropped it from the page cache, so it is written again rather
//! than trusted), and tries again with backoff, 10 ms doubling to 5 s, logging each
//! failure. Meanwhile [`Wal::writable`] says no: the engine refuses new changes before
//! applying them, so a refused change is never applied, and reads go on. Changes that
//! were applied before the failure was seen stay buffered and are written when space
//! comes back; their acknowledgements wait until then. Once a write (and, under
//! `interval`, a sync) succeeds again the log is healthy and takes changes, with no
//! restart. Invariant: no record that was appended is ever dropped while the log is
//! open; the only records lost are those still buffered when the process dies, and
//! none of those was acknowledged.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use std::future::Future;
use std::pin::Pin;

use crate::codec::events::encode_one;
use crate::engine::journal::Journal;
use crate::model::EventView;

/// Bytes before a record's payload.
pub const HEADER: usize = 8;
/// Longest accepted payload: an event is far smaller; a longer length is corruption.
pub const MAX_PAYLOAD: usize = 1 << 24;
/// Record kinds, as the engine's journal names them: an event as a one-event INGEST
/// body, an action (`decide::record::ActionRecord`), and format 2's offer action.
pub use crate::engine::journal::kind::{
    ACTION, CHANGE, EVENT, EVENT_WITH_ID, FORGET, OFFER_ACTION,
};

pub use crate::config::FsyncPolicy;

#[derive(Debug, Clone)]
pub struct WalOptions {
    pub policy: FsyncPolicy,
    pub interval: Duration,
    pub segment_bytes: u64,
    /// Fails writes and syncs on purpose, for tests of the degraded mode on machines
    /// where a test cannot fill a disk. `None` in production.
    pub faults: Option<Arc<Faults>>,
}

/// Injected storage trouble: while `full` is set, every write stores half its bytes
/// and then fails with "no space left on device", and so does every sync once a write
/// was tried while full (what was written before the disk filled is stored: a sync of
/// it alone succeeds, so a test knows which change the failure meets); every sync first
/// waits `sync_delay_ms` (a slow disk).
#[derive(Debug, Default)]
pub struct Faults {
    pub full: std::sync::atomic::AtomicBool,
    pub sync_delay_ms: std::sync::atomic::AtomicU64,
    written_while_full: std::sync::atomic::AtomicBool,
}

impl Faults {
    /// Before a sync: the delay, then the failure.
    fn sync(&self) -> std::io::Result<()> {
        let delay = self.sync_delay_ms.load(std::sync::atomic::Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if self
            .written_while_full
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            self.check()
        } else {
            Ok(())
        }
    }

    /// Before a write.
    fn check(&self) -> std::io::Result<()> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            self.written_while_full
                .store(true, std::sync::atomic::Ordering::SeqCst);
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        } else {
            Ok(())
        }
    }
}

struct Pending {
    buf: Vec<u8>,
    /// The sequence of the last record in `buf` (or written before, if empty).
    last: u64,
    closed: bool,
    /// Copies of the CHANGE records appended, in sequence order, for the change
    /// stream's archive to take once they are stored ([`Wal::take_changes`]); kept only
    /// after [`Wal::tee_changes`].
    tee: Vec<u8>,
    teeing: bool,
}

/// Why the log cannot take changes now: the writer's or the syncer's last error, while
/// it retries.
#[derive(Default)]
struct Health {
    writer: Option<String>,
    syncer: Option<String>,
}

/// An open log, appending after `next - 1`.
pub struct Wal {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// The highest sequence a client may be told is stored, by the policy.
    durable: watch::Sender<u64>,
    /// The writer gave up: the log was closed with records it could not store. No more
    /// acknowledgements.
    failed: Mutex<Option<String>>,
    /// Set while writes or syncs fail and are being retried.
    health: Mutex<Health>,
    /// Whether `health` holds an error, readable without its lock on the hot path.
    degraded: std::sync::atomic::AtomicBool,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Bytes written to log files since the log was opened.
    written: std::sync::atomic::AtomicU64,
    /// The file being written.
    current: Mutex<PathBuf>,
    /// What writes the log: the writer thread, or a waiter writing in its place
    /// ([`Wal::write_inline`]). Taken pending records are written under this lock, in
    /// the order they were taken, so the file holds them in sequence order.
    output: Mutex<Output>,
    /// Whether `output` holds a batch to retry, readable without its lock (the writer
    /// checks it holding `pending`; locks are taken output first, then pending).
    retry_waiting: std::sync::atomic::AtomicBool,
    /// Syncs the current file under `interval`.
    syncer: Syncer,
    dir: PathBuf,
    options: WalOptions,
}

/// The file and the batch being written.
struct Output {
    file: Segment,
    batch: Vec<u8>,
    /// A batch a waiter could not store, with its last sequence: the writer thread
    /// retries it before anything else.
    retry: Option<(Vec<u8>, u64)>,
}

/// The path of the segment whose first record has `sequence`.
pub fn segment_path(dir: &Path, sequence: u64) -> PathBuf {
    dir.join(format!("{sequence:020}.log"))
}

impl Wal {
    /// Opens the log in `dir` for appending records from `next` on, starting a new
    /// segment file.
    pub fn open(dir: &Path, next: u64, options: WalOptions) -> std::io::Result<Arc<Wal>> {
        std::fs::create_dir_all(dir)?;
        let (durable, _) = watch::channel(next - 1);
        let file = Segment::create(dir, next, options.faults.clone())?;
        let wal = Arc::new(Wal {
            pending: Mutex::new(Pending {
                buf: Vec::with_capacity(1 << 20),
                last: next - 1,
                closed: false,
                tee: Vec::new(),
                teeing: false,
            }),
            wake: Condvar::new(),
            durable,
            failed: Mutex::new(None),
            health: Mutex::new(Health::default()),
            degraded: std::sync::atomic::AtomicBool::new(false),
            writer: Mutex::new(None),
            written: std::sync::atomic::AtomicU64::new(0),
            current: Mutex::new(segment_path(dir, next)),
            output: Mutex::new(Output {
                file,
                batch: Vec::with_capacity(1 << 20),
                retry: None,
            }),
            retry_waiting: std::sync::atomic::AtomicBool::new(false),
            syncer: Syncer::default(),
            dir: dir.to_path_buf(),
            options,
        });
        let writer = wal.clone();
        let handle = std::thread::Builder::new()
            .name("omnia-wal".into())
            .spawn(move || {
                if let Err(e) = writer.write_loop() {
                    tracing::error!(error = %e, "the write-ahead log was closed with records it could not store; they were never acknowledged");
                    *writer.failed.lock() = Some(e.to_string());
                    writer.durable.send_modify(|_| {});
                }
            })?;
        *wal.writer.lock() = Some(handle);
        Ok(wal)
    }

    /// Starts a new segment file now: every record appended so far is stored in the
    /// files before it, so a snapshot that covers them can remove those files whole (how
    /// a forgotten customer's events leave the disk, `snapshot::Erasures`). Returns the
    /// new file's first sequence. Refused while a failed write waits to be retried.
    pub fn roll(&self) -> std::io::Result<u64> {
        let mut out = self.output.lock();
        if out.retry.is_some() {
            return Err(std::io::Error::other(
                "the log is retrying a failed write; the segment is rolled at the next try",
            ));
        }
        // Taken records are written under `output`, which is held: the file holds every
        // record before the first one still pending.
        let first = {
            let p = self.pending.lock();
            p.last + 1 - count_records(&p.buf)
        };
        out.file.sync()?;
        out.file = Segment::create(&self.dir, first, self.options.faults.clone())?;
        *self.current.lock() = segment_path(&self.dir, first);
        if self.options.policy == FsyncPolicy::Interval {
            self.syncer.replace(out.file.file.try_clone()?);
        }
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all())?;
        Ok(first)
    }

    /// Adds an event to the log; returns its sequence. The record is stored once
    /// [`Wal::durable`] says so.
    pub fn append_event(&self, event: &impl EventView) -> u64 {
        self.append_record(EVENT, |buf| encode_one(event, buf))
    }

    fn append_record(&self, kind: u8, body: impl FnOnce(&mut Vec<u8>)) -> u64 {
        let mut p = self.pending.lock();
        let sequence = p.last + 1;
        p.last = sequence;
        // Written in place: header, then the payload, then the header filled in.
        let at = p.buf.len();
        p.buf.extend_from_slice(&[0; HEADER]);
        p.buf.extend_from_slice(&sequence.to_le_bytes());
        p.buf.push(kind);
        body(&mut p.buf);
        let payload = &p.buf[at + HEADER..];
        let len = payload.len() as u32;
        let crc = crc32c::crc32c(payload);
        p.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        p.buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        if kind == CHANGE && p.teeing {
            let Pending { buf, tee, .. } = &mut *p;
            tee.extend_from_slice(&buf[at..]);
        }
        let first = at == 0;
        drop(p);
        // Under `always` the writer thread stores every record: wake it for the first one
        // in an empty buffer. Under `interval` and `never` the record's waiter writes it
        // (`write_inline`), and a wake-up per batch would cost a context switch on a
        // busy core for nothing; the writer comes by on its own at `PATROL`.
        if first && self.options.policy == FsyncPolicy::Always {
            self.wake.notify_one();
        }
        sequence
    }

    /// From now on keeps a copy of every CHANGE record appended for
    /// [`Wal::take_changes`]: the change stream's archive reads its records from memory,
    /// not by reading the log's files again.
    pub fn tee_changes(&self) {
        self.pending.lock().teeing = true;
    }

    /// Moves the copies of the CHANGE records stored so far (as [`Wal::durable`] says)
    /// to the end of `out`, whole records as they are in the log files, in sequence
    /// order; returns the stored sequence they go up to: every CHANGE record up to it
    /// has been taken, now or before.
    pub fn take_changes(&self, out: &mut Vec<u8>) -> u64 {
        // Read first: a record stored by then was appended, and so copied, by then.
        let stored = self.durable_now();
        let mut p = self.pending.lock();
        let mut at = 0;
        while at + HEADER + 8 <= p.tee.len() {
            let len = u32::from_le_bytes(p.tee[at..at + 4].try_into().unwrap()) as usize;
            let sequence =
                u64::from_le_bytes(p.tee[at + HEADER..at + HEADER + 8].try_into().unwrap());
            if sequence > stored {
                break;
            }
            at += HEADER + len;
        }
        out.extend_from_slice(&p.tee[..at]);
        p.tee.drain(..at);
        stored
    }

    /// Whether the log takes changes now: `Err` with the storage error while writes or
    /// syncs fail and are retried. A change refused for this must not be applied.
    pub fn writable(&self) -> Result<(), String> {
        if !self.degraded.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let health = self.health.lock();
        match health.writer.as_ref().or(health.syncer.as_ref()) {
            Some(e) => Err(format!(
                "the write-ahead log cannot store changes: {e}; nothing was changed. The log retries by itself: free space on its disk"
            )),
            None => Ok(()),
        }
    }

    /// Records a storage error of the writer or the syncer (`None`: it succeeded again),
    /// logging the changes of state.
    fn set_health(&self, who: fn(&mut Health) -> &mut Option<String>, error: Option<String>) {
        let mut health = self.health.lock();
        let slot = who(&mut health);
        match (&*slot, &error) {
            (None, Some(e)) => {
                tracing::error!(error = %e, "the write-ahead log cannot store changes; new changes are refused, reads go on, and the log retries until its disk has room")
            }
            (Some(_), None) => tracing::info!("the write-ahead log stores changes again"),
            _ => {}
        }
        *slot = error;
        let degraded = health.writer.is_some() || health.syncer.is_some();
        self.degraded
            .store(degraded, std::sync::atomic::Ordering::Release);
    }

    /// Bytes written to log files since the log was opened.
    pub fn bytes_written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The highest sequence stored as the policy promises, now.
    pub fn durable_now(&self) -> u64 {
        *self.durable.borrow()
    }

    /// The last sequence appended so far.
    pub fn last_appended(&self) -> u64 {
        self.pending.lock().last
    }

    /// Waits until `sequence` is stored as the policy promises, through any retries of
    /// a degraded log. An error if the log was closed without storing it: the client
    /// must not be told that its events are safe.
    pub async fn durable(&self, sequence: u64) -> Result<(), String> {
        // Subscribed before writing: a batch stored by someone else in between still
        // wakes this waiter.
        let mut rx = self.durable.subscribe();
        loop {
            if let Some(e) = self.failed.lock().clone() {
                return Err(format!("the write-ahead log failed: {e}"));
            }
            if *rx.borrow_and_update() >= sequence {
                return Ok(());
            }
            // Whoever holds the output now took the buffer before some of this waiter's
            // records were appended, perhaps: once it has stored its batch (which wakes
            // this loop), the waiter writes the rest itself.
            self.write_inline();
            if *rx.borrow_and_update() >= sequence {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Err("the write-ahead log is closed".into());
            }
        }
    }

    /// Blocks the calling thread until `sequence` is stored as the policy promises (for
    /// threads outside the async runtime, such as the snapshot writer). Unlike
    /// [`Wal::durable`], it does not wait out a degraded log: it fails at once.
    pub fn wait_durable(&self, sequence: u64) -> Result<(), String> {
        loop {
            if let Some(e) = self.failed.lock().clone() {
                return Err(format!("the write-ahead log failed: {e}"));
            }
            if *self.durable.borrow() >= sequence {
                return Ok(());
            }
            self.writable()?;
            self.write_inline();
            if *self.durable.borrow() >= sequence {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Blocks until every record up to `sequence` is written and synced to stable
    /// storage, whatever the policy.
    pub fn sync_through(&self, sequence: u64) -> std::io::Result<()> {
        self.wait_durable(sequence).map_err(std::io::Error::other)?;
        // Older files were synced when the writer moved on from them; the records are
        // in the file current now, or in one of those.
        let current = self.current.lock().clone();
        File::open(&current)?.sync_data()
    }

    /// Writes what is buffered, syncs, and stops the writer.
    pub fn close(&self) {
        self.pending.lock().closed = true;
        self.wake.notify_one();
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }

    /// Writes what is pending in the waiter's own thread, if nothing else is writing:
    /// the reply that waits for it then needs no hand-off to the writer thread and back
    /// (on two busy cores each hand-off waits for a thread to be scheduled: the log's
    /// wait was most of a decision's tail, docs/benchmarks.md). Only where a write is
    /// all the policy asks before a reply (`interval`, `never`: a write into the page
    /// cache, microseconds); `always` syncs, which would hold a runtime worker for
    /// milliseconds, so the writer thread does that. Also left to the thread: a new
    /// segment (it syncs the old one), a degraded log's retries, and a closed log.
    fn write_inline(&self) {
        if self.options.policy == FsyncPolicy::Always
            || self.degraded.load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        let Some(mut out) = self.output.try_lock() else {
            // Someone is writing: its batch's stored sequence wakes the waiter, who tries
            // again (`durable`).
            return;
        };
        if out.retry.is_some() || out.file.len >= self.options.segment_bytes {
            // The writer thread's work: a retry, or a new segment.
            drop(out);
            let _p = self.pending.lock();
            self.wake.notify_one();
            return;
        }
        let last = {
            let mut p = self.pending.lock();
            if p.buf.is_empty() || p.closed {
                return;
            }
            std::mem::swap(&mut p.buf, &mut out.batch);
            p.last
        };
        let Output { file, batch, retry } = &mut *out;
        match self.store(file, batch, last) {
            Ok(()) => self.stored(batch, last),
            Err(e) => {
                self.set_health(|h| &mut h.writer, Some(e.to_string()));
                *retry = Some((std::mem::take(batch), last));
                self.retry_waiting
                    .store(true, std::sync::atomic::Ordering::Release);
                drop(out);
                // Under the lock the writer waits with, so the wake-up is not lost.
                let _p = self.pending.lock();
                self.wake.notify_one();
            }
        }
    }

    /// A batch is in the file: count it and tell the waiters. Under the output lock, so
    /// the durable sequence only grows.
    fn stored(&self, batch: &mut Vec<u8>, last: u64) {
        self.written
            .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        batch.clear();
        self.durable.send_replace(last);
    }

    fn write_loop(&self) -> std::io::Result<()> {
        // Under `interval`, another thread syncs: a slow fsync (a snapshot being written
        // fills the disk queue, say) then never holds up the writes, and so the
        // acknowledgements, queued behind it.
        std::thread::scope(|scope| {
            if self.options.policy == FsyncPolicy::Interval {
                self.syncer
                    .replace(self.output.lock().file.file.try_clone()?);
                let faults = self.options.faults.clone();
                let interval = self.options.interval;
                std::thread::Builder::new()
                    .name("omnia-wal-sync".into())
                    .spawn_scoped(scope, move || {
                        self.syncer.run(interval, faults, |error| {
                            self.set_health(|h| &mut h.syncer, error)
                        })
                    })?;
            }
            let written = self.write_batches();
            self.syncer.stop();
            written
        })
    }

    fn write_batches(&self) -> std::io::Result<()> {
        loop {
            let closed = {
                let mut p = self.pending.lock();
                while p.buf.is_empty()
                    && !p.closed
                    && !self
                        .retry_waiting
                        .load(std::sync::atomic::Ordering::Acquire)
                {
                    if self.options.policy == FsyncPolicy::Always {
                        self.wake.wait(&mut p);
                    } else {
                        // Appends do not wake the writer under these policies (their
                        // waiters write): it looks for records nobody wrote every PATROL.
                        self.wake.wait_for(&mut p, PATROL);
                    }
                }
                p.closed
            };
            let mut out = self.output.lock();
            let (mut batch, last) = match out.retry.take() {
                Some(retry) => {
                    self.retry_waiting
                        .store(false, std::sync::atomic::Ordering::Release);
                    retry
                }
                None => {
                    let mut p = self.pending.lock();
                    let mut batch = std::mem::take(&mut out.batch);
                    std::mem::swap(&mut p.buf, &mut batch);
                    (batch, p.last)
                }
            };
            if !batch.is_empty() {
                let mut backoff = RETRY_FIRST;
                loop {
                    match self.store(&mut out.file, &batch, last) {
                        Ok(()) => break,
                        Err(e) => {
                            self.set_health(|h| &mut h.writer, Some(e.to_string()));
                            // Closing with records that cannot be stored: give up, so
                            // shutdown ends; none of them was acknowledged.
                            let mut p = self.pending.lock();
                            if p.closed {
                                return Err(e);
                            }
                            tracing::warn!(error = %e, "the write-ahead log could not store {} bytes; retrying in {backoff:?}", batch.len());
                            self.wake.wait_for(&mut p, backoff);
                            backoff = (backoff * 2).min(RETRY_MAX);
                        }
                    }
                }
                if self.degraded.load(std::sync::atomic::Ordering::Acquire) {
                    self.set_health(|h| &mut h.writer, None);
                }
                self.stored(&mut batch, last);
            }
            out.batch = batch;
            if closed && self.pending.lock().buf.is_empty() {
                // Even `never` syncs at a clean close.
                return out.file.sync();
            }
        }
    }

    /// Stores one batch whose last record is `last`: in a new segment file if the
    /// current one is full, synced as the policy says. On failure the file is cut back to
    /// where the batch began, so the batch can be written again whole.
    fn store(&self, file: &mut Segment, batch: &[u8], last: u64) -> std::io::Result<()> {
        let (dir, options, syncer) = (&self.dir, &self.options, &self.syncer);
        if file.len >= options.segment_bytes {
            file.sync()?;
            let first = last - count_records(batch) + 1;
            *file = Segment::create(dir, first, options.faults.clone())?;
            *self.current.lock() = segment_path(dir, first);
            if options.policy == FsyncPolicy::Interval {
                syncer.replace(file.file.try_clone()?);
            }
        }
        // A failed attempt whose cut failed too left bytes after the last whole group:
        // cut them first, or this group would land after them.
        if file.cut_pending {
            file.truncate(file.len)?;
        }
        let start = file.len;
        let stored = file.write(batch).and_then(|()| match options.policy {
            FsyncPolicy::Always => file.sync(),
            FsyncPolicy::Interval => {
                syncer.mark_dirty();
                Ok(())
            }
            FsyncPolicy::Never => Ok(()),
        });
        if stored.is_err() {
            // Part of the batch may be in the file (a write that ran out of space), or
            // gone from the page cache (a failed sync): the retry writes it again whole,
            // after cutting the file back (now, or before the retry if this cut fails).
            file.len = start;
            file.cut_pending = file.truncate(start).is_err();
        }
        stored
    }
}

impl Journal for Wal {
    fn writable(&self) -> Result<(), String> {
        Wal::writable(self)
    }

    fn start_segment(&self) -> Result<u64, String> {
        self.roll().map_err(|e| e.to_string())
    }

    fn append(&self, kind: u8, body: &mut dyn FnMut(&mut Vec<u8>)) -> u64 {
        self.append_record(kind, body)
    }

    fn last_appended(&self) -> u64 {
        Wal::last_appended(self)
    }

    fn durable_now(&self) -> u64 {
        Wal::durable_now(self)
    }

    fn durable(
        &self,
        sequence: u64,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(Wal::durable(self, sequence))
    }

    fn wait_durable(&self, sequence: u64) -> Result<(), String> {
        Wal::wait_durable(self, sequence)
    }

    fn sync_through(&self, sequence: u64) -> Result<(), String> {
        Wal::sync_through(self, sequence).map_err(|e| e.to_string())
    }

    fn bytes_written(&self) -> u64 {
        Wal::bytes_written(self)
    }
}

/// How often the writer thread looks for records to write under `interval` and
/// `never`, where appends do not wake it: records are written by their waiters, so this
/// bounds only the delay of records whose waiter went away before writing them (a
/// dropped connection), and with them the sequence that the next waiter needs.
const PATROL: Duration = Duration::from_millis(20);

/// The first wait before storing a failed batch again, doubled after each failure…
const RETRY_FIRST: Duration = Duration::from_millis(10);
/// …up to this.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The `interval` policy's syncing thread: syncs the current file at most every
/// interval, when something was written since the last sync.
#[derive(Default)]
struct Syncer {
    state: Mutex<SyncState>,
    wake: Condvar,
}

#[derive(Default)]
struct SyncState {
    file: Option<File>,
    dirty: bool,
    stop: bool,
}

impl Syncer {
    /// The file to sync from now on (the writer synced the one before itself).
    fn replace(&self, file: File) {
        let mut state = self.state.lock();
        state.file = Some(file);
        state.dirty = false;
    }

    fn mark_dirty(&self) {
        self.state.lock().dirty = true;
    }

    fn stop(&self) {
        self.state.lock().stop = true;
        self.wake.notify_one();
    }

    /// Syncs until stopped. A failed sync is reported through `health` and tried again
    /// at the next interval (the file stays dirty); a success after it clears it.
    fn run(
        &self,
        interval: Duration,
        faults: Option<Arc<Faults>>,
        health: impl Fn(Option<String>),
    ) {
        let mut state = self.state.lock();
        let mut failing = false;
        loop {
            if state.stop {
                return;
            }
            self.wake.wait_for(&mut state, interval);
            if !state.dirty {
                continue;
            }
            state.dirty = false;
            let file = state.file.as_ref().map(File::try_clone);
            // Synced without the lock, so the writer never waits for it.
            drop(state);
            let synced = match file {
                None => Ok(()),
                Some(file) => file.and_then(|file| {
                    if let Some(faults) = &faults {
                        faults.sync()?;
                    }
                    file.sync_data()
                }),
            };
            state = self.state.lock();
            match synced {
                Ok(()) if failing => {
                    failing = false;
                    health(None);
                }
                Ok(()) => {}
                Err(e) => {
                    failing = true;
                    state.dirty = true;
                    health(Some(format!("sync: {e}")));
                }
            }
        }
    }
}

/// Records in a buffer of whole records.
fn count_records(mut buf: &[u8]) -> u64 {
    let mut n = 0;
    while buf.len() >= HEADER {
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        buf = &buf[(HEADER + len).min(buf.len())..];
        n += 1;
    }
    n
}

struct Segment {
    file: File,
    /// Bytes of whole batches stored in the file.
    len: u64,
    /// The file holds bytes past `len` that a failed cut left: cut before writing.
    cut_pending: bool,
    faults: Option<Arc<Faults>>,
}

impl Segment {
    fn create(dir: &Path, first: u64, faults: Option<Arc<Faults>>) -> std::io::Result<Segment> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, first))?;
        let len = file.metadata()?.len();
        // The new file's name must survive a power loss too.
        File::open(dir)?.sync_all()?;
        Ok(Segment {
            file,
            len,
            cut_pending: false,
            faults,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(faults) = &self.faults {
            if let Err(e) = faults.check() {
                // As a disk that fills up halfway through a write.
                self.file.write_all(&bytes[..bytes.len() / 2])?;
                return Err(e);
            }
        }
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        if let Some(faults) = &self.faults {
            faults.sync()?;
        }
        self.file.sync_data()
    }

    /// Cuts the file back to `len` bytes; appends continue from there.
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)?;
        self.len = len;
        self.cut_pending = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new log in a fresh directory of its own, syncing every millisecond under
    /// `interval`.
    fn open_test_wal(name: &str, policy: FsyncPolicy) -> (PathBuf, Arc<Wal>) {
        let dir = std::env::temp_dir().join(format!(
            "omnia-wal-{name}-{}-{}",
            policy.name(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let options = WalOptions {
            policy,
            interval: Duration::from_millis(1),
            segment_bytes: 64 << 20,
            faults: None,
        };
        let wal = Wal::open(&dir, 1, options).unwrap();
        (dir, wal)
    }

    /// Waiters that write in their own threads and the writer thread share the file: with
    /// many connections appending and waiting at once, the file still holds every record
    /// once, in sequence order, and every wait ends.
    #[test]
    fn waiters_and_the_writer_keep_the_file_in_sequence_order() {
        for policy in [
            FsyncPolicy::Never,
            FsyncPolicy::Interval,
            FsyncPolicy::Always,
        ] {
            let (dir, wal) = open_test_wal("order", policy);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .build()
                .unwrap();
            runtime.block_on(async {
                let tasks: Vec<_> = (0..8)
                    .map(|t| {
                        let wal = wal.clone();
                        tokio::spawn(async move {
                            for i in 0..200u32 {
                                let sequence = wal.append_record(EVENT, |body| {
                                    body.extend_from_slice(&(t * 1000 + i).to_le_bytes())
                                });
                                wal.durable(sequence).await.unwrap();
                                assert!(wal.durable_now() >= sequence);
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            });
            wal.close();
            let bytes = std::fs::read(segment_path(&dir, 1)).unwrap();
            let mut at = 0;
            let mut expected = 1u64;
            while at < bytes.len() {
                let (sequence, len) = crate::store::check_record(&bytes, at).unwrap();
                assert_eq!(sequence, expected, "{policy:?}: record at byte {at}");
                expected += 1;
                at += HEADER + len;
            }
            assert_eq!(expected - 1, 8 * 200, "{policy:?}: every record once");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// A record whose waiter went away before writing it (a dropped connection) is not
    /// left in memory: under the policies whose appends do not wake the writer thread,
    /// the thread's patrol writes it, and a later waiter's write covers it too.
    #[test]
    fn a_record_nobody_waits_for_is_written_all_the_same() {
        for policy in [FsyncPolicy::Never, FsyncPolicy::Interval] {
            let (dir, wal) = open_test_wal("orphan", policy);
            let orphan = wal.append_record(EVENT, |body| body.push(1));
            // Not a timing assertion: the loop waits for the patrol however slow the
            // machine is, and fails only if the record is never written.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while wal.durable_now() < orphan {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{policy:?}: the record was never written"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            let len = std::fs::metadata(segment_path(&dir, 1)).unwrap().len();
            assert!(len > 0, "{policy:?}: the record is in the file");
            // A waiter that writes its own record stores everything before it as well.
            let first = wal.append_record(EVENT, |body| body.push(2));
            let second = wal.append_record(EVENT, |body| body.push(3));
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(wal.durable(second))
                .unwrap();
            assert!(wal.durable_now() >= first);
            wal.close();
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
