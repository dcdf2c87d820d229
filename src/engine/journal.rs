//! The engine's log: the seam between the engine and whatever stores its changes.
//!
//! The engine appends a record for every change it applies, under the lock of the shard
//! the change is in and just before applying it, and notes the record's sequence in the
//! request's [`Receipt`](super::Receipt); the server answers the request once
//! [`Journal::durable`] says that sequence is stored. The engine knows nothing of files:
//! `store::wal::Wal` implements this trait with segment files and group commit, and a
//! remote log (a partition stream of a cluster) can implement it with an asynchronous
//! append, which is why an append only assigns a sequence and durability is awaited
//! apart.
//!
//! Invariants every implementation keeps:
//! - sequences start after the last one recovered and grow by one per append, with no
//!   gap, in the order of the appends;
//! - an appended record is never dropped while the journal is open: it is stored, or,
//!   if the journal is closed first, it was never reported durable;
//! - [`Journal::writable`] says no while appended records cannot be stored; the engine
//!   then refuses changes before applying them.

use std::future::Future;
use std::pin::Pin;

/// Record kinds: what a record's body is.
pub mod kind {
    /// An event, as a one-event INGEST body (`codec::events::encode_one`).
    pub const EVENT: u8 = 1;
    /// A change to a customer's offer state alone (`decide::record::OfferAction`): written
    /// by data directory format 2, still replayed.
    pub const OFFER_ACTION: u8 = 2;
    /// One action on one customer: a recorded decision or a feedback, profile events and
    /// offer state together (`decide::record::ActionRecord`, see `engine::action`).
    pub const ACTION: u8 = 3;
    /// An event with its message id (see `engine::dedup`): `u32 second applied, str
    /// message id`, then the event as in [`EVENT`]. Data directory format 4 on.
    pub const EVENT_WITH_ID: u8 = 4;
    /// A customer forgotten (`engine::forget::ForgetRecord`): no key in clear. Data
    /// directory format 5 on.
    pub const FORGET: u8 = 5;
    /// A segment membership change (`engine::changes`): the change stream. Data
    /// directory format 6 on.
    pub const CHANGE: u8 = 6;
}

/// Where the engine's changes are stored, in order.
pub trait Journal: Send + Sync {
    /// Whether changes may be applied now: `Err` says why not (a full disk, say).
    fn writable(&self) -> Result<(), String>;

    /// Appends a record of `kind` whose body `body` writes; returns its sequence. The
    /// record is stored later: see [`Journal::durable`].
    fn append(&self, kind: u8, body: &mut dyn FnMut(&mut Vec<u8>)) -> u64;

    /// The last sequence appended.
    fn last_appended(&self) -> u64;

    /// The highest sequence stored now, as the journal's durability policy promises.
    fn durable_now(&self) -> u64;

    /// Resolves once `sequence` is stored as the policy promises; an error if it never
    /// will be (the journal was closed without storing it).
    fn durable(
        &self,
        sequence: u64,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;

    /// [`Journal::durable`] for threads outside the async runtime; fails at once while
    /// the journal cannot store (a snapshot tries again later).
    fn wait_durable(&self, sequence: u64) -> Result<(), String>;

    /// Blocks until every record through `sequence` is on stable storage, whatever the
    /// policy: a snapshot that assumes them must not outlive them.
    fn sync_through(&self, sequence: u64) -> Result<(), String>;

    /// Bytes stored since the journal was opened (snapshots are taken by volume).
    fn bytes_written(&self) -> u64;

    /// Starts a new segment: every record appended so far is stored apart from the ones
    /// after, so they can be removed once a snapshot covers them (the erasure of a
    /// forgotten customer). Returns the first sequence of the new segment. A journal that
    /// cannot says why.
    fn start_segment(&self) -> Result<u64, String> {
        Err("this journal cannot start a new segment".into())
    }

    /// Whether the journal stores changes now.
    fn is_healthy(&self) -> bool {
        self.writable().is_ok()
    }
}
