//! Durability: the data directory, the write-ahead log and recovery.
//!
//! Layout of a data directory:
//!
//! ```text
//! FORMAT                    "omnia data directory, format 3": checked at every start
//!                           (format 2 is migrated, see `MIGRATES`)
//! wal/<sequence>.log        the write-ahead log, in segments named by their first record
//! snapshots/<position>.snap the newest snapshot (see `snapshot`)
//! changes/                  the change stream's files (see `stream`)
//! triggers/deliveries.log   the triggers' deliveries (see `deliveries`)
//! ```
//!
//! At start, [`recover`] loads the newest snapshot, if there is one, then replays the
//! log after it into the engine, in order, and checks each record: a record cut short or
//! failing its checksum at the very end of the last segment is a write torn by a crash,
//! so it is cut off and reported; anything else wrong, in the log or in the snapshot,
//! stops the start with an error that names the file, the byte offset and what to do,
//! because continuing would silently lose what was acknowledged. Then
//! [`wal::Wal::open`] appends after the last record. [`Store::open`] does all of it, in
//! that order, for `omnia serve`, the tests and the benchmarks alike. Recovery and a
//! reload's catch-up read the log through one scanner (`scan_log`), which checks every
//! record and that sequences run on without a gap.
//!
//! Not durable: the decision log that lets FEEDBACK name a decision by id (feedback by
//! customer, offer and channel still works after a restart), and the count of decisions
//! made since the last snapshot (a statistic; impressions and feedback are logged).

pub mod deliveries;
pub mod reload;
pub mod snapshot;
pub mod stream;
pub mod wal;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::events::Layout;
use crate::codec::IngestBatch;
use crate::node::{Node, NodeImage};
use wal::{HEADER, MAX_PAYLOAD};

/// The first line of `FORMAT` this version writes.
pub const FORMAT: &str = "omnia data directory, format 8";

/// Earlier formats this version reads and migrates at start. Each differs only in what
/// it did not write yet, which this version still replays, so migrating is rewriting
/// `FORMAT`: format 7 wrote no coupon codes in ACTION records (its codes were a hash of
/// the decision, made again at replay) and snapshots of format 5 (no redemption times);
/// format 6 wrote no exposures (in ACTION records, and snapshot format 5's
/// exposures section); format 5 wrote no CHANGE records (the change stream); format 4 wrote no FORGET records (and no `privacy.key`, made at the first
/// start of format 5); format 3 wrote no EVENT_WITH_ID records and snapshots of format 2 (no
/// message ids); format 2 also wrote an EVENT and an OFFER_ACTION per offer action,
/// where format 3 on writes one ACTION. Any other first line is refused.
pub const MIGRATES: &[&str] = &[
    "omnia data directory, format 2",
    "omnia data directory, format 3",
    "omnia data directory, format 4",
    "omnia data directory, format 5",
    "omnia data directory, format 6",
    "omnia data directory, format 7",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not empty and has no FORMAT file, so it is not an omnia data directory; point --data-dir at an empty or new directory")]
    NotADataDirectory { path: PathBuf },
    #[error("{path} was written by an incompatible version of omnia (its FORMAT says `{found}`, this version writes `{FORMAT}`); start the version that wrote it, or use another --data-dir")]
    IncompatibleFormat { path: PathBuf, found: String },
    #[error("{path}, byte {offset}: {reason}. Records after this point cannot be trusted, and skipping them would lose acknowledged events, so omnia does not start. Restore the data directory from a backup, or, to accept losing everything from this record on, truncate the file to {offset} bytes and remove later log files")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{path}, byte {offset}: the snapshot is damaged: {reason}. omnia does not start from a damaged snapshot. Restore the data directory from a backup; or, only if the log still holds every record from the first one on (log files are removed once a snapshot covers them), move the snapshot away to rebuild everything from the log")]
    CorruptSnapshot {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{path} cannot be loaded under this config: {reason}. Start with a config that keeps what it needs, or with the config that wrote it")]
    SnapshotConfig { path: PathBuf, reason: String },
    #[error("the engine was replaced by a reload; its successor is snapshotted instead")]
    Replaced,
    #[error("{path}: the log starts at record {first}, but the snapshot needs every record after {covers}: log files are missing. Restore the data directory from a backup")]
    LogGap {
        path: PathBuf,
        first: u64,
        covers: u64,
    },
    #[error("{path}, byte {offset}: record {sequence} no longer applies under this config: {reason}. Start with the config that accepted it, or change the config so that it applies")]
    Replay {
        path: PathBuf,
        offset: u64,
        sequence: u64,
        reason: String,
    },
}

/// An open data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    /// The change stream's files, once a [`Store`] has opened them: a snapshot asks
    /// them how far the log's files may go. Shared by every clone.
    stream: Arc<std::sync::OnceLock<Arc<stream::Stream>>>,
}

impl DataDir {
    /// The change stream open on this directory, if any.
    pub fn stream(&self) -> Option<&Arc<stream::Stream>> {
        self.stream.get()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the write-ahead log's files are.
    pub fn wal(&self) -> PathBuf {
        self.root.join("wal")
    }

    /// Where the snapshot is.
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// The secret the suppression list's hashes are keyed with.
    pub fn privacy_key(&self) -> PathBuf {
        self.root.join("privacy.key")
    }

    /// Where the change stream's files are (see `stream`).
    pub fn changes(&self) -> PathBuf {
        self.root.join("changes")
    }

    /// The triggers' deliveries journal's directory.
    pub fn triggers(&self) -> PathBuf {
        self.root.join("triggers")
    }
}

/// The data directory's privacy secret: 32 random bytes made at the first start (mode
/// 0600, written whole by [`replace_file`] before use), read at every start. Losing it would
/// make the suppression list unreadable: it stays with the directory, and a backup
/// takes it along.
fn privacy_secret(data: &DataDir) -> Result<[u8; 32], StoreError> {
    let path = data.privacy_key();
    match std::fs::read(&path) {
        Ok(bytes) => bytes.as_slice().try_into().map_err(|_| StoreError::Io {
            path: path.clone(),
            source: std::io::Error::other(format!(
                "it holds {} bytes, not the 32 of a privacy key; restore it from the backup of this data directory",
                bytes.len()
            )),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            argon2::password_hash::rand_core::RngCore::fill_bytes(
                &mut argon2::password_hash::rand_core::OsRng,
                &mut secret,
            );
            replace_file(&data.root, "privacy.key", &secret, true)?;
            Ok(secret)
        }
        Err(e) => Err(io(&path)(e)),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens (or creates) a data directory, checking its format.
pub fn open_data_dir(path: &Path) -> Result<DataDir, StoreError> {
    std::fs::create_dir_all(path).map_err(io(path))?;
    let format = path.join("FORMAT");
    match std::fs::read_to_string(&format) {
        Ok(text) => {
            let found = text.lines().next().unwrap_or("").trim().to_string();
            if MIGRATES.contains(&found.as_str()) {
                write_format(path)?;
                tracing::info!(data_dir = %path.display(), from = %found, to = FORMAT, "migrated the data directory");
            } else if found != FORMAT {
                return Err(StoreError::IncompatibleFormat {
                    path: path.to_path_buf(),
                    found,
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A `FORMAT.next` alone is a first start that stopped before its rename.
            let empty = std::fs::read_dir(path)
                .map_err(io(path))?
                .all(|e| e.is_ok_and(|e| e.file_name() == "FORMAT.next"));
            if !empty {
                return Err(StoreError::NotADataDirectory {
                    path: path.to_path_buf(),
                });
            }
            write_format(path)?;
        }
        Err(e) => return Err(io(&format)(e)),
    }
    Ok(DataDir {
        root: path.to_path_buf(),
        stream: Default::default(),
    })
}

/// Writes `FORMAT` as this version's (see [`replace_file`]).
fn write_format(path: &Path) -> Result<(), StoreError> {
    replace_file(path, "FORMAT", format!("{FORMAT}\n").as_bytes(), false)
}

/// Writes `dir/name` whole: the bytes into `name.next`, synced, then renamed over the
/// old file and the directory synced, so a power loss leaves the old file or the new
/// one, never an empty or half-written one. `private`: readable by the owner only.
fn replace_file(dir: &Path, name: &str, bytes: &[u8], private: bool) -> Result<(), StoreError> {
    let path = dir.join(name);
    let next = dir.join(format!("{name}.next"));
    {
        use std::io::Write;
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut file = options.open(&next).map_err(io(&next))?;
        file.write_all(bytes).map_err(io(&next))?;
        file.sync_all().map_err(io(&next))?;
    }
    std::fs::rename(&next, &path).map_err(io(&path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// What recovery found.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    /// The snapshot loaded, and how many customers it held.
    pub snapshot: Option<(PathBuf, u64)>,
    /// Log records replayed (events and offer actions), after the snapshot.
    pub events: u64,
    pub segments: usize,
    /// The last record's sequence (0 for an empty log).
    pub last_sequence: u64,
    /// A torn tail that was cut: the file, where, and how many bytes.
    pub truncated: Option<(PathBuf, u64, u64)>,
    pub took: Duration,
    /// Changes recorded to bring the change stream in line with the segments
    /// (`Engine::reconcile_stream`), once the log was attached.
    pub stream_changes: u64,
}

impl std::fmt::Display for Recovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((path, customers)) = &self.snapshot {
            write!(
                f,
                "loaded {customers} customers from {}, then ",
                path.display()
            )?;
        }
        write!(
            f,
            "replayed {} log records from {} log files, in {:.2?}",
            self.events, self.segments, self.took
        )?;
        if let Some((path, offset, bytes)) = &self.truncated {
            write!(
                f,
                "; cut a torn write of {bytes} bytes at the end of {} (byte {offset})",
                path.display()
            )?;
        }
        if self.stream_changes > 0 {
            write!(
                f,
                "; recorded {} changes the change stream did not hold",
                self.stream_changes
            )?;
        }
        Ok(())
    }
}

/// The log's segment files, oldest first.
pub fn segments(wal_dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(wal_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io(wal_dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(wal_dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(first) = name
            .strip_suffix(".log")
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push((first, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Why the record at `at` of `bytes` is not whole and valid, or its length.
pub(crate) fn check_record(bytes: &[u8], at: usize) -> Result<(u64, usize), String> {
    let rest = &bytes[at..];
    if rest.len() < HEADER {
        return Err(format!(
            "a record header needs {HEADER} bytes, {} remain",
            rest.len()
        ));
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if !(8..=MAX_PAYLOAD).contains(&len) {
        return Err(format!("record length {len} is impossible"));
    }
    if rest.len() < HEADER + len {
        return Err(format!(
            "the record claims {len} bytes, {} remain",
            rest.len() - HEADER
        ));
    }
    let payload = &rest[HEADER..HEADER + len];
    if crc32c::crc32c(payload) != crc {
        return Err("checksum mismatch".into());
    }
    let sequence = u64::from_le_bytes(payload[..8].try_into().unwrap_or([0; 8]));
    Ok((sequence, len))
}

/// A node on a data directory, recovered and logging: what `omnia serve` runs.
pub struct Store {
    pub data: DataDir,
    pub node: std::sync::Arc<Node>,
    pub wal: std::sync::Arc<wal::Wal>,
    /// The change stream's files and their archiver.
    pub stream: std::sync::Arc<stream::Stream>,
    /// What recovery loaded and replayed.
    pub recovered: Recovered,
}

impl Store {
    /// Opens the data directory at `path` (creating it if missing), recovers an engine
    /// under `config` on `clock` from it (the newest snapshot, then the log after it),
    /// opens the log after the last record recovered and attaches it, so that every
    /// change from now on is logged.
    pub fn open(
        path: &Path,
        config: crate::config::Config,
        clock: std::sync::Arc<dyn crate::clock::Clock>,
        options: wal::WalOptions,
    ) -> Result<Store, StoreError> {
        let data = open_data_dir(path)?;
        let node = std::sync::Arc::new(Node::new(config, clock));
        let recovered = recover(&data, &node)?;
        let stream = stream::Stream::open(
            &data.changes(),
            node.engine().clock(),
            node.config().triggers.retention,
            recovered.last_sequence,
        )?;
        stream.catch_up(&data.wal())?;
        // Opened once per directory and process.
        let _ = data.stream.set(stream.clone());
        let wal = wal::Wal::open(&data.wal(), recovered.last_sequence + 1, options).map_err(
            |source| StoreError::Io {
                path: data.wal(),
                source,
            },
        )?;
        // Before the journal is attached: the first change is already taken.
        stream.start(wal.clone()).map_err(|source| StoreError::Io {
            path: data.changes(),
            source,
        })?;
        node.engine().attach_journal(wal.clone());
        let mut recovered = recovered;
        recovered.stream_changes = node.engine().reconcile_stream();
        Ok(Store {
            data,
            node,
            wal,
            stream,
            recovered,
        })
    }

    /// Waits until everything appended is stored, then closes the log and the change
    /// stream's files.
    pub fn close(self) -> Result<(), String> {
        let stored = self.wal.wait_durable(self.wal.last_appended());
        self.wal.close();
        self.stream.close();
        stored
    }
}

impl wal::WalOptions {
    /// The options the config's `[storage]` table sets.
    pub fn from_settings(storage: &crate::config::StorageSettings) -> wal::WalOptions {
        wal::WalOptions {
            policy: storage.fsync,
            interval: storage.fsync_interval,
            segment_bytes: storage.segment_bytes,
            faults: None,
        }
    }
}

/// Loads the newest snapshot into `engine` (which must be new) and replays the log after
/// it; cuts a torn tail; refuses anything else that is wrong.
pub fn recover(data: &DataDir, node: &Node) -> Result<Recovered, StoreError> {
    let started = Instant::now();
    // Before anything is hashed: the suppression list is keyed by it.
    node.engine()
        .suppression()
        .set_secret(privacy_secret(data)?);
    let (snapshot, cuts, counted_to) = match snapshot::newest(data)? {
        Some(path) => {
            let (image, fingerprint) = snapshot::read(&path)?;
            let cuts = load(node, &image, fingerprint, &path)?;
            let customers = node.engine().stats().customers;
            (Some((path, customers)), cuts, image.engine.position)
        }
        None => (None, Vec::new(), 0),
    };
    // Every record up to `covers` is in the snapshot; later ones may be, shard by shard.
    let covers = cuts.iter().copied().min().unwrap_or(0);
    let wal_dir = data.wal();
    let files = segments(&wal_dir)?;
    if let Some((first, path)) = files.first() {
        if *first > covers + 1 {
            return Err(StoreError::LogGap {
                path: path.clone(),
                first: *first,
                covers,
            });
        }
    }
    let mut events = 0;
    let scanned = scan_log(&files, covers + 1, u64::MAX, TornTail::Cut, |record| {
        record.replay(node, &cuts, counted_to)?;
        events += 1;
        Ok(())
    })?;
    let (expected, truncated) = (scanned.next.unwrap_or(covers + 1), scanned.truncated);
    let last_in_snapshot = cuts.iter().copied().max().unwrap_or(0).max(counted_to);
    Ok(Recovered {
        snapshot,
        events,
        segments: files.len(),
        last_sequence: (expected - 1).max(last_in_snapshot),
        truncated,
        took: started.elapsed(),
        stream_changes: 0,
    })
}

/// Loads a snapshot's image into `engine`: as it is if the engine's config lays rows
/// out the same way, or moved from the layout of the config stored in the snapshot.
fn load(
    node: &Node,
    image: &NodeImage,
    fingerprint: u64,
    path: &Path,
) -> Result<Vec<u64>, StoreError> {
    let from = if fingerprint == snapshot::layout_fingerprint(node.config()) {
        None
    } else {
        let (name, text) = &image.engine.config;
        let mut config = crate::config::Config::from_source(&crate::config::Source::new(
            name.clone(),
            text.clone(),
        ))
        .map_err(|e| StoreError::SnapshotConfig {
            path: path.to_path_buf(),
            reason: format!("the config stored in it ({name}) no longer compiles:\n{e}"),
        })?;
        // `serve --shards` overrides the file; the snapshot knows the count it had.
        config.engine.shards = image.engine.shards.len() as u32;
        tracing::info!(
            snapshot = %path.display(),
            written_under = %name,
            "the config changed since the snapshot: moving profiles into its layout and evaluating every segment"
        );
        Some(crate::engine::Plan::new(config))
    };
    node.restore_with(image, from.as_ref(), &|done, total| {
        tracing::debug!(done, total, "shards loaded");
    })
    .map_err(|e| match e {
        crate::engine::RestoreError::Shard { shard, error } => StoreError::CorruptSnapshot {
            path: path.to_path_buf(),
            offset: snapshot::shard_offset(&image.engine, shard),
            reason: format!("shard {shard}: {error}"),
        },
        crate::engine::RestoreError::Layout(reason) => StoreError::SnapshotConfig {
            path: path.to_path_buf(),
            reason,
        },
    })
}

/// What to do with a record that is not whole and valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TornTail {
    /// At the end of the last file with nothing valid after it, it is a write a crash
    /// tore: cut it off (recovery, before anything else writes the log). Anywhere else
    /// it is corruption.
    Cut,
    /// Always corruption (reading records known to be stored, while the log is live).
    Refuse,
}

/// What a scan of the log found.
pub(crate) struct Scanned {
    /// The sequence after the last record read (`None` if no file held one).
    pub next: Option<u64>,
    /// A torn tail that was cut: the file, where, and how many bytes.
    pub truncated: Option<(PathBuf, u64, u64)>,
}

/// Reads the log `files` (in order, as [`segments`] lists them) record by record,
/// checking every record and that sequences run on without a gap, within and across
/// files, and hands each record from sequence `from` through `upto` to `visit`; stops
/// after `upto`. Recovery and a reload's catch-up both read the log through this.
pub(crate) fn scan_log(
    files: &[(u64, PathBuf)],
    from: u64,
    upto: u64,
    torn: TornTail,
    mut visit: impl FnMut(Record<'_>) -> Result<(), StoreError>,
) -> Result<Scanned, StoreError> {
    let mut expected = files.first().map(|(first, _)| *first);
    let mut truncated = None;
    for (i, (first, path)) in files.iter().enumerate() {
        let next = expected.unwrap_or(*first);
        if next > upto {
            break;
        }
        if *first != next {
            return Err(StoreError::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: format!("the file starts at record {first}, but record {next} comes next"),
            });
        }
        let last_file = i + 1 == files.len();
        let bytes = std::fs::read(path).map_err(io(path))?;
        let mut at = 0;
        let mut expected_here = *first;
        while at < bytes.len() && expected_here <= upto {
            match check_record(&bytes, at) {
                Ok((sequence, len)) => {
                    if sequence != expected_here {
                        return Err(StoreError::Corrupt {
                            path: path.clone(),
                            offset: at as u64,
                            reason: format!(
                                "record {sequence} where record {expected_here} was expected"
                            ),
                        });
                    }
                    if sequence >= from {
                        visit(Record {
                            path,
                            bytes: &bytes,
                            at,
                            len,
                            sequence,
                        })?;
                    }
                    expected_here += 1;
                    at += HEADER + len;
                }
                Err(reason) => {
                    let more_valid = (at + 1..bytes.len()).any(|p| check_record(&bytes, p).is_ok());
                    if torn == TornTail::Refuse || !last_file || more_valid {
                        return Err(StoreError::Corrupt {
                            path: path.clone(),
                            offset: at as u64,
                            reason,
                        });
                    }
                    // A write torn by a crash: nothing valid follows in the last file.
                    let file = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io(path))?;
                    file.set_len(at as u64).map_err(io(path))?;
                    file.sync_all().map_err(io(path))?;
                    tracing::warn!(file = %path.display(), offset = at, bytes = bytes.len() - at, %reason, "cut a torn write at the end of the log");
                    truncated = Some((path.clone(), at as u64, (bytes.len() - at) as u64));
                    break;
                }
            }
        }
        expected = Some(expected_here);
    }
    Ok(Scanned {
        next: expected,
        truncated,
    })
}

/// A whole, checked record of a log file, where it stands.
pub(crate) struct Record<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    at: usize,
    len: usize,
    sequence: u64,
}

impl Record<'_> {
    /// The record's kind.
    pub(crate) fn kind(&self) -> u8 {
        self.bytes[self.at + HEADER + 8]
    }

    /// The whole record as the file holds it, header included.
    pub(crate) fn frame(&self) -> &[u8] {
        &self.bytes[self.at..self.at + HEADER + self.len]
    }

    /// Applies the record to `engine`; an error names the file, offset and record.
    fn replay(&self, node: &Node, cuts: &[u64], counted_to: u64) -> Result<(), StoreError> {
        let payload = &self.bytes[self.at + HEADER + 8..self.at + HEADER + self.len];
        replay(node, payload, self.sequence, cuts, counted_to).map_err(|reason| {
            StoreError::Replay {
                path: self.path.to_path_buf(),
                offset: self.at as u64,
                sequence: self.sequence,
                reason,
            }
        })
    }
}

/// Applies one logged record (its payload after the sequence) to the engine.
/// Replays the events of a one-event INGEST body (an EVENT record's, or what follows an
/// EVENT_WITH_ID record's message id), each unless its shard's cut holds it.
fn replay_events(node: &Node, body: &[u8], sequence: u64, cuts: &[u64]) -> Result<(), String> {
    let batch = IngestBatch::decode(body, Layout::V1).map_err(|e| e.to_string())?;
    let engine = node.engine();
    let replayed = batch.iter().try_for_each(|raw| {
        let event = engine.resolve(&raw).map_err(|e| e.to_string())?;
        engine
            .replay(&event, sequence, cuts)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    replayed
}

fn replay(
    node: &Node,
    payload: &[u8],
    sequence: u64,
    cuts: &[u64],
    counted_to: u64,
) -> Result<(), String> {
    let (kind, body) = payload.split_first().ok_or("an empty record")?;
    match *kind {
        wal::EVENT => replay_events(node, body, sequence, cuts),
        wal::EVENT_WITH_ID => {
            let mut r = crate::codec::Reader::new(body);
            let applied = r
                .u32(&crate::codec::named("second applied"))
                .map_err(|e| e.to_string())?;
            let id = r
                .str(&crate::codec::named("message id"))
                .map_err(|e| e.to_string())?;
            // Remembered whether or not the snapshot holds the change (see `dedup`).
            node.engine().dedup().remember(id, applied);
            replay_events(node, r.rest(), sequence, cuts)
        }
        // The events it followed make the state; the change is the stream's.
        wal::CHANGE => {
            let change = crate::engine::changes::decode(body).map_err(|e| e.to_string())?;
            node.engine().replay_change(&change, sequence, cuts);
            Ok(())
        }
        wal::FORGET => {
            let record = crate::engine::ForgetRecord::decode(body)?;
            node.engine().replay_forget(&record, sequence, cuts);
            Ok(())
        }
        wal::OFFER_ACTION => {
            let action = crate::decide::record::OfferAction::decode(body)?;
            node.replay_offer_action(&action, sequence, cuts, counted_to)
                .map_err(|e| e.to_string())
        }
        wal::ACTION => {
            let record = crate::decide::record::ActionRecord::decode(body)?;
            node.replay_action(&record, sequence, cuts, counted_to)
                .map_err(|e| e.to_string())
        }
        other => Err(format!("unknown record kind {other}")),
    }
}

#[cfg(test)]
mod scan_tests {
    use super::*;

    /// A record with `sequence` and an empty EVENT body, framed as the log frames it.
    fn record(sequence: u64) -> Vec<u8> {
        let mut payload = sequence.to_le_bytes().to_vec();
        payload.push(wal::EVENT);
        payload.extend_from_slice(&0u32.to_le_bytes());
        let mut out = (payload.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    fn log(name: &str, files: &[(u64, Vec<u64>)]) -> (PathBuf, Vec<(u64, PathBuf)>) {
        let dir = std::env::temp_dir().join(format!("omnia-scan-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (first, sequences) in files {
            let bytes: Vec<u8> = sequences.iter().flat_map(|&s| record(s)).collect();
            std::fs::write(wal::segment_path(&dir, *first), bytes).unwrap();
        }
        let found = segments(&dir).unwrap();
        (dir, found)
    }

    fn visited(files: &[(u64, PathBuf)], from: u64, upto: u64) -> Result<Vec<u64>, String> {
        let mut seen = Vec::new();
        scan_log(files, from, upto, TornTail::Refuse, |r| {
            seen.push(r.sequence);
            Ok(())
        })
        .map(|_| seen)
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_scan_visits_the_range_asked_for_across_files() {
        let (dir, files) = log("range", &[(1, vec![1, 2, 3]), (4, vec![4, 5])]);
        assert_eq!(visited(&files, 2, 4), Ok(vec![2, 3, 4]));
        assert_eq!(visited(&files, 1, u64::MAX), Ok(vec![1, 2, 3, 4, 5]));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_gap_within_or_between_files_is_corruption() {
        let (dir, files) = log("gap-in", &[(1, vec![1, 3])]);
        let error = visited(&files, 1, u64::MAX).unwrap_err();
        assert!(
            error.contains("record 3 where record 2 was expected"),
            "{error}"
        );
        std::fs::remove_dir_all(dir).unwrap();
        let (dir, files) = log("gap-between", &[(1, vec![1, 2]), (4, vec![4])]);
        let error = visited(&files, 1, u64::MAX).unwrap_err();
        assert!(
            error.contains("the file starts at record 4, but record 3 comes next"),
            "{error}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
