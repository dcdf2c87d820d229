//! Exactly-once ingest by message id: trackers retry on timeouts, so the same event
//! arrives twice; one whose id was applied within `engine.dedup_window` is
//! acknowledged as a duplicate and not applied again.
//!
//! What is remembered: a 128-bit hash of each message id (xxh3; two ids colliding is
//! about as likely as a disk returning wrong bytes), with the second it was applied. 20
//! bytes of key and value per id (the hash is kept as bytes, so the entry is not padded
//! to a 16-byte alignment), about 24 in the map with its control byte and load factor:
//! 10 million ids in a day's window hold about 240 MB.
//!
//! Invariants:
//! - an id is claimed ([`Dedup::claim`]) under the lock its event's change is made
//!   under (the identity mutex when the event creates a customer or merges some, else
//!   the customer's shard lock), before anything changes, and its log record is
//!   appended under the same lock: of two copies only one is applied, a copy that loses
//!   changes nothing, and an event refused before it is applied (unknown type, a log
//!   that cannot store) claims nothing; one refused after (a full shard) releases it;
//! - a copy's answer waits until the original's record is stored, as the original's
//!   own answer does (`Engine` takes both locks once, then waits for the log);
//! - a snapshot copies the ids once every shard is cut and reads its position after
//!   taking each of those locks once, so it never holds an id whose record is after it;
//! - every applied event with an id has its id and time in its log record (journal kind
//!   `EVENT_WITH_ID`); recovery remembers the id of every record it reads, whether the
//!   snapshot already holds its change or not, and a snapshot holds the ids remembered
//!   once all its shards were cut, which covers every record before its cuts;
//! - ids older than the window are forgotten, in sweeps at most every 1/64 of the
//!   window, so memory follows the window, not the uptime;
//! - memory is bounded whatever senders do: past `max_ids` remembered ids, the tick's
//!   sweep halves the window it keeps until they fit (a warning says so), so a flood of
//!   unique ids shortens how long copies are caught instead of exhausting memory.
//!
//! Data flow: `Engine::ingest` claims; the log replays (`remember`); snapshots copy
//! ([`Dedup::entries`]) and restore ([`Dedup::restore`]); a reload's new engine takes
//! over the old one's ([`Dedup::take_from`]); the tick sweeps ([`Dedup::sweep`]).

use std::sync::atomic::{AtomicU32, Ordering};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

/// The remembered ids (see the module doc).
pub struct Dedup {
    /// Seconds an id is remembered; 0 turns deduplication off.
    window: u32,
    /// Most ids remembered after a sweep.
    max_ids: usize,
    /// Hash of the id (little-endian bytes) -> the second it was applied.
    seen: DashMap<[u8; 16], u32, ahash::RandomState>,
    /// When the last sweep ran.
    swept: AtomicU32,
}

/// One remembered id, as a snapshot stores it: its hash and the second it was applied.
pub type Remembered = (u128, u32);

fn hash(id: &str) -> [u8; 16] {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes()).to_le_bytes()
}

impl Dedup {
    pub fn new(window: u32, max_ids: usize) -> Dedup {
        Dedup {
            window,
            max_ids,
            seen: DashMap::default(),
            swept: AtomicU32::new(0),
        }
    }

    fn live(&self, applied: u32, now: u32) -> bool {
        now.saturating_sub(applied) < self.window
    }

    /// Whether `id` was applied within the window before `now`: a copy of it is a
    /// duplicate.
    pub fn seen(&self, id: &str, now: u32) -> bool {
        self.window > 0 && self.seen.get(&hash(id)).is_some_and(|t| self.live(*t, now))
    }

    /// Claims `id` for an event about to be applied at `now`: `false` if it was applied
    /// within the window (a duplicate: do not apply it). Call it only where the event
    /// is then certainly applied (see the module doc).
    pub fn claim(&self, id: &str, now: u32) -> bool {
        if self.window == 0 {
            return true;
        }
        match self.seen.entry(hash(id)) {
            Entry::Occupied(mut e) => {
                if self.live(*e.get(), now) {
                    return false;
                }
                e.insert(now);
                true
            }
            Entry::Vacant(e) => {
                e.insert(now);
                true
            }
        }
    }

    /// Gives back a claim whose event was not applied after all (its shard was full).
    pub fn release(&self, id: &str) {
        self.seen.remove(&hash(id));
    }

    /// Recovery read a record of `id` applied at `applied`.
    pub fn remember(&self, id: &str, applied: u32) {
        if self.window > 0 {
            let mut t = self.seen.entry(hash(id)).or_insert(applied);
            *t = (*t).max(applied);
        }
    }

    /// Forgets ids older than the window, unless a sweep ran less than 1/64 of the
    /// window ago and no more than `max_ids` are remembered; past `max_ids`, also the
    /// oldest, halving the window kept until they fit. Returns how many were forgotten.
    pub fn sweep(&self, now: u32) -> usize {
        let every = (self.window / 64).max(1);
        let last = self.swept.load(Ordering::Relaxed);
        let over = self.seen.len() > self.max_ids;
        if self.window == 0 || (now.saturating_sub(last) < every && !over) {
            return 0;
        }
        self.swept.store(now, Ordering::Relaxed);
        let before = self.seen.len();
        let mut keep = self.window;
        self.seen.retain(|_, t| now.saturating_sub(*t) < keep);
        while self.seen.len() > self.max_ids && keep > 1 {
            keep /= 2;
            self.seen.retain(|_, t| now.saturating_sub(*t) < keep);
        }
        if keep < self.window {
            tracing::warn!(
                remembered = self.seen.len(),
                max = self.max_ids,
                kept_seconds = keep,
                "more message ids than engine.dedup_max_ids: copies are caught for a shorter time than engine.dedup_window"
            );
        }
        before.saturating_sub(self.seen.len())
    }

    /// Ids remembered now, for a snapshot.
    pub fn entries(&self) -> Vec<Remembered> {
        let mut all: Vec<Remembered> = self
            .seen
            .iter()
            .map(|e| (u128::from_le_bytes(*e.key()), *e.value()))
            .collect();
        all.sort_unstable();
        all
    }

    /// Loads ids a snapshot remembered.
    pub fn restore(&self, entries: &[Remembered]) {
        if self.window == 0 {
            return;
        }
        for &(h, t) in entries {
            let mut at = self.seen.entry(h.to_le_bytes()).or_insert(t);
            *at = (*at).max(t);
        }
    }

    /// Takes over what `old` remembers: a reload's new engine goes on where it stopped.
    pub fn take_from(&self, old: &Dedup) {
        self.restore(&old.entries());
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_claimed_once_per_window_and_forgotten_after_it() {
        let d = Dedup::new(100, 1000);
        assert!(d.claim("m-1", 1000));
        assert!(!d.claim("m-1", 1000));
        assert!(!d.claim("m-1", 1099), "still inside the window");
        assert!(d.seen("m-1", 1099));
        assert!(!d.seen("m-1", 1100), "the window is over");
        assert!(
            d.claim("m-1", 1100),
            "claimed again once the window is over"
        );
        assert!(d.claim("m-2", 1100));
        // Sweeps forget what is older than the window, at most every window/64 s.
        assert_eq!(d.sweep(1150), 0);
        assert_eq!(d.sweep(1200), 2);
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn past_max_ids_the_oldest_are_forgotten_first() {
        let d = Dedup::new(1000, 10);
        for i in 0..20u32 {
            assert!(d.claim(&format!("m-{i}"), 100 + i * 10));
        }
        // At 300 the ids are 10 to 200 s old: halving the kept window to 125 s leaves
        // ids 8 to 19 (12, too many), to 62 s ids 14 to 19.
        d.sweep(300);
        assert!(d.len() <= 10, "{}", d.len());
        assert!(d.seen("m-19", 300), "the newest stays");
        assert!(!d.seen("m-0", 300), "the oldest goes first");
    }

    #[test]
    fn snapshots_and_reloads_carry_the_ids() {
        let d = Dedup::new(100, 1000);
        d.claim("m-1", 10);
        d.remember("m-2", 20);
        let next = Dedup::new(100, 1000);
        next.restore(&d.entries());
        assert!(!next.claim("m-1", 50));
        assert!(!next.claim("m-2", 50));
        let off = Dedup::new(0, 1000);
        assert!(
            off.claim("m-1", 10) && off.claim("m-1", 10),
            "a window of 0 is off"
        );
        off.restore(&d.entries());
        assert!(off.is_empty());
    }
}
