//! The triggers' deliveries journal: `triggers/deliveries.log`, what the trigger runner
//! (`server::triggers`) has scheduled, prepared, attempted and finished, so that a
//! delivery pending at a crash is delivered after the restart, once per delivery id.
//!
//! Format (version 1): one record a line, `CRC SP JSON LF`, where CRC is the CRC-32C
//! of the JSON text in 8 lowercase hex digits and JSON one [`DeliveryRecord`]. Lines
//! are appended and synced before the runner acts on them: a `Cursor` after the
//! `Scheduled` records of the changes it covers, a `Prepared` (the document, with the
//! decision made for it) before the first attempt, an outcome after each attempt.
//!
//! Recovery ([`Deliveries::open`]) reads the lines in order and stops at the first
//! that is cut short or fails its checksum: a write torn by a crash is only ever the
//! last, because every write is synced before the next one starts. What follows it is
//! cut off (and said in the log). The state read back is then written anew, compacted
//! (the cursor, the open deliveries, the dead letters), through a file that replaces
//! the journal atomically; the runner compacts the same way when the journal grows
//! past [`COMPACT_BYTES`].
//!
//! Invariants: a delivery id is `TRIGGER-POSITION`, the trigger's name and the stream
//! position of the change it acts on, so it names one action for ever, and a change
//! read again after a crash (its `Cursor` lost with the torn tail) finds its delivery
//! open already. Once a delivery is finished (delivered, dead or cancelled), the cursor
//! is past its change, so it is never scheduled again.
//!
//! The journal holds customer ids, not keys, until a delivery is prepared; a prepared
//! document names the customer's keys, and leaves the journal at the next compaction
//! after it is finished.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::StoreError;

/// The journal is compacted when it grows past this many bytes.
pub const COMPACT_BYTES: u64 = 8 << 20;
/// Dead letters kept (the newest); older ones leave at the next compaction.
pub const MAX_DEAD_LETTERS: usize = 1000;

const FILE: &str = "deliveries.log";

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum DeliveryRecord {
    /// Every change up to `position` is scheduled (or needs nothing).
    Cursor { position: u64 },
    /// A change made a delivery due at `due_ms`.
    Scheduled {
        id: String,
        trigger: String,
        position: u64,
        customer: u32,
        generation: u32,
        /// The change's time, in seconds since the Unix epoch.
        time: u32,
        due_ms: i64,
    },
    /// The delivery waits until `due_ms` (quiet hours).
    Deferred { id: String, due_ms: i64 },
    /// The document to send, fixed before the first attempt so that every attempt
    /// sends the same.
    Prepared { id: String, body: String },
    /// Attempt `attempt` failed; the next is due at `retry_ms`.
    Failed {
        id: String,
        attempt: u32,
        at_ms: i64,
        error: String,
        retry_ms: i64,
    },
    /// Attempt `attempt` was answered with a success.
    Delivered {
        id: String,
        attempt: u32,
        at_ms: i64,
        status: u16,
    },
    /// The delivery was given up after `attempt` attempts.
    Dead {
        id: String,
        attempt: u32,
        at_ms: i64,
        error: String,
    },
    /// The delivery is not made: the customer left the segment, the rule no longer
    /// holds, ...
    Cancelled { id: String, at_ms: i64, why: String },
}

/// A delivery not finished yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: String,
    pub trigger: String,
    pub position: u64,
    pub customer: u32,
    pub generation: u32,
    pub time: u32,
    pub due_ms: i64,
    pub body: Option<String>,
    /// Attempts made so far.
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// A delivery given up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub trigger: String,
    pub position: u64,
    pub attempts: u32,
    pub at_ms: i64,
    pub error: String,
}

/// What the journal says: the state a runner starts from.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DeliveryState {
    /// Every change up to here is scheduled.
    pub cursor: u64,
    pub open: HashMap<String, Delivery>,
    /// Oldest first.
    pub dead: VecDeque<DeadLetter>,
}

impl DeliveryState {
    /// Applies one record.
    pub fn apply(&mut self, record: &DeliveryRecord) {
        match record {
            DeliveryRecord::Cursor { position } => self.cursor = self.cursor.max(*position),
            DeliveryRecord::Scheduled {
                id,
                trigger,
                position,
                customer,
                generation,
                time,
                due_ms,
            } => {
                self.open.entry(id.clone()).or_insert_with(|| Delivery {
                    id: id.clone(),
                    trigger: trigger.clone(),
                    position: *position,
                    customer: *customer,
                    generation: *generation,
                    time: *time,
                    due_ms: *due_ms,
                    body: None,
                    attempts: 0,
                    last_error: None,
                });
            }
            DeliveryRecord::Deferred { id, due_ms } => {
                if let Some(d) = self.open.get_mut(id) {
                    d.due_ms = *due_ms;
                }
            }
            DeliveryRecord::Prepared { id, body } => {
                if let Some(d) = self.open.get_mut(id) {
                    d.body = Some(body.clone());
                }
            }
            DeliveryRecord::Failed {
                id,
                attempt,
                error,
                retry_ms,
                ..
            } => {
                if let Some(d) = self.open.get_mut(id) {
                    d.attempts = *attempt;
                    d.last_error = Some(error.clone());
                    d.due_ms = *retry_ms;
                }
            }
            DeliveryRecord::Delivered { id, .. } | DeliveryRecord::Cancelled { id, .. } => {
                self.open.remove(id);
            }
            DeliveryRecord::Dead {
                id,
                attempt,
                at_ms,
                error,
            } => {
                if let Some(d) = self.open.remove(id) {
                    self.dead.push_back(DeadLetter {
                        id: id.clone(),
                        trigger: d.trigger,
                        position: d.position,
                        attempts: *attempt,
                        at_ms: *at_ms,
                        error: error.clone(),
                    });
                    while self.dead.len() > MAX_DEAD_LETTERS {
                        self.dead.pop_front();
                    }
                }
            }
        }
    }

    /// The records that rebuild this state (a compacted journal).
    pub fn records(&self) -> Vec<DeliveryRecord> {
        let mut out = vec![DeliveryRecord::Cursor {
            position: self.cursor,
        }];
        let mut open: Vec<&Delivery> = self.open.values().collect();
        open.sort_by(|a, b| (a.position, &a.id).cmp(&(b.position, &b.id)));
        for d in open {
            out.push(DeliveryRecord::Scheduled {
                id: d.id.clone(),
                trigger: d.trigger.clone(),
                position: d.position,
                customer: d.customer,
                generation: d.generation,
                time: d.time,
                due_ms: d.due_ms,
            });
            if let Some(body) = &d.body {
                out.push(DeliveryRecord::Prepared {
                    id: d.id.clone(),
                    body: body.clone(),
                });
            }
            if d.attempts > 0 {
                out.push(DeliveryRecord::Failed {
                    id: d.id.clone(),
                    attempt: d.attempts,
                    at_ms: d.due_ms,
                    error: d.last_error.clone().unwrap_or_default(),
                    retry_ms: d.due_ms,
                });
            }
        }
        // A dead letter is rebuilt as a delivery scheduled and given up.
        for dead in &self.dead {
            out.push(DeliveryRecord::Scheduled {
                id: dead.id.clone(),
                trigger: dead.trigger.clone(),
                position: dead.position,
                customer: 0,
                generation: 0,
                time: 0,
                due_ms: dead.at_ms,
            });
            out.push(DeliveryRecord::Dead {
                id: dead.id.clone(),
                attempt: dead.attempts,
                at_ms: dead.at_ms,
                error: dead.error.clone(),
            });
        }
        out
    }
}

/// The journal file, open for appending.
pub struct Deliveries {
    dir: PathBuf,
    file: File,
    bytes: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One record as a line.
fn line(record: &DeliveryRecord) -> String {
    let json = serde_json::to_string(record).expect("a delivery record serializes");
    format!("{:08x} {json}\n", crc32c::crc32c(json.as_bytes()))
}

/// One line back, or `None` if it is cut short or damaged.
fn parse(line: &str) -> Option<DeliveryRecord> {
    let line = line.strip_suffix('\n')?;
    let (crc, json) = line.split_once(' ')?;
    let crc = u32::from_str_radix(crc, 16).ok()?;
    (crc32c::crc32c(json.as_bytes()) == crc)
        .then(|| serde_json::from_str(json).ok())
        .flatten()
}

impl Deliveries {
    /// Opens (or creates) the journal in `dir`, reads it back, and compacts it.
    pub fn open(dir: &Path) -> Result<(Deliveries, DeliveryState), StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(FILE);
        let mut state = DeliveryState::default();
        match File::open(&path) {
            Ok(file) => {
                let mut reader = BufReader::new(file);
                let mut text = String::new();
                let mut offset = 0u64;
                loop {
                    text.clear();
                    let read = match reader.read_line(&mut text) {
                        Ok(n) => n,
                        // Not UTF-8: damaged, as a bad checksum would say.
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => usize::MAX,
                        Err(e) => return Err(io(&path)(e)),
                    };
                    if read == 0 {
                        break;
                    }
                    let Some(record) = (read != usize::MAX).then(|| parse(&text)).flatten() else {
                        warn!(
                            path = %path.display(),
                            offset,
                            "the deliveries journal ends in a torn or damaged line; it is cut off there"
                        );
                        break;
                    };
                    state.apply(&record);
                    offset += read as u64;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        let mut journal = Deliveries {
            dir: dir.to_path_buf(),
            file: Self::create(&path)?,
            bytes: 0,
        };
        journal.rewrite(&state)?;
        Ok((journal, state))
    }

    fn create(path: &Path) -> Result<File, StoreError> {
        let mut options = OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(path).map_err(io(path))
    }

    /// Appends `records` and syncs them.
    pub fn append(&mut self, records: &[DeliveryRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(FILE);
        let text: String = records.iter().map(line).collect();
        self.file.write_all(text.as_bytes()).map_err(io(&path))?;
        self.file.sync_data().map_err(io(&path))?;
        self.bytes += text.len() as u64;
        Ok(())
    }

    /// Whether the journal has grown enough to be compacted.
    pub fn wants_compaction(&self) -> bool {
        self.bytes > COMPACT_BYTES
    }

    /// Replaces the journal with the records of `state`.
    pub fn rewrite(&mut self, state: &DeliveryState) -> Result<(), StoreError> {
        let text: String = state.records().iter().map(line).collect();
        super::replace_file(&self.dir, FILE, text.as_bytes(), true)?;
        let path = self.dir.join(FILE);
        self.file = Self::create(&path)?;
        self.file
            .seek(std::io::SeekFrom::End(0))
            .map_err(io(&path))?;
        self.bytes = text.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduled(id: &str, position: u64) -> DeliveryRecord {
        DeliveryRecord::Scheduled {
            id: id.into(),
            trigger: "t".into(),
            position,
            customer: 7,
            generation: 1,
            time: 100,
            due_ms: 1000,
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("omnia-deliveries-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_journal_reads_back_what_was_appended_and_compacts_it() {
        let dir = temp("roundtrip");
        let (mut journal, state) = Deliveries::open(&dir).unwrap();
        assert_eq!(state, DeliveryState::default());
        journal
            .append(&[
                scheduled("t-1", 1),
                scheduled("t-2", 2),
                scheduled("t-3", 3),
                DeliveryRecord::Cursor { position: 3 },
                DeliveryRecord::Prepared {
                    id: "t-1".into(),
                    body: "{}".into(),
                },
                DeliveryRecord::Failed {
                    id: "t-1".into(),
                    attempt: 1,
                    at_ms: 2000,
                    error: "503".into(),
                    retry_ms: 5000,
                },
                DeliveryRecord::Delivered {
                    id: "t-2".into(),
                    attempt: 1,
                    at_ms: 2000,
                    status: 200,
                },
                DeliveryRecord::Dead {
                    id: "t-3".into(),
                    attempt: 8,
                    at_ms: 9000,
                    error: "refused".into(),
                },
            ])
            .unwrap();
        drop(journal);
        let (_journal, state) = Deliveries::open(&dir).unwrap();
        assert_eq!(state.cursor, 3);
        assert_eq!(state.open.len(), 1);
        let open = &state.open["t-1"];
        assert_eq!(open.body.as_deref(), Some("{}"));
        assert_eq!((open.attempts, open.due_ms), (1, 5000));
        assert_eq!(state.dead.len(), 1);
        assert_eq!(state.dead[0].id, "t-3");
        // Compacted, it says the same again.
        let (_journal, again) = Deliveries::open(&dir).unwrap();
        assert_eq!(again, state);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_or_damaged_line_ends_the_journal_there() {
        let dir = temp("torn");
        let (mut journal, _) = Deliveries::open(&dir).unwrap();
        journal
            .append(&[scheduled("t-1", 1), DeliveryRecord::Cursor { position: 1 }])
            .unwrap();
        drop(journal);
        let path = dir.join(FILE);
        // A line with a wrong checksum, then one cut short.
        let mut text = std::fs::read_to_string(&path).unwrap();
        let bad = line(&scheduled("t-2", 2)).replacen('0', "1", 1);
        text.push_str(&bad);
        text.push_str(&line(&scheduled("t-3", 3))[..20]);
        std::fs::write(&path, text).unwrap();
        let (_journal, state) = Deliveries::open(&dir).unwrap();
        assert_eq!(state.cursor, 1);
        assert_eq!(state.open.keys().collect::<Vec<_>>(), vec!["t-1"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_delivery_scheduled_twice_stays_as_first_scheduled() {
        let mut state = DeliveryState::default();
        state.apply(&scheduled("t-1", 1));
        state.apply(&DeliveryRecord::Prepared {
            id: "t-1".into(),
            body: "x".into(),
        });
        state.apply(&scheduled("t-1", 1));
        assert_eq!(state.open["t-1"].body.as_deref(), Some("x"));
    }
}
