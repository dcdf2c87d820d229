//! The engine: identity, sharded profiles, segments, scores, timers and queries.
//!
//! Data flow for one event: [`Engine::resolve`] turns a [`RawEvent`] into an [`Event`]
//! (names to ids); [`Engine::apply`] finds the customer through the identity map, takes
//! that customer's shard lock, runs the shard's due timers, updates the aggregates the
//! config keeps, re-evaluates only the segments the event can change (the dependency
//! index), updates bitmaps where membership flipped, and schedules the customer's next
//! time-driven re-evaluation.
//!
//! Identity. The map from key text (`namespace:value`) to customer is a `DashMap`; each
//! entry holds the customer id and the generation of its slot. The common case, every
//! key of the event already known and pointing at the same customer, takes no global
//! lock: read the map, lock the shard, check the slot's generation (a merge that freed
//! the slot in between bumps it), apply. Anything that changes identities, a new
//! customer, a new key, or keys of different customers that must merge, goes through
//! one identity mutex, so two events can never create two profiles for one key or
//! merge the same pair twice. Lock order: identity mutex, then shard locks in index
//! order, then map entries; the fast path takes a map entry before a shard lock but
//! never holds it while waiting.
//!
//! Merges keep the profile whose best key has the most preferred namespace (the order
//! of `identity.namespaces`), ties to the lower id. The other profile's aggregates are
//! folded in, its keys repointed, it leaves every bitmap, its slot is freed, and the
//! survivor's segments are all re-evaluated before the event that caused the merge is
//! applied. Merges chain: an event with keys of three customers merges all three.
//!
//! Admission. Every change ([`Engine::ingest`], a decision that records an impression,
//! a feedback) first asks [`Engine::writable`]: while the write-ahead log cannot store
//! changes (a full disk), it is refused before anything is applied, so the engine never
//! shows what it did not log.
//!
//! Actions. A change that a layer above makes to one customer, profile and more, as one
//! log record under one shard lock (a decision that records impressions, a feedback) is
//! an `action::Action`, run by `Engine::act`: the engine finds or creates the customer,
//! logs the action's record and applies its events; what else it changes is the
//! action's own business (see `action`).
//!
//! Strings. Attribute string values are interned codes counted by the rows that hold
//! them (see `config::rule::Interner`); the tick frees the ones no row holds. A change
//! holds the string gate for reading from resolution to application, and a sweep takes
//! it for writing, so a code in hand is never freed before a row holds it.

pub(crate) mod action;
pub mod changes;
pub mod dedup;
pub mod drift;
pub(crate) mod eval;
pub mod event;
pub mod extension;
pub mod forget;
mod image;
pub mod journal;
mod profile;
pub mod query;
mod relayout;
pub(crate) mod shard;
pub mod suppression;
mod top;
pub mod view;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam::utils::CachePadded;
use dashmap::DashMap;
use parking_lot::{Mutex, MutexGuard};

pub use event::{Event, EventError, EventView, Key, RawEvent, RawValue};
pub use image::{EngineImage, RestoreError, ShardImage};
use profile::{Layout, Ring};
pub use query::{Page, QueryError, SetQuery};
use shard::ShardState;
pub use view::ProfileView;

use crate::clock::Clock;
use crate::config::Config;
pub use extension::Extension;
pub use forget::{ForgetError, ForgetRecord, Forgotten};
pub use journal::Journal;

/// Dense customer id: the shard in the high bits, the slot in the low bits.
pub use crate::model::CustomerId;

/// The compiled config with everything the hot path needs precomputed.
pub(crate) struct Plan {
    pub config: Arc<Config>,
    pub layout: Layout,
    pub rings: Vec<Option<Ring>>,
}

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The customer the event now belongs to.
    pub customer: CustomerId,
    /// Whether a new profile was created for it.
    pub created: bool,
    /// How many other profiles were merged into the customer.
    pub merged: usize,
    /// The event's message id was applied within the dedup window: this copy was not
    /// applied (see `dedup`).
    pub duplicate: bool,
}

impl Applied {
    /// A copy of an event already applied (see `dedup`), of `customer` if known.
    fn duplicate(customer: CustomerId) -> Applied {
        Applied {
            customer,
            created: false,
            merged: 0,
            duplicate: true,
        }
    }
}

/// An event's message id to claim before it is applied, at `now` (seconds).
pub(crate) struct Claim<'a> {
    id: &'a str,
    now: u32,
}

/// The log records one request appended, so that its reply waits for exactly those:
/// a read-only request's receipt stays empty and its reply waits for nothing. Sequences
/// grow, so the last one covers the request's others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Receipt {
    last: Option<u64>,
}

impl Receipt {
    /// Notes a record the request appended.
    pub fn logged(&mut self, sequence: u64) {
        self.last = Some(self.last.map_or(sequence, |last| last.max(sequence)));
    }

    /// The last record the request appended, if it appended any.
    pub fn last(&self) -> Option<u64> {
        self.last
    }
}

/// Counters over the engine's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    pub customers: u64,
    pub keys: u64,
    pub events_applied: u64,
    pub merges: u64,
    /// Customers forgotten (FORGET) since the engine started.
    pub forgotten: u64,
    pub profile_bytes: u64,
    pub pending_timers: u64,
    /// Membership changes recorded on the change stream, this engine's and those of
    /// the engines it replaced by reloads.
    pub changes_recorded: u64,
}

/// A customer reference as the identity map stores it: id and slot generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CustomerRef {
    id: CustomerId,
    generation: u32,
}

impl CustomerRef {
    fn pack(self) -> u64 {
        self.id as u64 | (self.generation as u64) << 32
    }
    fn unpack(v: u64) -> Self {
        CustomerRef {
            id: v as u32,
            generation: (v >> 32) as u32,
        }
    }
}

/// The omnia engine, usable in-process and shared between threads. `X` is what the
/// layer above keeps per customer in each shard (see `extension`); `()` keeps nothing.
pub struct Engine<X: Extension = ()> {
    plan: Plan,
    shards: Box<[CachePadded<Mutex<ShardState<X>>>]>,
    local_bits: u32,
    identity: DashMap<compact_str::CompactString, u64, ahash::RandomState>,
    identity_writes: Mutex<()>,
    clock: Arc<dyn Clock>,
    hasher: ahash::RandomState,
    events_applied: AtomicU64,
    merges: AtomicU64,
    /// Change records appended to the journal (see `changes`); a reload's engine takes
    /// over its predecessor's count.
    changes_recorded: AtomicU64,
    /// Where accepted changes are logged, once recovery has replayed the old ones.
    journal: std::sync::OnceLock<Arc<dyn Journal>>,
    /// What live ingest dropped or refused by name (see `drift`).
    drift: drift::Drift,
    /// Message ids applied within the dedup window (see `dedup`).
    dedup: dedup::Dedup,
    /// Which shards a snapshot being made has cut (see `image`).
    cutting: Mutex<Option<Vec<bool>>>,
    cutting_active: AtomicBool,
    /// Held while an image is made: one at a time.
    imaging: Mutex<()>,
    /// Set when a reload replaced this engine: it takes no more changes, and a
    /// snapshot of it would miss the changes its successor took.
    retired: AtomicBool,
    /// Held for reading from resolving a change to applying it (a string code is in
    /// hand, not yet in a row), and for writing while unreferenced strings are freed.
    strings_gate: parking_lot::RwLock<()>,
    /// Keys of forgotten customers (see `suppression`).
    suppression: suppression::Suppression,
    forgotten: AtomicU64,
    last_forget_replayed: AtomicU64,
    /// Which shard retention looks at next, and how many it forgot.
    retention_cursor: std::sync::atomic::AtomicUsize,
    expired: AtomicU64,
    /// What the change stream says the recorded segments hold, while a restore and a
    /// replay build it (see `changes`); taken by [`Engine::reconcile_stream`].
    stream_view: Mutex<Option<changes::StreamView>>,
}

/// A shard's lock, held: what every operation that may change a shard works through.
/// When it is dropped, the changes the shard noted are appended to the journal before
/// the lock is let go (see `changes`).
pub(crate) struct ShardGuard<'a, X: Extension> {
    state: MutexGuard<'a, ShardState<X>>,
    engine: &'a Engine<X>,
}

impl<X: Extension> std::ops::Deref for ShardGuard<'_, X> {
    type Target = ShardState<X>;
    fn deref(&self) -> &ShardState<X> {
        &self.state
    }
}

impl<X: Extension> std::ops::DerefMut for ShardGuard<'_, X> {
    fn deref_mut(&mut self) -> &mut ShardState<X> {
        &mut self.state
    }
}

impl<X: Extension> Drop for ShardGuard<'_, X> {
    fn drop(&mut self) {
        if self.state.has_changes() {
            self.engine.record_changes(&mut self.state);
        }
    }
}

/// A known customer under its shard lock: its profile to read, its extension's part to
/// update (offer history), its keys.
pub(crate) struct Customer<'a, X: Extension> {
    pub eval: eval::Eval<'a>,
    pub extension: X::Part<'a>,
    pub keys: &'a [Key],
    /// The customer's shard.
    pub shard: usize,
}

impl Plan {
    pub fn new(config: Config) -> Plan {
        Plan {
            layout: Layout::new(&config),
            rings: config.features.iter().map(Ring::of).collect(),
            config: Arc::new(config),
        }
    }
}

impl<X: Extension> Engine<X> {
    pub fn new(config: Config, clock: Arc<dyn Clock>) -> Engine<X> {
        let plan = Plan::new(config);
        let shard_count = plan.config.engine.shards;
        let local_bits = 32 - shard_count.trailing_zeros();
        let capacity = 1u64 << local_bits;
        let shards = (0..shard_count)
            .map(|s| {
                let base = ((s as u64) << local_bits) as u32;
                CachePadded::new(Mutex::new(ShardState::new(&plan, base, capacity)))
            })
            .collect();
        Engine {
            drift: drift::Drift::default(),
            dedup: dedup::Dedup::new(
                plan.config.engine.dedup_window,
                plan.config.engine.dedup_max_ids as usize,
            ),
            journal: std::sync::OnceLock::new(),
            cutting: Mutex::new(None),
            cutting_active: AtomicBool::new(false),
            imaging: Mutex::new(()),
            retired: AtomicBool::new(false),
            strings_gate: parking_lot::RwLock::new(()),
            plan,
            shards,
            local_bits,
            identity: DashMap::with_hasher(ahash::RandomState::new()),
            identity_writes: Mutex::new(()),
            clock,
            // Fixed seeds: which shard a new customer lands in is the same on every run.
            hasher: ahash::RandomState::with_seeds(0x6f6d6e69, 0x61, 0x7368, 0x617264),
            events_applied: AtomicU64::new(0),
            merges: AtomicU64::new(0),
            changes_recorded: AtomicU64::new(0),
            suppression: suppression::Suppression::new(),
            forgotten: AtomicU64::new(0),
            last_forget_replayed: AtomicU64::new(0),
            retention_cursor: std::sync::atomic::AtomicUsize::new(0),
            expired: AtomicU64::new(0),
            stream_view: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &Config {
        &self.plan.config
    }

    /// Marks this engine as replaced by a reload (see `retired`).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// The clock the engine reads.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// The engine clock, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The engine clock in whole seconds.
    pub fn now_secs(&self) -> u32 {
        (self.clock.now_ms().max(0) / 1000).min(u32::MAX as i64) as u32
    }

    fn split(&self, id: CustomerId) -> (usize, u32) {
        let shard = id.checked_shr(self.local_bits).unwrap_or(0) as usize;
        let local = if self.local_bits >= 32 {
            id
        } else {
            id & ((1u32 << self.local_bits) - 1)
        };
        (shard, local)
    }

    fn lock(&self, shard: usize) -> ShardGuard<'_, X> {
        self.lock_at(shard, self.now_secs())
    }

    /// Locks a shard and runs its timers due at `now` (seconds), for callers that have
    /// read the clock already.
    fn lock_at(&self, shard: usize, now: u32) -> ShardGuard<'_, X> {
        let mut state = self.shards[shard].lock();
        state.catch_up(&self.plan, now);
        ShardGuard {
            state,
            engine: self,
        }
    }

    /// Appends the changes a shard noted to the journal (see `changes`), under its lock.
    /// Without a journal (recovery, a reload's catch-up) or in an engine a reload
    /// replaced, they are dropped: the store makes the stream good after recovery.
    fn record_changes(&self, state: &mut ShardState<X>) {
        let list = state.take_changes();
        if let (Some(journal), false) = (self.journal.get(), self.is_retired()) {
            self.changes_recorded
                .fetch_add(list.len() as u64, Ordering::Relaxed);
            let config = &self.plan.config;
            let time = state.now();
            for p in &list {
                let event = match p.cause {
                    crate::model::Cause::Event => config.events[p.event as usize].name.as_str(),
                    _ => "",
                };
                journal.append(journal::kind::CHANGE, &mut |body| {
                    changes::encode_parts(
                        body,
                        time,
                        p.customer,
                        p.generation,
                        p.kind,
                        p.cause,
                        &config.segments[p.segment as usize].name,
                        event,
                    )
                });
            }
        }
        state.return_changes(list);
    }

    /// Resolves a raw event's names against the config.
    pub fn resolve(&self, raw: &impl EventView) -> Result<Event, EventError> {
        event::resolve(&self.plan.config, raw)
    }

    /// Resolves and applies a raw event, and logs it if a write-ahead log is attached.
    ///
    /// The record is appended under the lock of the shard the event changes, so that a
    /// snapshot can cut each shard at a log sequence (see `image`).
    ///
    /// Refused, with nothing applied, while the log cannot store changes.
    pub fn ingest(&self, raw: &impl EventView) -> Result<Applied, EventError> {
        self.ingest_with(raw, &mut Receipt::default())
    }

    /// [`Engine::ingest`], noting the log record in `receipt`.
    pub fn ingest_with(
        &self,
        raw: &impl EventView,
        receipt: &mut Receipt,
    ) -> Result<Applied, EventError> {
        let _strings = self.strings_gate.read();
        self.writable()?;
        self.ingest_admitted(raw, receipt)
    }

    /// Holds off freeing unreferenced strings while a change is resolved and applied
    /// (see `Interner`). Not reentrant: take it once per request.
    pub(crate) fn hold_strings(&self) -> parking_lot::RwLockReadGuard<'_, ()> {
        self.strings_gate.read()
    }

    /// Frees attribute strings no profile holds any more (see `Interner`); returns how
    /// many. Skipped while a snapshot image is being made: it lists the strings its rows
    /// hold once every shard is encoded.
    pub fn collect_strings(&self) -> usize {
        // Most ticks have nothing to free: they take no lock that holds up ingest.
        if !self.plan.config.interner.has_unreferenced() {
            return 0;
        }
        let Some(_imaging) = self.imaging.try_lock() else {
            return 0;
        };
        let _strings = self.strings_gate.write();
        self.plan.config.interner.sweep()
    }

    /// Whether a change may be applied now: not while the write-ahead log cannot store
    /// it (a full disk), since the engine must never show what it did not log. A change
    /// checked here and applied just as the log fails is kept by the log and stored
    /// once it can be (its acknowledgement waits for that).
    pub fn writable(&self) -> Result<(), EventError> {
        match self.journal.get() {
            Some(journal) => journal
                .writable()
                .map_err(|reason| EventError::StorageFailed { reason }),
            None => Ok(()),
        }
    }

    /// [`Engine::ingest`] once the change is admitted ([`Engine::writable`]), with
    /// [`Engine::hold_strings`] held.
    fn ingest_admitted(
        &self,
        raw: &impl EventView,
        receipt: &mut Receipt,
    ) -> Result<Applied, EventError> {
        event::admit(&self.plan.config, raw)?;
        let mut dropped = Vec::new();
        let event = match event::resolve_noting(&self.plan.config, raw, Some(&mut dropped)) {
            Ok(event) => event,
            Err(e) => {
                if let EventError::UnknownEventType { name, .. } = &e {
                    self.drift.unknown_event(name);
                }
                return Err(e);
            }
        };
        let applied = self.apply_admitted(raw, &event, receipt)?;
        // Drift is what accepted events lost: counted once one is applied, not for a
        // copy or a refusal.
        if !applied.duplicate {
            let name = &self.plan.config.events[event.event_type].name;
            for &(attribute, field) in &dropped {
                if attribute {
                    self.drift.attribute_ignored(name, field);
                } else {
                    self.drift.property_ignored(name, field);
                }
            }
        }
        Ok(applied)
    }

    /// Applies a resolved live event and logs it, claiming its message id if it has one.
    fn apply_admitted(
        &self,
        raw: &impl EventView,
        event: &Event,
        receipt: &mut Receipt,
    ) -> Result<Applied, EventError> {
        let Some(id) = raw
            .message_id()
            .filter(|_| self.plan.config.engine.dedup_window > 0)
        else {
            return match self.journal.get() {
                Some(journal) => self.apply_with(
                    event,
                    &mut |_| {
                        receipt.logged(journal.append(journal::kind::EVENT, &mut |body| {
                            crate::codec::events::encode_one(raw, body)
                        }));
                        true
                    },
                    false,
                    None,
                ),
                None => self.apply(event),
            };
        };
        let now = self.now_secs();
        let applied = self.apply_with(
            event,
            &mut |_| {
                if let Some(journal) = self.journal.get() {
                    receipt.logged(journal.append(journal::kind::EVENT_WITH_ID, &mut |body| {
                        use bytes::BufMut;
                        body.put_u32_le(now);
                        crate::codec::Write::str(body, id);
                        crate::codec::events::encode_one(raw, body)
                    }));
                }
                true
            },
            false,
            Some(&Claim { id, now }),
        )?;
        if applied.duplicate {
            return Ok(self.duplicate(event, receipt));
        }
        Ok(applied)
    }

    /// The answer to a copy of an event whose message id was claimed: it waits, like
    /// the original's own answer, until the original's log record is stored. The
    /// original claimed and appended under the identity mutex (a new customer or a
    /// merge) or under its customer's shard lock, so once both have been taken here the
    /// record is appended, and the log's last sequence covers it.
    fn duplicate(&self, event: &Event, receipt: &mut Receipt) -> Applied {
        let mut customer = 0;
        drop(self.identity_writes.lock());
        if let Some(r) = event
            .keys
            .first()
            .and_then(|k| self.identity.get(&k.text).map(|r| CustomerRef::unpack(*r)))
        {
            customer = r.id;
            drop(self.shards[self.split(r.id).0].lock());
        }
        if let Some(journal) = self.journal.get() {
            receipt.logged(journal.last_appended());
        }
        Applied::duplicate(customer)
    }

    /// Message ids applied within the dedup window (see `dedup`).
    pub fn dedup(&self) -> &dedup::Dedup {
        &self.dedup
    }

    /// Applies an event read back from the log at `sequence`, unless the snapshot image
    /// of the shard it changes already holds it (`cuts[shard]` is that image's cut).
    pub fn replay(
        &self,
        event: &Event,
        sequence: u64,
        cuts: &[u64],
    ) -> Result<Applied, EventError> {
        self.apply_with(
            event,
            &mut |shard| cuts.get(shard).map_or(true, |&cut| sequence > cut),
            true,
            None,
        )
    }

    /// Logs every event accepted from now on (after recovery has replayed the log).
    /// A second call is ignored.
    pub fn attach_journal(&self, journal: Arc<dyn Journal>) {
        let _ = self.journal.set(journal);
    }

    /// What live ingest dropped or refused by name so far (see `drift`).
    pub fn drift(&self) -> &drift::Drift {
        &self.drift
    }

    pub fn journal(&self) -> Option<&Arc<dyn Journal>> {
        self.journal.get()
    }

    /// Applies a resolved event: identity, aggregates, segments, scores, timers.
    ///
    /// A resolved event may hold attribute string codes no row holds yet: apply it
    /// before the next [`Engine::collect_strings`] ([`Engine::ingest`] sees to that).
    /// Resolving and applying separately is for single-threaded callers (recovery,
    /// benchmarks).
    pub fn apply(&self, event: &Event) -> Result<Applied, EventError> {
        self.apply_with(event, &mut |_| true, false, None)
    }

    /// Applies an event; `before_change` is called once, with the lock of the shard the event
    /// ends up changing held, just before the change: it logs the event, or (in replay)
    /// says whether the change is already there (`false` skips it).
    ///
    /// Replay skips the check for events from the future: they were accepted when they
    /// were logged, and a clock set back since must not stop a start.
    ///
    /// With `claim`, the event's message id is claimed first (see `dedup`), under the
    /// same lock as the change: the identity mutex when identities change, else the
    /// shard's. A claim that loses changes nothing and returns a duplicate.
    fn apply_with(
        &self,
        event: &Event,
        before_change: &mut dyn FnMut(usize) -> bool,
        replaying: bool,
        claim: Option<&Claim<'_>>,
    ) -> Result<Applied, EventError> {
        let now_ms = self.clock.now_ms();
        let skew_ms = self.plan.config.engine.max_future_skew as i64 * 1000;
        if !replaying && event.timestamp_ms > now_ms + skew_ms {
            return Err(EventError::FromTheFuture {
                event: self.plan.config.events[event.event_type].name.clone(),
                timestamp_ms: event.timestamp_ms,
                ahead_ms: event.timestamp_ms - now_ms,
                max_skew_s: self.plan.config.engine.max_future_skew,
            });
        }
        let now = (now_ms.max(0) / 1000).min(u32::MAX as i64) as u32;
        if let Some(applied) = self.apply_known(event, now, before_change, claim) {
            return Ok(applied);
        }
        self.apply_with_identity_changes(event, now, before_change, claim, replaying)
    }

    /// The fast path: every key known and all on one customer. `None` sends the event
    /// down the slow path.
    fn apply_known(
        &self,
        event: &Event,
        now: u32,
        before_change: &mut dyn FnMut(usize) -> bool,
        claim: Option<&Claim<'_>>,
    ) -> Option<Applied> {
        let mut found: Option<CustomerRef> = None;
        for key in &event.keys {
            let r = CustomerRef::unpack(*self.identity.get(&key.text)?);
            if found.is_some_and(|f| f != r) {
                return None;
            }
            found = Some(r);
        }
        let r = found?;
        let (shard, local) = self.split(r.id);
        let mut state = self.lock_at(shard, now);
        if !state.holds(local, r.generation) {
            return None; // merged away since we read the map
        }
        if let Some(c) = claim {
            if !self.dedup.claim(c.id, c.now) {
                return Some(Applied::duplicate(r.id));
            }
        }
        if before_change(shard) {
            state.apply(&self.plan, local, event, false);
        }
        drop(state);
        self.events_applied.fetch_add(1, Ordering::Relaxed);
        Some(Applied {
            duplicate: false,
            customer: r.id,
            created: false,
            merged: 0,
        })
    }

    fn apply_with_identity_changes(
        &self,
        event: &Event,
        now: u32,
        before_change: &mut dyn FnMut(usize) -> bool,
        claim: Option<&Claim<'_>>,
        replaying: bool,
    ) -> Result<Applied, EventError> {
        let _identity = self.identity_writes.lock();
        // A key of a forgotten customer brings nothing back (see `suppression`). Only
        // new keys can be on the list; replay applies what was logged before a FORGET.
        if !replaying && !self.suppression.is_empty() {
            let suppressed = event.keys.iter().any(|k| {
                !self.identity.contains_key(&k.text) && self.suppression.contains(&k.text)
            });
            if suppressed {
                return Err(EventError::Suppressed {
                    event: self.plan.config.events[event.event_type].name.clone(),
                });
            }
        }
        // Before any slot is taken or profile merged: a copy changes nothing at all.
        if let Some(c) = claim {
            if !self.dedup.claim(c.id, c.now) {
                return Ok(Applied::duplicate(0));
            }
        }
        // Under the identity mutex the map cannot change under us.
        let mut customers: Vec<CustomerRef> = Vec::new();
        let mut new_keys: Vec<Key> = Vec::new();
        for key in &event.keys {
            match self
                .identity
                .get(&key.text)
                .map(|r| CustomerRef::unpack(*r))
            {
                Some(r) => {
                    if !customers.contains(&r) {
                        customers.push(r);
                    }
                }
                None => new_keys.push(key.clone()),
            }
        }
        let mut created = false;
        // The survivor's shard stays locked from the new slot or the merge to the change
        // and its log record: a snapshot cutting in between would see a slot neither live
        // nor free, and another event on the merged profile would be logged before the
        // merge that it followed.
        let (survivor, held) = if customers.is_empty() {
            let first = &event.keys[0];
            let shard = self.home_shard(&first.text);
            let mut state = self.lock_at(shard, now);
            let Some(local) = state.allocate(&self.plan) else {
                if let Some(c) = claim {
                    // Not applied: a copy sent later may be.
                    self.dedup.release(c.id);
                }
                return Err(EventError::Full {
                    event: self.plan.config.events[event.event_type].name.clone(),
                    shard,
                    capacity: state.capacity(),
                });
            };
            created = true;
            let survivor = CustomerRef {
                id: state.id_base() + local,
                generation: state.generation(local).unwrap_or(0),
            };
            (survivor, Some(state))
        } else {
            let survivor = self.choose_survivor(&customers);
            let losers: Vec<CustomerRef> = customers
                .iter()
                .copied()
                .filter(|c| *c != survivor)
                .collect();
            (survivor, Some(self.merge(survivor, &losers, now)))
        };
        let merged = customers.len().saturating_sub(1);
        let (shard, local) = self.split(survivor.id);
        let mut state = match held {
            Some(state) => state,
            None => self.lock_at(shard, now),
        };
        // In replay a skipped event is one whose keys were all known (the image holds
        // them), so it never gets here having created a profile or merged.
        if before_change(shard) {
            let keys_changed = state.add_keys(&self.plan, local, new_keys.iter().cloned());
            for key in new_keys {
                self.identity.insert(key.text, survivor.pack());
            }
            state.apply(&self.plan, local, event, keys_changed);
            if created {
                // A new profile: segments no event type leads to (e.g. "never bought") too.
                state.evaluate_all(&self.plan, local);
            }
        }
        drop(state);
        self.events_applied.fetch_add(1, Ordering::Relaxed);
        self.merges.fetch_add(merged as u64, Ordering::Relaxed);
        Ok(Applied {
            duplicate: false,
            customer: survivor.id,
            created,
            merged,
        })
    }

    /// The customer that keeps its id in a merge: the one with the most preferred key.
    fn choose_survivor(&self, customers: &[CustomerRef]) -> CustomerRef {
        let rank = |r: &CustomerRef| {
            let (shard, local) = self.split(r.id);
            let state = self.shards[shard].lock();
            let best = state
                .keys(local)
                .iter()
                .map(|k| k.namespace)
                .min()
                .unwrap_or(usize::MAX);
            (best, r.id)
        };
        customers
            .iter()
            .copied()
            .min_by_key(rank)
            .unwrap_or(customers[0])
    }

    /// Folds `losers` into `survivor` with every shard involved locked at once (in index
    /// order, so that concurrent merges cannot deadlock), and returns the survivor's
    /// shard still locked. Called with the identity mutex held.
    fn merge(&self, survivor: CustomerRef, losers: &[CustomerRef], now: u32) -> ShardGuard<'_, X> {
        let (ws, wl) = self.split(survivor.id);
        let mut shards: Vec<usize> = losers.iter().map(|l| self.split(l.id).0).collect();
        shards.push(ws);
        shards.sort_unstable();
        shards.dedup();
        let mut locked: Vec<ShardGuard<'_, X>> =
            shards.iter().map(|&s| self.lock_at(s, now)).collect();
        if locked.len() > 1 {
            // A snapshot in progress must see every shard of the merge before it, or
            // none (see `image`). And the shards must agree on the time used to combine
            // windows.
            for (state, &shard) in locked.iter_mut().zip(&shards) {
                self.cut_if_uncut(shard, state);
            }
            let time = locked.iter().map(|s| s.now()).max().unwrap_or(0);
            for state in &mut locked {
                state.align_time(time);
            }
        }
        let at = |shard: usize| shards.binary_search(&shard).unwrap_or(0);
        for loser in losers {
            let (ls, ll) = self.split(loser.id);
            let taken = locked[at(ls)].take(&self.plan, ll, changes::Why::Merge);
            let keys = taken.keys.clone();
            locked[at(ws)].absorb(&self.plan, wl, taken);
            for key in keys {
                self.identity.insert(key.text, survivor.pack());
            }
        }
        // The other shards are released; the survivor's stays locked for the event.
        locked.swap_remove(at(ws))
    }

    /// Where the interner's count of rows holding a string code differs from the rows
    /// themselves, as `code: counted N, held by M rows` (empty when they agree). For
    /// tests of the invariant `Interner` states; locks every shard in turn.
    pub fn string_reference_errors(&self) -> Vec<String> {
        let _strings = self.strings_gate.write();
        let mut held: std::collections::HashMap<u32, u32> = Default::default();
        for shard in 0..self.shards.len() {
            let state = self.shards[shard].lock();
            for id in state.live() {
                let row = state.row(&self.plan, id - state.id_base());
                for &at in self.plan.layout.string_words() {
                    if row[at] != 0 {
                        *held.entry(row[at]).or_default() += 1;
                    }
                }
            }
        }
        let interner = &self.plan.config.interner;
        let mut errors = Vec::new();
        let codes = interner.strings().len() as u32;
        for code in 1..=codes.max(held.keys().copied().max().unwrap_or(0)) {
            let (counted, rows) = (
                interner.references(code),
                held.get(&code).copied().unwrap_or(0),
            );
            if counted != rows {
                errors.push(format!("{code}: counted {counted}, held by {rows} rows"));
            } else if rows > 0 && interner.resolve(code).is_none() {
                errors.push(format!("{code}: held by {rows} rows but freed"));
            }
        }
        errors
    }

    /// Runs every due timer in every shard: time-driven segment changes happen now.
    /// Every read runs its shard's due timers first anyway; this spreads the work.
    pub fn tick(&self) {
        for shard in 0..self.shards.len() {
            drop(self.lock(shard));
        }
        self.dedup.sweep(self.now_secs());
        self.collect_strings();
    }

    pub(crate) fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Runs `f` on the customer a key belongs to, under its shard lock at `now`, or on
    /// `None` if the key is unknown. `context` is what rules read as `context.NAME`.
    pub(crate) fn with_customer<R>(
        &self,
        key: &str,
        now: u32,
        context: &[f64],
        f: impl FnOnce(Option<Customer<'_, X>>) -> R,
    ) -> R {
        match self.locate(key, now) {
            None => f(None),
            Some((mut state, local)) => {
                let shard = self.split(state.id_base()).0;
                let result = f(Some(state.customer(&self.plan, local, context, shard)));
                state.settle(local);
                result
            }
        }
    }

    /// The shard (locked) and slot of the customer a key belongs to.
    fn locate(&self, key: &str, now: u32) -> Option<(ShardGuard<'_, X>, u32)> {
        // A merge may free the slot between reading the map and taking the lock; then
        // the map already points at the survivor, so looking again finds it.
        for _ in 0..4 {
            if let Some(found) = self.try_locate(key, now)? {
                return Some(found);
            }
        }
        // Under the identity mutex no merge can run, so this look is final.
        let _identity = self.identity_writes.lock();
        self.locate_under_identity(key, now)
    }

    /// [`Engine::locate`] for a caller holding the identity mutex: one look is final.
    fn locate_under_identity(&self, key: &str, now: u32) -> Option<(ShardGuard<'_, X>, u32)> {
        self.try_locate(key, now).flatten()
    }

    /// One look: `None` if the key is unknown, `Some(None)` if its customer was merged
    /// away between reading the map and taking the lock.
    #[allow(clippy::type_complexity)]
    fn try_locate(&self, key: &str, now: u32) -> Option<Option<(ShardGuard<'_, X>, u32)>> {
        let r = CustomerRef::unpack(*self.identity.get(key)?);
        let (shard, local) = self.split(r.id);
        let state = self.lock_at(shard, now);
        let current = state.holds(local, r.generation);
        Some(current.then_some((state, local)))
    }

    /// The shard a new customer whose first key is `key` is created in.
    fn home_shard(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) & (self.shards.len() - 1)
    }

    /// The customer a key belongs to.
    pub fn customer_of(&self, key: &str) -> Option<CustomerId> {
        self.identity.get(key).map(|r| CustomerRef::unpack(*r).id)
    }

    pub fn stats(&self) -> EngineStats {
        let mut stats = EngineStats {
            keys: self.identity.len() as u64,
            events_applied: self.events_applied.load(Ordering::Relaxed),
            merges: self.merges.load(Ordering::Relaxed),
            forgotten: self.forgotten.load(Ordering::Relaxed),
            changes_recorded: self.changes_recorded.load(Ordering::Relaxed),
            ..EngineStats::default()
        };
        for shard in 0..self.shards.len() {
            let state = self.lock(shard);
            stats.customers += state.live().len();
            stats.profile_bytes += state.row_bytes() as u64;
            stats.pending_timers += state.pending_timers() as u64;
        }
        stats
    }

    /// Bytes per profile row for this config.
    pub fn profile_row_bytes(&self) -> usize {
        self.plan.layout.stride * 4
    }

    fn shard_count(&self) -> usize {
        self.shards.len()
    }
}
