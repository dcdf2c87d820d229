//! Snapshots: the whole engine in one file, so that recovery replays only the log after
//! it and old log files can be removed.
//!
//! A snapshot is written to `snapshots/next.snap.tmp` (each shard as soon as it is
//! encoded, the header last, once the position is known), synced, renamed to
//! `snapshots/<position>.snap` and the directory synced, so a crash leaves either the
//! old snapshot or the new one, never half of one. Then older snapshots go, and so do
//! the log files whose every record the new snapshot holds.
//!
//! Each shard is cut at its own log sequence (see `engine::image`), so ingest is held
//! up only while one shard is copied. A record is in the snapshot if its sequence is at
//! most the cut of the shard it changed; recovery replays the log from the smallest
//! cut on and skips, per shard, what the image holds.
//!
//! File layout (little-endian):
//!
//! ```text
//! 16 bytes  magic "omnia snapshot\n\0"
//! u32       snapshot format (3; 2 is read too)
//! u64       fingerprint of the profile layout of the config that wrote it
//! u64       position: the log sequence when it was completed
//! u32       shards
//! u32       crc32c of the 40 bytes above
//! (the string table lists freed codes as empty texts: no row holds them)
//! shards x  section: u64 length, u32 crc32c of the body, body (a shard image)
//! 1 x       section whose body is: u32 n, n x u64 offer counters
//! 1 x       section whose body is: u32 n, n x (u32 length, UTF-8): the texts of string
//!           attribute values, code 1 first (rows hold the codes)
//! 1 x       section whose body is: u32 length + UTF-8 name, u32 length + UTF-8 text of
//!           the config that wrote it
//! 1 x       section whose body is: u32 n, n x (16 bytes xxh3-128 hash of a message id,
//!           u32 second it was applied): the message ids remembered (format 3 on)
//! ```
//!
//! Versions: 2 (data directory formats 2 and 3) had no message ids section; 3 (format 4)
//! adds it. Version 2 is read as remembering no ids.
//!
//! Profile rows are laid out by the config. Loaded under a config with the same layout
//! (the fingerprint covers namespaces, channels, attributes, aggregates, segments,
//! scores, offers, experiments and the shard count), a snapshot's rows are used as they
//! are; under another, the config stored in the snapshot says where everything was, and
//! the rows are moved into the new layout (see `engine::relayout`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BufMut;

use super::{io, DataDir, StoreError};
use crate::codec::Fingerprint;
use crate::codec::Write as _;
use crate::config::{Aggregate, Config, Feature, ScoreModel};
use crate::engine::{EngineImage, ShardImage};
use crate::node::{Node, NodeImage};

const MAGIC: &[u8; 16] = b"omnia snapshot\n\0";
const VERSION: u32 = 6;
/// The versions this one reads: 2 lacks the message ids section, 3 the suppression list,
/// 4 the exposures at the end of each shard image (`decide::offers`), 5 the time and
/// channel of a redemption (`decide::state`; it wrote only `redeemed` 0 or 1).
const READS: [u32; 5] = [2, 3, 4, 5, 6];
const HEADER: usize = 16 + 4 + 8 + 8 + 4 + 4;
/// Bytes written between syncs of a snapshot file.
const SYNC_EVERY: usize = 8 << 20;

/// A fingerprint of everything that decides where things are in a profile row and
/// what indexes in the offer state mean: namespaces, channels, attributes, every
/// aggregate (what it counts, its window and buckets), segments, scores (and which are
/// decayed, with a slot in the row), offers, experiments with their arms and goals, the shard
/// count. A canonical encoding ([`Fingerprint`]), so only a change to one of these
/// changes it, not a change to how a type prints itself.
pub fn layout_fingerprint(config: &Config) -> u64 {
    let mut fp = Fingerprint::new();
    fp.strs(config.namespaces.iter().map(String::as_str));
    fp.strs(config.channels.iter().map(String::as_str));
    fp.u32(config.attributes.len() as u32);
    for a in &config.attributes {
        fp.str(&a.name).u8(a.ty as u8);
    }
    fp.u32(config.features.len() as u32);
    for feature in &config.features {
        let matcher = match feature {
            Feature::Window {
                matcher,
                aggregate,
                window,
                bucket_width,
                buckets,
                ..
            } => {
                fp.u8(0).u32(*window).u32(*bucket_width).u32(*buckets);
                match aggregate {
                    Aggregate::Count => fp.u8(0),
                    Aggregate::Sum(property) => fp.u8(1).u64(*property as u64),
                };
                matcher
            }
            Feature::LastSeen { matcher, .. } => {
                fp.u8(1);
                matcher
            }
            Feature::Value {
                matcher,
                property,
                ty,
                last,
                ..
            } => {
                fp.u8(2).u64(*property as u64).u8(*ty as u8).u8(*last as u8);
                matcher
            }
            Feature::Top {
                matcher,
                property,
                window,
                bucket_width,
                buckets,
                ..
            } => {
                fp.u8(3)
                    .u64(*property as u64)
                    .u32(*window)
                    .u32(*bucket_width)
                    .u32(*buckets)
                    .u32(crate::config::TOP_SLOTS as u32);
                matcher
            }
        };
        let index = |i: Option<usize>| i.map_or(u64::MAX, |i| i as u64);
        fp.u64(index(matcher.event)).u64(index(matcher.channel));
        match &matcher.filter {
            None => {
                fp.u8(0);
            }
            Some(filter) => {
                fp.u8(1);
                filter.fingerprint(&mut fp);
            }
        }
    }
    fp.strs(config.segments.iter().map(|s| s.name.as_str()));
    fp.u32(config.scores.len() as u32);
    for s in &config.scores {
        fp.str(&s.name)
            .u8(matches!(s.model, ScoreModel::Decayed { .. }) as u8);
    }
    fp.strs(config.decisions.offers.iter().map(|o| o.name.as_str()));
    fp.u32(config.decisions.experiments.len() as u32);
    for e in &config.decisions.experiments {
        fp.str(&e.name).strs(e.arms.iter().map(|a| a.name.as_str()));
        // A customer's exposure holds one tally per goal of the experiment.
        fp.strs(e.goals.iter().map(|&g| config.goals[g].name.as_str()));
    }
    fp.u32(config.engine.shards);
    fp.finish()
}

/// What writing a snapshot did.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: u64,
    pub position: u64,
    /// The smallest shard cut: every log record up to it is in the snapshot.
    pub covers: u64,
    pub customers: u64,
    pub removed_log_files: usize,
    /// The longest a shard was locked while it was copied.
    pub longest_pause: Duration,
    pub took: Duration,
}

impl std::fmt::Display for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "snapshot {} written: {} customers, {} bytes, covers the log to record {}, in {:.2?} (no shard locked longer than {:.2?}); removed {} log files",
            self.path.display(),
            self.customers,
            self.bytes,
            self.covers,
            self.took,
            self.longest_pause,
            self.removed_log_files
        )
    }
}

fn snapshot_path(dir: &Path, position: u64) -> PathBuf {
    dir.join(format!("{position:020}.snap"))
}

/// Held by whoever writes a snapshot or reloads the config: one at a time, because a
/// snapshot removes log files that a reload may be reading.
pub fn exclusive() -> parking_lot::MutexGuard<'static, ()> {
    static EXCLUSIVE: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
    EXCLUSIVE.lock()
}

/// Takes a snapshot of `node` into the data directory, then removes older snapshots
/// and the log files it covers.
pub fn write(data: &DataDir, node: &Node) -> Result<Written, StoreError> {
    let _exclusive = exclusive();
    if node.engine().is_retired() {
        return Err(StoreError::Replaced);
    }
    let started = Instant::now();
    let mut file = SnapshotFile::create(data)?;
    // Each shard goes to the file as soon as it is encoded: the encoding of the whole
    // engine is never in memory at once.
    let mut cuts = Vec::new();
    let mut failed = None;
    let image = node.image_into(&mut |cut, bytes| {
        cuts.push(cut);
        if failed.is_none() {
            failed = file.section(bytes).err();
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    finish(data, node, file, &image, cuts, started)
}

/// [`write()`] with an image taken already.
pub fn write_image(data: &DataDir, node: &Node, image: NodeImage) -> Result<Written, StoreError> {
    let _exclusive = exclusive();
    if node.engine().is_retired() {
        return Err(StoreError::Replaced);
    }
    let started = Instant::now();
    let mut file = SnapshotFile::create(data)?;
    for shard in &image.engine.shards {
        file.section(&shard.bytes)?;
    }
    let cuts = image.engine.shards.iter().map(|s| s.cut).collect();
    finish(data, node, file, &image, cuts, started)
}

/// A snapshot file being written: its header is written last, once the position is
/// known.
struct SnapshotFile {
    file: std::io::BufWriter<File>,
    tmp: PathBuf,
    bytes: u64,
    unsynced: usize,
}

impl SnapshotFile {
    fn create(data: &DataDir) -> Result<SnapshotFile, StoreError> {
        let dir = data.snapshots();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join("next.snap.tmp");
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let mut file = SnapshotFile {
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            tmp,
            bytes: 0,
            unsynced: 0,
        };
        file.put(&[0; HEADER])?;
        Ok(file)
    }

    /// Synced as it is written: hundreds of megabytes of dirty pages at once would make
    /// the kernel throttle every writer, the log's too, and stall ingest.
    fn put(&mut self, b: &[u8]) -> Result<(), StoreError> {
        for piece in b.chunks(SYNC_EVERY) {
            self.file.write_all(piece).map_err(io(&self.tmp))?;
            self.unsynced += piece.len();
            if self.unsynced >= SYNC_EVERY {
                self.file.flush().map_err(io(&self.tmp))?;
                self.file.get_ref().sync_data().map_err(io(&self.tmp))?;
                self.unsynced = 0;
            }
        }
        self.bytes += b.len() as u64;
        Ok(())
    }

    fn section(&mut self, body: &[u8]) -> Result<(), StoreError> {
        self.put(&(body.len() as u64).to_le_bytes())?;
        self.put(&crc32c::crc32c(body).to_le_bytes())?;
        self.put(body)
    }

    /// Writes the header over its placeholder and syncs the file.
    fn finish(self, header: &[u8]) -> Result<(PathBuf, u64), StoreError> {
        use std::io::{Seek, SeekFrom};
        let tmp = self.tmp;
        let mut file = self
            .file
            .into_inner()
            .map_err(|e| io(&tmp)(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io(&tmp))?;
        file.write_all(header).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        Ok((tmp, self.bytes))
    }
}

/// Writes the sections after the shards and the header, puts the file in place, and
/// removes what it replaces.
fn finish(
    data: &DataDir,
    node: &Node,
    mut file: SnapshotFile,
    image: &NodeImage,
    cuts: Vec<u64>,
    started: Instant,
) -> Result<Written, StoreError> {
    let (engine, counters, image) = (node.engine(), &image.counters, &image.engine);
    let customers = engine.stats().customers;
    // Only what the log holds may be in a snapshot, synced whatever the fsync policy:
    // otherwise a crash, or a power loss, could leave it holding changes the log lost,
    // and the log's next records would reuse their sequences.
    if let Some(journal) = engine.journal() {
        journal
            .sync_through(image.position)
            .map_err(|reason| StoreError::Io {
                path: data.wal(),
                source: std::io::Error::other(reason),
            })?;
    }
    let counters = {
        let mut body = Vec::with_capacity(4 + counters.len() * 8);
        body.put_u32_le(counters.len() as u32);
        for &c in counters {
            body.put_u64_le(c);
        }
        body
    };
    let mut strings = Vec::new();
    strings.put_u32_le(image.strings.len() as u32);
    for text in &image.strings {
        strings.lstr(text);
    }
    let mut config = Vec::new();
    for text in [&image.config.0, &image.config.1] {
        config.lstr(text);
    }
    let mut dedup = Vec::with_capacity(4 + image.dedup.len() * 20);
    dedup.put_u32_le(image.dedup.len() as u32);
    for &(hash, applied) in &image.dedup {
        dedup.put_u128_le(hash);
        dedup.put_u32_le(applied);
    }
    let mut suppressed = Vec::with_capacity(4 + image.suppressed.len() * 16);
    suppressed.put_u32_le(image.suppressed.len() as u32);
    for hash in &image.suppressed {
        suppressed.put_slice(hash);
    }
    for body in [&counters, &strings, &config, &dedup, &suppressed] {
        file.section(body)?;
    }
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&layout_fingerprint(engine.config()).to_le_bytes());
    header.extend_from_slice(&image.position.to_le_bytes());
    header.extend_from_slice(&(cuts.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    let (tmp, bytes) = file.finish(&header)?;
    let dir = data.snapshots();
    let path = snapshot_path(&dir, image.position);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&dir))?;
    // The new snapshot is safe: what it replaces can go.
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let entry = entry.map_err(io(&dir))?;
        let other = entry.path();
        if other != path {
            std::fs::remove_file(&other).map_err(io(&other))?;
        }
    }
    let covers = cuts.iter().copied().min().unwrap_or(0);
    // The change stream copies its records from the log: the log keeps what the
    // stream's files have not synced yet.
    let keep_from = match data.stream() {
        Some(stream) => covers.min(stream.sync().map_err(io(&data.changes()))?),
        None => match super::stream::archived_mark(data)? {
            Some(archived) => covers.min(archived),
            None => covers,
        },
    };
    let removed_log_files = remove_covered_log(&data.wal(), keep_from)?;
    Ok(Written {
        path,
        bytes,
        position: image.position,
        covers,
        customers,
        removed_log_files,
        longest_pause: image.longest_pause,
        took: started.elapsed(),
    })
}

/// Removes the log files whose every record is at most `covers`. The newest file is the
/// one being written and always stays.
fn remove_covered_log(wal: &Path, covers: u64) -> Result<usize, StoreError> {
    let files = super::segments(wal)?;
    let mut removed = 0;
    for pair in files.windows(2) {
        let (_, path) = &pair[0];
        let (next_first, _) = pair[1];
        if next_first - 1 <= covers {
            std::fs::remove_file(path).map_err(io(path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The newest snapshot in the data directory, if any.
pub fn newest(data: &DataDir) -> Result<Option<PathBuf>, StoreError> {
    let dir = data.snapshots();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&dir)(e)),
    };
    let mut newest: Option<(u64, PathBuf)> = None;
    for entry in entries {
        let path = entry.map_err(io(&dir))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().to_string());
        let Some(position) = name
            .as_deref()
            .and_then(|n| n.strip_suffix(".snap"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if newest.as_ref().map_or(true, |(p, _)| position > *p) {
            newest = Some((position, path));
        }
    }
    Ok(newest.map(|(_, path)| path))
}

/// Reads and checks a snapshot written under a config with `config`'s layout.
pub fn read(path: &Path) -> Result<(NodeImage, u64), StoreError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    decode(&bytes, path)
}

/// Checks and splits the bytes of a snapshot file (`path` names it in errors): the
/// image and the layout fingerprint of the config that wrote it. The shard images inside
/// are decoded by [`Node::restore`].
pub fn decode(bytes: &[u8], path: &Path) -> Result<(NodeImage, u64), StoreError> {
    let corrupt = |offset: usize, reason: String| StoreError::CorruptSnapshot {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    if bytes.len() < HEADER {
        return Err(corrupt(
            0,
            format!(
                "the file has {} bytes, a header needs {HEADER}",
                bytes.len()
            ),
        ));
    }
    if &bytes[..16] != MAGIC {
        return Err(corrupt(0, "it does not start as an omnia snapshot".into()));
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
    if crc32c::crc32c(&bytes[..HEADER - 4]) != u32_at(HEADER - 4) {
        return Err(corrupt(0, "header checksum mismatch".into()));
    }
    let version = u32_at(16);
    if !READS.contains(&version) {
        return Err(corrupt(
            16,
            format!("it is in snapshot format {version}, and this version of omnia reads formats 2 to {VERSION} (start the version that wrote it)"),
        ));
    }
    let trailing = match version {
        2 => 3,
        3 => 4,
        _ => 5,
    };
    let fingerprint = u64_at(20);
    let position = u64_at(28);
    let shards = u32_at(36) as usize;
    let mut at = HEADER;
    let mut sections = Vec::with_capacity(shards.min(4096) + trailing);
    for i in 0..shards + trailing {
        let what = match i - shards.min(i) {
            _ if i < shards => format!("shard {i}"),
            0 => "the offer counters".to_string(),
            1 => "the string table".to_string(),
            2 => "the config".to_string(),
            3 => "the message id table".to_string(),
            _ => "the suppression list".to_string(),
        };
        if bytes.len() - at < 12 {
            return Err(corrupt(at, format!("the file ends before {what}")));
        }
        let len = u64_at(at) as usize;
        let crc = u32_at(at + 8);
        let body_at = at + 12;
        if bytes.len() - body_at < len {
            return Err(corrupt(
                at,
                format!(
                    "{what} claims {len} bytes, {} remain",
                    bytes.len() - body_at
                ),
            ));
        }
        let body = &bytes[body_at..body_at + len];
        if crc32c::crc32c(body) != crc {
            return Err(corrupt(at, format!("checksum mismatch in {what}")));
        }
        sections.push((body_at, body));
        at = body_at + len;
    }
    if at != bytes.len() {
        return Err(corrupt(
            at,
            format!("{} bytes after the last section", bytes.len() - at),
        ));
    }
    let mut suppressed = Vec::new();
    if trailing == 5 {
        let (list_at, body) = sections.pop().unwrap_or((at, &[]));
        suppressed = entries(body, 16)
            .ok_or_else(|| corrupt(list_at, "the suppression list is malformed".into()))?
            .map(|c| c.try_into().unwrap_or_default())
            .collect();
    }
    let mut dedup = Vec::new();
    if trailing >= 4 {
        let (dedup_at, body) = sections.pop().unwrap_or((at, &[]));
        dedup = entries(body, 20)
            .ok_or_else(|| corrupt(dedup_at, "the message id table is malformed".into()))?
            .map(|c| {
                (
                    u128::from_le_bytes(c[..16].try_into().unwrap_or_default()),
                    u32::from_le_bytes(c[16..].try_into().unwrap_or_default()),
                )
            })
            .collect();
    }
    let (config_at, config_body) = sections.pop().unwrap_or((at, &[]));
    let config = read_strings(config_body, false)
        .and_then(|mut texts| {
            let text = texts.pop()?;
            let name = texts.pop()?;
            texts.is_empty().then_some((name, text))
        })
        .ok_or_else(|| corrupt(config_at, "the config section is malformed".into()))?;
    let (strings_at, strings_body) = sections.pop().unwrap_or((at, &[]));
    let strings = read_strings(strings_body, true)
        .ok_or_else(|| corrupt(strings_at, "the string table is malformed".into()))?;
    let (counters_at, counters) = sections.pop().unwrap_or((at, &[]));
    let counters = entries(counters, 8)
        .ok_or_else(|| {
            corrupt(
                counters_at,
                "the offer counters section is malformed".into(),
            )
        })?
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    let shards = sections
        .into_iter()
        .map(|(_, body)| ShardImage {
            cut: body
                .get(..8)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default())),
            bytes: body.to_vec(),
        })
        .collect();
    let image = NodeImage {
        engine: EngineImage {
            shards,
            position,
            dedup,
            suppressed,
            strings,
            longest_pause: Duration::ZERO,
            config,
        },
        counters,
    };
    Ok((image, fingerprint))
}

/// The entries of a `u32 n, n × width bytes` section; `None` if its length says
/// otherwise.
fn entries(body: &[u8], width: usize) -> Option<std::slice::ChunksExact<'_, u8>> {
    let n = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
    (body.len() == 4 + n * width).then(|| body[4..].chunks_exact(width))
}

/// Strings as `u32 length + UTF-8` each, after a `u32` count if `counted`, else to the
/// end.
fn read_strings(body: &[u8], counted: bool) -> Option<Vec<String>> {
    let mut r = crate::codec::Reader::new(body);
    let f = || "string".to_string();
    let n = if counted { r.u32(&f).ok()? } else { u32::MAX };
    let mut strings = Vec::with_capacity((n as usize).min(body.len() / 4));
    for _ in 0..n {
        if !counted && r.remaining() == 0 {
            break;
        }
        strings.push(r.lstr(&f).ok()?.to_string());
    }
    r.finish().ok()?;
    Some(strings)
}

/// The byte offset in the snapshot file where shard `shard`'s body starts, for errors.
pub fn shard_offset(image: &EngineImage, shard: usize) -> u64 {
    let before: usize = image.shards[..shard.min(image.shards.len())]
        .iter()
        .map(|s| 12 + s.bytes.len())
        .sum();
    (HEADER + before + 12) as u64
}

/// Takes snapshots in the background: every `interval`, and whenever `log_bytes` more
/// were logged since the last one, whichever comes first.
pub struct Snapshotter {
    stop: crossbeam::channel::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Erasures of forgotten customers from the disk (FORGET), requested by their ids (the
/// FORGET records' sequences) and carried out by the snapshot thread: it starts a new log
/// segment ([`super::wal::Wal::roll`]), frees the strings no profile holds, and writes a
/// snapshot, which removes every log file it covers and the snapshot before it. Then no
/// file holds anything logged up to the erasure: the customer's events and keys in clear
/// are gone (the FORGET record and the snapshot hold its keys only as keyed hashes).
/// Requests that arrive while one is carried out are served by the next, so a flood of
/// forgets costs one snapshot at a time.
pub struct Erasures {
    data: DataDir,
    /// How long an erasure may stay pending before it is reported as overdue.
    within: Duration,
    /// Since when the oldest erasure not done yet has waited, and when it was last
    /// reported overdue.
    waiting: parking_lot::Mutex<(Option<Instant>, Option<Instant>)>,
    /// The highest erasure id requested.
    requested: parking_lot::Mutex<u64>,
    /// Every erasure up to this id is done, at this time (ms since the epoch).
    erased: parking_lot::Mutex<(u64, i64)>,
}

/// Where an erasure stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErasureStatus {
    /// Requested; files still hold what was logged before it.
    Pending,
    /// No file holds anything logged before it; since when, if this process did it.
    Erased { at_ms: Option<i64> },
}

impl Erasures {
    /// Erasures in `data`, each due within `within` (`privacy.erase_within`).
    pub fn new(data: DataDir, within: Duration) -> Erasures {
        Erasures {
            data,
            within,
            waiting: parking_lot::Mutex::new((None, None)),
            requested: parking_lot::Mutex::new(0),
            erased: parking_lot::Mutex::new((0, 0)),
        }
    }

    /// Asks for the erasure of everything logged up to `id`.
    pub fn request(&self, id: u64) {
        let mut requested = self.requested.lock();
        *requested = (*requested).max(id);
        self.waiting.lock().0.get_or_insert_with(Instant::now);
    }

    /// Where erasure `id` stands: done by this process, or judged from the files (no
    /// log file holds a record up to `id`, and the snapshot covers it).
    pub fn status(&self, id: u64) -> Result<ErasureStatus, StoreError> {
        let (through, at_ms) = *self.erased.lock();
        if id <= through {
            return Ok(ErasureStatus::Erased { at_ms: Some(at_ms) });
        }
        let oldest = super::segments(&self.data.wal())?
            .first()
            .map_or(u64::MAX, |(first, _)| *first);
        let covered = newest(&self.data)?
            .and_then(|p| p.file_stem()?.to_str()?.parse::<u64>().ok())
            .is_some_and(|position| position >= id);
        Ok(if oldest > id && covered {
            ErasureStatus::Erased { at_ms: None }
        } else {
            ErasureStatus::Pending
        })
    }

    /// Carries out the erasures requested so far, if any are outstanding.
    fn carry_out(&self, node: &Node) {
        let wanted = *self.requested.lock();
        if wanted <= self.erased.lock().0 {
            return;
        }
        {
            // Reported once a minute while overdue, so an operator sees a stuck disk.
            let mut waiting = self.waiting.lock();
            let since = *waiting.0.get_or_insert_with(Instant::now);
            let reported = waiting
                .1
                .is_some_and(|at| at.elapsed() < Duration::from_secs(60));
            if since.elapsed() > self.within && !reported {
                waiting.1 = Some(Instant::now());
                tracing::error!(
                    pending_s = since.elapsed().as_secs(),
                    erase_within_s = self.within.as_secs(),
                    "an erasure of forgotten customers is overdue (privacy.erase_within): the log or the snapshot keeps failing; see the errors before this one"
                );
            }
        }
        let Some(wal) = node.engine().journal() else {
            return;
        };
        let first = match wal.start_segment() {
            Ok(first) => first,
            Err(e) => {
                tracing::warn!(error = %e, "an erasure waits: the log could not start a new segment; trying again shortly");
                return;
            }
        };
        node.engine().collect_strings();
        match write(&self.data, node) {
            Ok(written) if written.covers + 1 >= first => {
                let now = jiff::Timestamp::now().as_millisecond();
                *self.erased.lock() = (wanted, now);
                let mut waiting = self.waiting.lock();
                // Requests made while this one ran start their own wait.
                *waiting = if *self.requested.lock() > wanted {
                    (Some(Instant::now()), None)
                } else {
                    (None, None)
                };
                tracing::info!(erased_through = wanted, removed_log_files = written.removed_log_files, "erased from disk: what forgotten customers left in the log and the last snapshot");
            }
            Ok(_) => tracing::warn!("an erasure waits: the snapshot did not cover the new log segment yet; trying again shortly"),
            Err(StoreError::Replaced) => {}
            Err(e) => tracing::error!(error = %e, "an erasure waits: its snapshot failed; trying again shortly"),
        }
    }
}

impl Snapshotter {
    /// `node` says which node to snapshot now (a reload swaps it); `erasures`, which
    /// erasures to carry out (checked four times a second).
    pub fn spawn(
        data: DataDir,
        node: std::sync::Arc<dyn Fn() -> std::sync::Arc<Node> + Send + Sync>,
        interval: Option<Duration>,
        log_bytes: Option<u64>,
        erasures: std::sync::Arc<Erasures>,
    ) -> std::io::Result<Snapshotter> {
        let (stop, stopped) = crossbeam::channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("omnia-snapshot".into())
            .spawn(move || {
                let mut last = Instant::now();
                let logged = || node().engine().journal().map_or(0, |j| j.bytes_written());
                let mut logged_at_last = logged();
                loop {
                    match stopped.recv_timeout(Duration::from_millis(250)) {
                        Err(crossbeam::channel::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    erasures.carry_out(&node());
                    let by_time = interval.is_some_and(|i| last.elapsed() >= i);
                    let by_volume =
                        log_bytes.is_some_and(|b| logged() - logged_at_last >= b);
                    if !(by_time || by_volume) {
                        continue;
                    }
                    logged_at_last = logged();
                    last = Instant::now();
                    match write(&data, &node()) {
                        Ok(written) => tracing::info!(
                            reason = if by_time { "interval" } else { "log volume" },
                            "{written}"
                        ),
                        Err(StoreError::Replaced) => {}
                        Err(e) => tracing::error!(error = %e, "the snapshot failed; the log keeps everything, and the next one is tried at the next interval"),
                    }
                }
            })?;
        Ok(Snapshotter {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops taking snapshots, waiting for one being written.
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::layout_fingerprint;
    use crate::config::{Config, Source, DEFAULT_CONFIG};

    fn of(text: &str) -> u64 {
        let config =
            Config::from_source(&Source::new("t.toml", text)).unwrap_or_else(|e| panic!("{e}"));
        layout_fingerprint(&config)
    }

    /// Pinned: the fingerprint is a format's promise ("the same layout"), so a build that
    /// computes it differently for the same config must be a deliberate change.
    #[test]
    fn the_default_configs_fingerprint_is_pinned() {
        assert_eq!(of(DEFAULT_CONFIG), of(DEFAULT_CONFIG));
        assert_eq!(format!("{:016x}", of(DEFAULT_CONFIG)), PINNED);
    }
    const PINNED: &str = "ccc6fe4e8c213213";

    #[test]
    fn what_moves_rows_changes_it_and_nothing_else_does() {
        let base = of(DEFAULT_CONFIG);
        let changed = |from: &str, to: &str| {
            assert!(DEFAULT_CONFIG.contains(from), "{from}");
            of(&DEFAULT_CONFIG.replacen(from, to, 1))
        };
        // A description, a threshold: rules read the same aggregates, the same layout.
        assert_eq!(changed("Spent more than 500", "Spent over 500"), base);
        assert_eq!(changed("90d) > 500", "90d) > 700"), base);
        // A new aggregate, a window, a channel, a shard count: another layout.
        assert_ne!(
            changed("90d) > 500", "90d) > 500 and count(purchase, 3d) > 0"),
            base
        );
        assert_ne!(changed("shards = 16", "shards = 32"), base);
        assert_ne!(
            changed("\"call_center\"]", "\"call_center\", \"kiosk\"]"),
            base
        );
        assert_ne!(changed("window_buckets = 8", "window_buckets = 4"), base);
    }
}
