//! The change stream's files: every CHANGE record the log has stored, kept in
//! `changes/` for the stream's retention, for subscribers to read from any position.
//!
//! Positions are the log sequences of the CHANGE records: ordered, never reused, and
//! the same in the log and here, so recovery, a snapshot's cut and a subscriber all
//! count in one unit. The records are copied byte for byte from the log (same framing,
//! same checksum): `changes/<first position, 20 digits>-<created, unix seconds>.log`,
//! where a file holds the changes from its first position up to the next file's. The
//! newest file is the one written.
//!
//! Data flow: the log keeps a copy of each CHANGE record it appends
//! ([`Wal::tee_changes`]); the archiver thread takes the copies once the log has
//! stored them ([`Wal::take_changes`]), appends them to the newest file, and publishes
//! how far the files go ([`Stream::archived`]); subscribers wait on that and read the
//! files ([`Reader`]), never the archiver's memory: a subscriber that does not read
//! falls behind in the files and holds no server memory beyond its read buffer.
//!
//! Invariants:
//! - Every CHANGE record the log stored up to [`Stream::archived`] is in the files, in
//!   position order, once.
//! - The log's files are removed only up to `changes/archived`, a mark the archiver
//!   writes after syncing the files it names ([`archived_mark`], used by
//!   `snapshot::write`): what the files lose in a crash is still in the log, and
//!   [`Stream::open`] copies it again from there ([`Stream::catch_up`]).
//! - Files are removed oldest first, once every change in them is older than the
//!   retention: a file is kept until the file after it is `retention` old, so a change
//!   is kept for at least the retention and at most about an eighth more (files roll
//!   every eighth of the retention, between a minute and an hour).
//!
//! Named subscriptions remember the last position their subscriber acknowledged in
//! `changes/subscriptions` (one `name position` line each, rewritten at every ACK and
//! renamed into place): the page cache keeps it through a crash of the process; a crash
//! of the machine may lose the last acknowledgements, and the subscriber then sees
//! those changes again (delivery is at least once).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

use super::wal::{Wal, CHANGE, HEADER};
use super::{check_record, io, scan_log, segments, StoreError, TornTail};
use crate::clock::Clock;
use crate::model::Change;

/// How often the archiver takes what the log has stored: bounds the delay it adds
/// between a change being stored and a subscriber seeing it.
const ARCHIVE_EVERY: Duration = Duration::from_millis(5);
/// How often the archiver syncs its files and writes the mark that lets the log's
/// files go, and removes files past the retention.
const MARK_EVERY: Duration = Duration::from_secs(1);
/// A file is rolled once it is this large…
const ROLL_BYTES: u64 = 64 << 20;
/// …or an eighth of the retention old, within these bounds.
const ROLL_MIN_SECS: u32 = 60;
const ROLL_MAX_SECS: u32 = 3600;

/// Why a subscriber cannot read from where it asked.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StreamError {
    #[error("position {asked} is no longer kept: the change stream keeps positions from {earliest} on (retention {retention}); subscribe from `earliest`, or from a later position, and rebuild what was missed from SEGMENT_MEMBERS")]
    BeyondRetention {
        asked: u64,
        earliest: u64,
        retention: String,
    },
    #[error("position {asked} is ahead of the change stream, which is at {archived}; subscribe from `now` or from a position the stream has given")]
    Ahead { asked: u64, archived: u64 },
    #[error("the change stream's files cannot be read: {0}")]
    Io(String),
    #[error("the change stream's file {path}, byte {offset}: {reason}")]
    Corrupt {
        path: String,
        offset: u64,
        reason: String,
    },
}

/// One file of the stream.
#[derive(Debug, Clone)]
struct StreamFile {
    first: u64,
    created: u32,
    path: PathBuf,
}

fn file_path(dir: &Path, first: u64, created: u32) -> PathBuf {
    dir.join(format!("{first:020}-{created:010}.log"))
}

fn parse_name(name: &str) -> Option<(u64, u32)> {
    let stem = name.strip_suffix(".log")?;
    let (first, created) = stem.split_once('-')?;
    Some((first.parse().ok()?, created.parse().ok()?))
}

/// The stream's files in `dir`, oldest first.
fn list(dir: &Path) -> Result<Vec<StreamFile>, StoreError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        if let Some((first, created)) = name.to_str().and_then(parse_name) {
            files.push(StreamFile {
                first,
                created,
                path: entry.path(),
            });
        }
    }
    files.sort_by_key(|f| f.first);
    Ok(files)
}

const MARK: &str = "archived";
const SUBSCRIPTIONS: &str = "subscriptions";

/// The position up to which the stream's files are synced, as `changes/archived`
/// says; `None` when the data directory has no stream (nothing to keep the log for).
/// The log's files are removed only up to it.
pub fn archived_mark(data: &super::DataDir) -> Result<Option<u64>, StoreError> {
    let dir = data.changes();
    if !dir.exists() {
        return Ok(None);
    }
    read_mark(&dir).map(Some)
}

fn read_mark(dir: &Path) -> Result<u64, StoreError> {
    let path = dir.join(MARK);
    match std::fs::read(&path) {
        Ok(bytes) if bytes.len() == 12 => {
            let value = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            let crc = u32::from_le_bytes(bytes[8..].try_into().unwrap());
            if crc32c::crc32c(&bytes[..8]) != crc {
                return Err(StoreError::Corrupt {
                    path,
                    offset: 0,
                    reason: "checksum mismatch".into(),
                });
            }
            Ok(value)
        }
        Ok(_) => Err(StoreError::Corrupt {
            path,
            offset: 0,
            reason: "the mark is not 12 bytes long".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(StoreError::Io { path, source }),
    }
}

/// Writes `bytes` to `dir/name` through a temporary file renamed into place;
/// `sync`: syncs the file and the directory too.
fn replace(dir: &Path, name: &str, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    if sync {
        file.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    if sync {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The change stream's files, their archiver and the named subscriptions.
pub struct Stream {
    dir: PathBuf,
    clock: Arc<dyn Clock>,
    retention: AtomicU32,
    inner: Mutex<Inner>,
    /// Every change up to this position is in the files.
    archived: watch::Sender<u64>,
    subscriptions: Mutex<Subscriptions>,
    stop: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The log the archiver takes from, once started.
    wal: std::sync::OnceLock<Arc<Wal>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("dir", &self.dir)
            .field("archived", &self.archived())
            .finish()
    }
}

struct Inner {
    /// Oldest first; the last one is written.
    files: Vec<StreamFile>,
    out: File,
    out_len: u64,
    archived: u64,
    /// What `changes/archived` says.
    marked: u64,
    /// Taken from the log but not written yet (the write failed; it is retried).
    unwritten: Vec<u8>,
    unwritten_through: u64,
    /// The last write error, logged once.
    failing: Option<String>,
    last_mark: Instant,
}

#[derive(Default)]
struct Subscriptions {
    acked: BTreeMap<String, u64>,
    /// Names a connection streams to now, one at a time: its claim's id, and where to
    /// tell it that another connection took the name over.
    active: HashMap<String, (u64, oneshot::Sender<String>)>,
    /// Every streaming connection now: its name (empty: unnamed) and the position it
    /// was sent changes up to.
    following: Vec<(u64, String, Arc<AtomicU64>)>,
    next_follower: u64,
}

/// A streaming connection, counted while it lives: it publishes how far it was sent
/// ([`Follower::sent`]) for [`Stream::subscribers`].
pub struct Follower {
    stream: Arc<Stream>,
    id: u64,
    sent: Arc<AtomicU64>,
}

impl Follower {
    /// Every change up to `position` was sent to this connection.
    pub fn sent(&self, position: u64) {
        self.sent.store(position, Ordering::Relaxed);
    }
}

/// A subscription name held by one connection; given back when dropped, unless another
/// connection took it over first.
pub struct NameClaim {
    stream: Arc<Stream>,
    name: String,
    id: u64,
    /// Says the address of the connection that took the name over.
    pub taken: oneshot::Receiver<String>,
}

impl Drop for NameClaim {
    fn drop(&mut self) {
        let mut s = self.stream.subscriptions.lock();
        if s.active
            .get(&self.name)
            .is_some_and(|(id, _)| *id == self.id)
        {
            s.active.remove(&self.name);
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stream
            .subscriptions
            .lock()
            .following
            .retain(|(id, _, _)| *id != self.id);
    }
}

impl Stream {
    /// Opens the stream's files in `dir` (creating it), for a log that ends at
    /// `log_end` after recovery: a record the files hold beyond it (written before a
    /// crash of the machine lost the log's tail) is cut, so that no position is held
    /// twice; a torn write at the end of the newest file is cut too.
    pub fn open(
        dir: &Path,
        clock: Arc<dyn Clock>,
        retention: u32,
        log_end: u64,
    ) -> Result<Arc<Stream>, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut files = list(dir)?;
        while files.last().is_some_and(|f| f.first > log_end + 1) {
            let gone = files.pop().unwrap();
            std::fs::remove_file(&gone.path).map_err(io(&gone.path))?;
        }
        let marked = read_mark(dir)?.min(log_end);
        let mut archived = marked;
        if let Some(newest) = files.last() {
            let (last, valid) = scan_tail(&newest.path, log_end)?;
            let file = OpenOptions::new()
                .write(true)
                .open(&newest.path)
                .map_err(io(&newest.path))?;
            if file.metadata().map_err(io(&newest.path))?.len() > valid {
                file.set_len(valid).map_err(io(&newest.path))?;
                file.sync_all().map_err(io(&newest.path))?;
            }
            archived = archived.max(newest.first - 1).max(last);
        }
        let now = (clock.now_ms() / 1000).max(0) as u32;
        if files.is_empty() {
            let path = file_path(dir, archived + 1, now);
            File::create(&path).map_err(io(&path))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
            files.push(StreamFile {
                first: archived + 1,
                created: now,
                path,
            });
        }
        let newest = files.last().unwrap().path.clone();
        let out = OpenOptions::new()
            .append(true)
            .open(&newest)
            .map_err(io(&newest))?;
        let out_len = out.metadata().map_err(io(&newest))?.len();
        let subscriptions = read_subscriptions(dir)?;
        let (archived_tx, _) = watch::channel(archived);
        Ok(Arc::new(Stream {
            dir: dir.to_path_buf(),
            clock,
            retention: AtomicU32::new(retention),
            inner: Mutex::new(Inner {
                files,
                out,
                out_len,
                archived,
                marked,
                unwritten: Vec::new(),
                unwritten_through: archived,
                failing: None,
                last_mark: Instant::now(),
            }),
            archived: archived_tx,
            subscriptions: Mutex::new(Subscriptions {
                acked: subscriptions,
                ..Subscriptions::default()
            }),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
            wal: std::sync::OnceLock::new(),
        }))
    }

    /// Copies the CHANGE records of the log in `wal_dir` that the files miss (those
    /// after [`Stream::archived`]: the files lost them in a crash, or the log stored
    /// them after the archiver's last take). Before the log is opened for appending.
    pub fn catch_up(&self, wal_dir: &Path) -> Result<u64, StoreError> {
        let from = self.archived() + 1;
        let files = segments(wal_dir)?;
        // From the file holding `from` on.
        let start = files
            .iter()
            .rposition(|(first, _)| *first <= from)
            .unwrap_or(0);
        let mut frames = Vec::new();
        let mut copied = 0;
        let scanned = scan_log(&files[start..], from, u64::MAX, TornTail::Refuse, |r| {
            if r.kind() == CHANGE {
                frames.extend_from_slice(r.frame());
                copied += 1;
            }
            Ok(())
        })?;
        let through = scanned.next.map_or(from - 1, |n| n - 1).max(from - 1);
        let mut inner = self.inner.lock();
        self.write(&mut inner, frames, through);
        if let Some(e) = &inner.failing {
            return Err(StoreError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(e.clone()),
            });
        }
        self.mark(&mut inner).map_err(|source| StoreError::Io {
            path: self.dir.join(MARK),
            source,
        })?;
        Ok(copied)
    }

    /// Starts the archiver: from now on it takes the CHANGE records `wal` stores.
    pub fn start(self: &Arc<Self>, wal: Arc<Wal>) -> std::io::Result<()> {
        wal.tee_changes();
        let _ = self.wal.set(wal.clone());
        let stream = self.clone();
        let handle = std::thread::Builder::new()
            .name("omnia-stream".into())
            .spawn(move || {
                while !stream.stop.load(Ordering::Acquire) {
                    stream.archive(&wal);
                    std::thread::sleep(ARCHIVE_EVERY);
                }
                // The log is closed: what it stored is final.
                stream.archive(&wal);
            })?;
        *self.thread.lock() = Some(handle);
        Ok(())
    }

    /// Stops the archiver after its last take (call it once the log is closed), syncs
    /// the files and writes the mark.
    pub fn close(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.thread.lock().take() {
            let _ = handle.join();
        }
        let mut inner = self.inner.lock();
        if let Err(e) = self.mark(&mut inner) {
            tracing::error!(error = %e, dir = %self.dir.display(), "cannot sync the change stream's files; the log keeps what they miss");
        }
    }

    /// One round of the archiver: take, write, publish; now and then sync, mark, trim.
    fn archive(&self, wal: &Wal) {
        // Taken under the lock, so takes are written in the order they were taken.
        let mut inner = self.inner.lock();
        let mut frames = Vec::new();
        let through = wal.take_changes(&mut frames);
        self.write(&mut inner, frames, through);
        if inner.last_mark.elapsed() >= MARK_EVERY {
            inner.last_mark = Instant::now();
            if let Err(e) = self.mark(&mut inner) {
                tracing::warn!(error = %e, dir = %self.dir.display(), "cannot sync the change stream's files; the log's files are kept until it can");
            }
            self.trim(&mut inner);
        }
    }

    /// Appends `frames` (whole CHANGE records, positions after what the files hold)
    /// and publishes `through`. A failed write keeps them for the next round.
    fn write(&self, inner: &mut Inner, frames: Vec<u8>, through: u64) {
        if inner.unwritten.is_empty() {
            inner.unwritten = frames;
        } else {
            inner.unwritten.extend_from_slice(&frames);
        }
        inner.unwritten_through = inner.unwritten_through.max(through);
        if !inner.unwritten.is_empty() {
            if let Err(e) = self.roll_if_due(inner) {
                self.failed(inner, e);
                return;
            }
            let len = inner.out_len;
            let written = inner.out.write_all(&inner.unwritten);
            if let Err(e) = written {
                // Cut back what part of the write was stored: it is written again whole.
                let _ = inner.out.set_len(len);
                self.failed(inner, e);
                return;
            }
            inner.out_len += inner.unwritten.len() as u64;
            inner.unwritten.clear();
            if inner.failing.take().is_some() {
                tracing::info!(dir = %self.dir.display(), "the change stream's files are written again");
            }
        }
        if inner.unwritten_through > inner.archived {
            inner.archived = inner.unwritten_through;
            self.archived.send_replace(inner.archived);
        }
    }

    fn failed(&self, inner: &mut Inner, e: std::io::Error) {
        let e = e.to_string();
        if inner.failing.as_ref() != Some(&e) {
            tracing::error!(error = %e, dir = %self.dir.display(), "cannot write the change stream's files; subscribers wait, the log keeps the changes, and the write is retried");
        }
        inner.failing = Some(e);
    }

    fn roll_if_due(&self, inner: &mut Inner) -> std::io::Result<()> {
        let now = self.now();
        let newest = inner.files.last().expect("the stream always has a file");
        let age = now.saturating_sub(newest.created);
        let every =
            (self.retention.load(Ordering::Relaxed) / 8).clamp(ROLL_MIN_SECS, ROLL_MAX_SECS);
        if inner.out_len == 0 || (inner.out_len < ROLL_BYTES && age < every) {
            return Ok(());
        }
        inner.out.sync_data()?;
        let first = inner.archived + 1;
        let path = file_path(&self.dir, first, now);
        let out = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        File::open(&self.dir)?.sync_all()?;
        inner.files.push(StreamFile {
            first,
            created: now,
            path,
        });
        inner.out = out;
        inner.out_len = 0;
        Ok(())
    }

    /// Syncs the files and writes the mark, if the files hold more than it says.
    fn mark(&self, inner: &mut Inner) -> std::io::Result<()> {
        let upto = inner.archived;
        if upto <= inner.marked {
            return Ok(());
        }
        inner.out.sync_data()?;
        let mut bytes = upto.to_le_bytes().to_vec();
        bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
        replace(&self.dir, MARK, &bytes, true)?;
        inner.marked = upto;
        Ok(())
    }

    /// Removes the files every change of which is past the retention.
    fn trim(&self, inner: &mut Inner) {
        let now = self.now();
        let retention = self.retention.load(Ordering::Relaxed);
        while inner.files.len() >= 2 && inner.files[1].created.saturating_add(retention) <= now {
            let gone = inner.files.remove(0);
            match std::fs::remove_file(&gone.path) {
                Ok(()) => {
                    tracing::debug!(file = %gone.path.display(), "change stream file past the retention removed")
                }
                Err(e) => {
                    tracing::warn!(file = %gone.path.display(), error = %e, "cannot remove a change stream file past the retention; trying again later");
                    inner.files.insert(0, gone);
                    break;
                }
            }
        }
    }

    fn now(&self) -> u32 {
        (self.clock.now_ms() / 1000).max(0) as u32
    }

    /// Takes what the log has stored now, syncs the files and writes the mark; returns
    /// the position up to which the log's files may be removed.
    pub fn sync(&self) -> std::io::Result<u64> {
        if let Some(wal) = self.wal.get() {
            // Taken under the lock, so takes are written in the order they were taken.
            let mut inner = self.inner.lock();
            let mut frames = Vec::new();
            let through = wal.take_changes(&mut frames);
            self.write(&mut inner, frames, through);
            self.mark(&mut inner)?;
            return Ok(inner.marked);
        }
        let mut inner = self.inner.lock();
        self.mark(&mut inner)?;
        Ok(inner.marked)
    }

    /// Runs one round of the archiver now, and trims and marks as if it were due (for
    /// tests that move an injected clock).
    pub fn upkeep(&self, wal: &Wal) {
        self.inner.lock().last_mark = Instant::now() - MARK_EVERY;
        self.archive(wal);
    }

    /// Every change up to this position is in the files.
    pub fn archived(&self) -> u64 {
        *self.archived.borrow()
    }

    /// A receiver of [`Stream::archived`], to wait for new changes.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.archived.subscribe()
    }

    /// The oldest position the files still hold.
    pub fn earliest(&self) -> u64 {
        self.inner.lock().files[0].first
    }

    /// The retention in seconds.
    pub fn retention(&self) -> u32 {
        self.retention.load(Ordering::Relaxed)
    }

    /// A reload's new retention.
    pub fn set_retention(&self, seconds: u32) {
        self.retention.store(seconds, Ordering::Relaxed);
    }

    /// A reader of the changes from position `from` on.
    pub fn reader(self: &Arc<Self>, from: u64) -> Result<Reader, StreamError> {
        let inner = self.inner.lock();
        let from = from.max(1);
        let archived = inner.archived;
        if from > archived + 1 {
            return Err(StreamError::Ahead {
                asked: from,
                archived,
            });
        }
        if from < inner.files[0].first {
            return Err(self.beyond(from, inner.files[0].first));
        }
        let i = inner
            .files
            .iter()
            .rposition(|f| f.first <= from)
            .unwrap_or(0);
        let file = inner.files[i].clone();
        let successor = inner.files.get(i + 1).map(|f| f.first);
        drop(inner);
        let opened = File::open(&file.path).map_err(|e| StreamError::Io(e.to_string()))?;
        Ok(Reader {
            stream: self.clone(),
            next: from,
            file,
            opened,
            successor,
            buf: Vec::new(),
            start: 0,
            offset: 0,
        })
    }

    fn beyond(&self, asked: u64, earliest: u64) -> StreamError {
        StreamError::BeyondRetention {
            asked,
            earliest,
            retention: crate::config::duration::format_duration(self.retention() as u64),
        }
    }

    /// The last acknowledged position of the subscription `name`.
    pub fn acked(&self, name: &str) -> Option<u64> {
        self.subscriptions.lock().acked.get(name).copied()
    }

    /// Every named subscription and its last acknowledged position.
    pub fn subscriptions(&self) -> Vec<(String, u64)> {
        let s = self.subscriptions.lock();
        s.acked.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Counts a streaming connection of subscription `name` (empty: unnamed) until the
    /// returned follower is dropped; `sent` is where it starts.
    pub fn follow(self: &Arc<Self>, name: &str, sent: u64) -> Follower {
        let mut s = self.subscriptions.lock();
        s.next_follower += 1;
        let id = s.next_follower;
        let position = Arc::new(AtomicU64::new(sent));
        s.following.push((id, name.to_string(), position.clone()));
        Follower {
            stream: self.clone(),
            id,
            sent: position,
        }
    }

    /// Every streaming connection now: its subscription's name (empty: unnamed) and
    /// the position it was sent changes up to; how far behind the stream it is, is
    /// [`Stream::archived`] minus that.
    pub fn subscribers(&self) -> Vec<(String, u64)> {
        let s = self.subscriptions.lock();
        s.following
            .iter()
            .map(|(_, name, sent)| (name.clone(), sent.load(Ordering::Relaxed)))
            .collect()
    }

    /// Claims the subscription name `name` for the connection from `by`, taking it
    /// over from the connection that holds it now, if one does: that one's
    /// [`NameClaim::taken`] then says `by`. Taking over rather than refusing is what
    /// lets a subscriber reconnect at once after a connection it thinks dead (a half-open
    /// TCP connection may look alive to the server for minutes), and the old connection
    /// is told, not left streaming beside the new one.
    pub fn claim(self: &Arc<Self>, name: &str, by: &str) -> NameClaim {
        let mut s = self.subscriptions.lock();
        s.next_follower += 1;
        let id = s.next_follower;
        let (tell, taken) = oneshot::channel();
        if let Some((_, previous)) = s.active.insert(name.to_string(), (id, tell)) {
            // The previous holder may be gone already: nobody to tell then.
            let _ = previous.send(by.to_string());
        }
        NameClaim {
            stream: self.clone(),
            name: name.to_string(),
            id,
            taken,
        }
    }

    /// Records that the subscription `name` has handled every change up to `position`
    /// (a lower position than it acknowledged before changes nothing).
    pub fn ack(&self, name: &str, position: u64) -> std::io::Result<()> {
        let mut s = self.subscriptions.lock();
        let entry = s.acked.entry(name.to_string()).or_insert(0);
        if position <= *entry {
            return Ok(());
        }
        *entry = position;
        let text: String = s
            .acked
            .iter()
            .map(|(name, position)| format!("{name} {position}\n"))
            .collect();
        replace(&self.dir, SUBSCRIPTIONS, text.as_bytes(), false)
    }
}

fn read_subscriptions(dir: &Path) -> Result<BTreeMap<String, u64>, StoreError> {
    let path = dir.join(SUBSCRIPTIONS);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => return Err(StoreError::Io { path, source }),
    };
    let mut acked = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let parsed = line
            .split_once(' ')
            .and_then(|(name, position)| Some((name, position.parse::<u64>().ok()?)));
        let Some((name, position)) = parsed else {
            return Err(StoreError::Corrupt {
                path,
                offset: n as u64,
                reason: format!("line {} is not `name position`", n + 1),
            });
        };
        acked.insert(name.to_string(), position);
    }
    Ok(acked)
}

/// Reads the newest file: the last position in it up to `log_end` and where the valid
/// records up to it end (a torn write or a record beyond the log is cut there).
fn scan_tail(path: &Path, log_end: u64) -> Result<(u64, u64), StoreError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let mut at = 0;
    let mut last = 0;
    while at < bytes.len() {
        match check_record(&bytes, at) {
            Ok((sequence, len)) if sequence <= log_end => {
                last = sequence;
                at += HEADER + len;
            }
            Ok(_) => break,
            Err(reason) => {
                tracing::warn!(file = %path.display(), offset = at, %reason, "cut a torn write at the end of the change stream");
                break;
            }
        }
    }
    Ok((last, at as u64))
}

/// Reads the stream's files from a position on, one file at a time, holding one
/// buffer of them.
pub struct Reader {
    stream: Arc<Stream>,
    /// The next position to give (everything before it was given or skipped).
    next: u64,
    file: StreamFile,
    opened: File,
    /// The first position of the file after this one, once one exists.
    successor: Option<u64>,
    buf: Vec<u8>,
    start: usize,
    offset: u64,
}

/// Bytes a reader reads at a time.
const READ_CHUNK: usize = 64 << 10;

impl Reader {
    /// The position after the last change given.
    pub fn next_position(&self) -> u64 {
        self.next
    }

    /// Up to `max` changes from where the reader is, in position order; fewer (or
    /// none) when it has read everything written so far. Afterwards
    /// [`Reader::next_position`] is past every change the files held when it started,
    /// given or not, so a subscriber that filters can acknowledge it.
    pub fn read(&mut self, max: usize) -> Result<Vec<(u64, Change)>, StreamError> {
        // Read before the files: every change up to it is in a file that exists now.
        let archived = self.stream.archived();
        let mut out = Vec::new();
        while out.len() < max {
            if let Some((position, change)) = self.frame()? {
                if position >= self.next {
                    self.next = position + 1;
                    out.push((position, change));
                }
                continue;
            }
            // The end of what this file holds now. If the file after it existed before
            // this read, the archiver had finished this one: move on.
            if let Some(successor) = self.successor {
                self.open_successor(successor)?;
                continue;
            }
            let inner = self.stream.inner.lock();
            let Some(here) = inner.files.iter().position(|f| f.first == self.file.first) else {
                // This file went past the retention while it was read, and so may the
                // ones after it.
                return Err(self.stream.beyond(self.next, inner.files[0].first));
            };
            self.successor = inner.files.get(here + 1).map(|f| f.first);
            if self.successor.is_none() {
                drop(inner);
                self.next = self.next.max(archived + 1);
                break;
            }
            // Read this file to its end once more before moving on.
        }
        Ok(out)
    }

    fn open_successor(&mut self, first: u64) -> Result<(), StreamError> {
        let inner = self.stream.inner.lock();
        let Some(i) = inner.files.iter().position(|f| f.first == first) else {
            return Err(self.stream.beyond(self.next, inner.files[0].first));
        };
        let file = inner.files[i].clone();
        self.successor = inner.files.get(i + 1).map(|f| f.first);
        drop(inner);
        self.opened = File::open(&file.path).map_err(|e| StreamError::Io(e.to_string()))?;
        self.file = file;
        self.buf.clear();
        self.start = 0;
        self.offset = 0;
        Ok(())
    }

    /// The next whole record in the buffer, reading more of the file as needed.
    fn frame(&mut self) -> Result<Option<(u64, Change)>, StreamError> {
        loop {
            let rest = &self.buf[self.start..];
            if rest.len() >= HEADER {
                let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
                if rest.len() >= HEADER + len {
                    let corrupt = |offset: u64, reason: String| StreamError::Corrupt {
                        path: self.file.path.display().to_string(),
                        offset,
                        reason,
                    };
                    let at = self.offset - (self.buf.len() - self.start) as u64;
                    let (position, _) =
                        check_record(rest, 0).map_err(|reason| corrupt(at, reason))?;
                    let body = &rest[HEADER + 9..HEADER + len];
                    let change = crate::engine::changes::decode(body)
                        .map_err(|e| corrupt(at, e.to_string()))?;
                    self.start += HEADER + len;
                    return Ok(Some((position, change)));
                }
            }
            // Keep the partial record, read more after it.
            self.buf.drain(..self.start);
            self.start = 0;
            let had = self.buf.len();
            self.buf.resize(had + READ_CHUNK, 0);
            let n = self
                .opened
                .read(&mut self.buf[had..])
                .map_err(|e| StreamError::Io(e.to_string()))?;
            self.buf.truncate(had + n);
            self.offset += n as u64;
            if n == 0 {
                return Ok(None);
            }
        }
    }
}
