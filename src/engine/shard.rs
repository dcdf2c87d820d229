//! A shard: a slice of the customers, everything about them, behind one lock.
//!
//! A shard owns its customers' profile rows, their keys, its slice of every segment
//! bitmap, and a timer queue. Customer ids are `shard << local_bits | slot`, so each
//! shard's bitmaps cover one dense id range and a global count is a sum of per-shard
//! counts.
//!
//! Invariants, all maintained under the shard's lock:
//! - a slot is live iff it has keys; `live` holds exactly the live ids;
//! - a customer's segment bit is set iff its id is in that segment's bitmap;
//! - every segment bit is correct at `now` for every live customer, provided the timers
//!   that are due have run: [`ShardState::catch_up`] runs them, and every operation
//!   calls it first, so no reader sees a stale membership;
//! - a customer's `NEXT_TIMER` word is no later than the earliest time any of its
//!   time-dependent segments can flip, and the queue has an entry at that time. Later
//!   entries left behind when a timer moves earlier are skipped when they come due,
//!   because they no longer match `NEXT_TIMER`.

use std::collections::BTreeSet;

use roaring::RoaringBitmap;

use super::changes::{Pending, Why};
use super::eval::{filter_matches, Eval};
use super::event::{AttrValue, Event, Key};
use super::extension::Extension;
use super::profile::{
    decayed_add, merge_rows, set_f64, FIRST_SEEN, KEY_MASK, LAST_SEEN, NEXT_TIMER,
};
use super::Plan;
use crate::config::{Aggregate, Feature, ScoreModel, ValueType};
use crate::model::{Cause, ChangeKind};

/// Profiles per storage chunk.
pub(super) const CHUNK_ROWS: usize = 4096;

/// One shard's customers (see the module doc for its invariants). Its fields are
/// private so that only the methods below, which keep the invariants, change them; a
/// shard read from an image is built by [`ShardState::from_parts`], which derives what
/// images do not store.
pub(crate) struct ShardState<X: Extension> {
    id_base: u32,
    capacity: u64,
    /// Profile rows in chunks of [`CHUNK_ROWS`]: growing a shard allocates one more
    /// chunk instead of copying every row under the lock (a latency spike of
    /// milliseconds at a million customers).
    rows: Vec<Box<[u32]>>,
    /// Bumped when a slot is freed, so stale identity entries are detected.
    gens: Vec<u32>,
    keys: Vec<Keys>,
    free: Vec<u32>,
    live: RoaringBitmap,
    members: Vec<RoaringBitmap>,
    /// Re-evaluations due, as `time << 32 | slot`, soonest first: 8 bytes an entry in
    /// the tree's nodes (a map from time to a list of slots cost about 50, the list's
    /// allocation included, since times seldom repeat). An entry whose slot's
    /// `NEXT_TIMER` no longer equals its time is stale and skipped when it comes due.
    timers: BTreeSet<u64>,
    /// What the layer above keeps per customer (offer state, see `extension`).
    extension: X,
    /// The shard's time: never goes back, even if the clock does.
    now: u32,
    /// The snapshot being taken of this shard, if any (see `image`): chunks of rows and
    /// keys are saved into it before their first change.
    pub(super) cut: Option<Box<ShardCut<X>>>,
    /// Flips of recorded segments since the lock was taken (see `changes`): the guard
    /// appends them to the journal before it lets the lock go.
    changes: Vec<Pending>,
    /// What the changes being made now are caused by.
    why: Why,
}

/// What a shard image stores, for [`ShardState::from_parts`]: everything but which
/// slots are live and the timer queue, which follow from the keys and the rows.
pub(super) struct ShardParts<X> {
    pub now: u32,
    /// One per slot.
    pub gens: Vec<u32>,
    /// Exactly the chunks that hold `gens.len()` rows.
    pub rows: Vec<Box<[u32]>>,
    /// One per slot; empty for a free slot.
    pub keys: Vec<Keys>,
    pub free: Vec<u32>,
    /// One per segment of the config.
    pub members: Vec<RoaringBitmap>,
    pub extension: X,
}

/// A shard as it was at a log sequence, for a snapshot: the small parts copied when
/// the cut was made, the rows and keys chunk by chunk, each saved before it first
/// changed after the cut or, unchanged, by the snapshot itself. So making a cut holds
/// the shard's lock only to copy the small parts, and saving a chunk only for one chunk.
pub(crate) struct ShardCut<X: Extension> {
    pub cut: u64,
    pub now: u32,
    pub slots: usize,
    pub gens: Vec<u32>,
    pub free: Vec<u32>,
    pub members: Vec<RoaringBitmap>,
    pub extension: X::Cut,
    /// Per chunk: what became of it since the cut.
    pub chunks: Vec<Chunk>,
}

/// A chunk of a cut shard.
pub(crate) enum Chunk {
    /// Not changed since the cut, not yet encoded: the rows are as they were.
    Unchanged,
    /// A change came first and saved it.
    Saved(SavedChunk),
    /// In the image already: later changes need not save it.
    Encoded,
}

/// One chunk of a shard as a cut saved it.
pub(crate) struct SavedChunk {
    /// The used part of the chunk's rows.
    pub rows: Box<[u32]>,
    pub keys: Vec<Keys>,
}

impl<X: Extension> ShardState<X> {
    pub fn new(plan: &Plan, id_base: u32, capacity: u64) -> ShardState<X> {
        ShardState {
            id_base,
            capacity,
            rows: Vec::new(),
            gens: Vec::new(),
            keys: Vec::new(),
            free: Vec::new(),
            live: RoaringBitmap::new(),
            members: vec![RoaringBitmap::new(); plan.config.segments.len()],
            timers: BTreeSet::new(),
            extension: X::new(&plan.config),
            now: 0,
            cut: None,
            changes: Vec::new(),
            why: Why::Time,
        }
    }

    /// A shard from the parts of an image (see [`ShardParts`]): live slots are those
    /// with keys, and each live row's next-timer word is queued.
    pub(super) fn from_parts(
        plan: &Plan,
        id_base: u32,
        capacity: u64,
        parts: ShardParts<X>,
    ) -> ShardState<X> {
        debug_assert_eq!(parts.keys.len(), parts.gens.len());
        debug_assert_eq!(parts.rows.len(), parts.gens.len().div_ceil(CHUNK_ROWS));
        let mut state = ShardState {
            id_base,
            capacity,
            rows: parts.rows,
            gens: parts.gens,
            keys: parts.keys,
            free: parts.free,
            live: RoaringBitmap::new(),
            members: parts.members,
            timers: BTreeSet::new(),
            extension: parts.extension,
            now: parts.now,
            cut: None,
            changes: Vec::new(),
            why: Why::Time,
        };
        for local in 0..state.keys.len() as u32 {
            if state.is_live(local) {
                state.live.insert(id_base + local);
                let next = state.row(plan, local)[NEXT_TIMER];
                if next != 0 {
                    state.timers.insert(timer(next, local));
                }
            }
        }
        state
    }

    /// A shard with `gens.len()` slots, none live, every row zero: where a relayout
    /// moves another shard's customers, slot for slot.
    pub(super) fn with_slots(
        plan: &Plan,
        id_base: u32,
        capacity: u64,
        now: u32,
        gens: Vec<u32>,
        free: Vec<u32>,
    ) -> ShardState<X> {
        let rows = (0..gens.len().div_ceil(CHUNK_ROWS))
            .map(|_| vec![0; CHUNK_ROWS * plan.layout.stride].into_boxed_slice())
            .collect();
        let parts = ShardParts {
            now,
            keys: vec![Keys::default(); gens.len()],
            gens,
            rows,
            free,
            members: vec![RoaringBitmap::new(); plan.config.segments.len()],
            extension: X::new(&plan.config),
        };
        ShardState::from_parts(plan, id_base, capacity, parts)
    }

    /// The id of slot 0.
    pub fn id_base(&self) -> u32 {
        self.id_base
    }

    /// How many slots the shard's id range has.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The shard's time (seconds): never goes back.
    pub fn now(&self) -> u32 {
        self.now
    }

    /// Moves the shard's time to `time` if that is later, without running timers: the
    /// shards of a merge agree on the time used to combine windows.
    pub fn align_time(&mut self, time: u32) {
        self.now = self.now.max(time);
    }

    /// Slots allocated so far, live or free.
    pub fn slots(&self) -> usize {
        self.gens.len()
    }

    /// The generation of every slot.
    pub fn generations(&self) -> &[u32] {
        &self.gens
    }

    /// The generation of slot `local`, if it was ever allocated.
    pub fn generation(&self, local: u32) -> Option<u32> {
        self.gens.get(local as usize).copied()
    }

    /// Whether slot `local` holds a customer of generation `generation`: false once a
    /// merge freed it (and maybe reused it) after the identity map was read.
    pub fn holds(&self, local: u32, generation: u32) -> bool {
        self.generation(local) == Some(generation) && self.is_live(local)
    }

    /// Free slots, next to reuse last.
    pub fn free_slots(&self) -> &[u32] {
        &self.free
    }

    /// The keys of slot `local` (empty for a free slot).
    pub fn keys(&self, local: u32) -> &[Key] {
        &self.keys[local as usize]
    }

    /// The keys of slot `local` as text, most preferred namespace first (the order
    /// profiles and the change stream show them in).
    pub fn key_texts(&self, local: u32) -> Vec<String> {
        let mut keys: Vec<&Key> = self.keys(local).iter().collect();
        keys.sort_by_key(|k| k.namespace);
        keys.into_iter().map(|k| k.text.to_string()).collect()
    }

    /// The ids of the live customers.
    pub fn live(&self) -> &RoaringBitmap {
        &self.live
    }

    /// The ids of the members of segment `segment`.
    pub fn members(&self, segment: usize) -> &RoaringBitmap {
        &self.members[segment]
    }

    /// What the layer above keeps per customer.
    pub fn extension(&self) -> &X {
        &self.extension
    }

    /// The extension, taken out of a shard that is being replaced.
    pub fn into_extension(self) -> X {
        self.extension
    }

    /// Sets the extension of a shard being built (by a relayout).
    pub(super) fn set_extension(&mut self, extension: X) {
        self.extension = extension;
    }

    /// The action that lent out slot `local`'s part is done with it
    /// ([`Extension::settle`]).
    pub fn settle(&mut self, local: u32) {
        self.extension.settle(local);
    }

    #[inline]
    pub fn row(&self, plan: &Plan, local: u32) -> &[u32] {
        let stride = plan.layout.stride;
        let (chunk, at) = (
            local as usize / CHUNK_ROWS,
            local as usize % CHUNK_ROWS * stride,
        );
        &self.rows[chunk][at..at + stride]
    }

    #[inline]
    pub(super) fn row_mut(&mut self, plan: &Plan, local: u32) -> &mut [u32] {
        if self.cut.is_some() {
            self.save_chunk(plan, local as usize / CHUNK_ROWS);
        }
        let stride = plan.layout.stride;
        let (chunk, at) = (
            local as usize / CHUNK_ROWS,
            local as usize % CHUNK_ROWS * stride,
        );
        &mut self.rows[chunk][at..at + stride]
    }

    /// Makes a cut of this shard at log sequence `cut` (see [`ShardCut`]).
    pub fn start_cut(&mut self, cut: u64) {
        let slots = self.gens.len();
        self.cut = Some(Box::new(ShardCut {
            cut,
            now: self.now,
            slots,
            gens: self.gens.clone(),
            free: self.free.clone(),
            members: self.members.clone(),
            extension: self.extension.cut(),
            chunks: (0..slots.div_ceil(CHUNK_ROWS))
                .map(|_| Chunk::Unchanged)
                .collect(),
        }));
    }

    /// Saves a chunk into the cut being taken, before a change, unless it is saved or
    /// encoded already.
    pub fn save_chunk(&mut self, plan: &Plan, chunk: usize) {
        let Some(cut) = self.cut.as_deref_mut() else {
            return;
        };
        let Some(slot @ Chunk::Unchanged) = cut.chunks.get_mut(chunk) else {
            return;
        };
        let first = chunk * CHUNK_ROWS;
        let end = cut.slots.min(first + CHUNK_ROWS);
        let used = (end - first) * plan.layout.stride;
        *slot = Chunk::Saved(SavedChunk {
            rows: self.rows[chunk][..used].into(),
            keys: self.keys[first..end].to_vec(),
        });
    }

    /// Encodes a chunk of the cut being taken: its rows into `rows`, its keys into
    /// `keys`, from the shard itself if no change came since the cut.
    pub fn encode_chunk(
        &mut self,
        plan: &Plan,
        chunk: usize,
        rows: &mut Vec<u8>,
        keys: &mut Vec<u8>,
    ) {
        let Some(cut) = self.cut.as_deref_mut() else {
            return;
        };
        let Some(slot) = cut.chunks.get_mut(chunk) else {
            return;
        };
        let first = chunk * CHUNK_ROWS;
        let end = cut.slots.min(first + CHUNK_ROWS);
        match std::mem::replace(slot, Chunk::Encoded) {
            Chunk::Unchanged => {
                let used = (end - first) * plan.layout.stride;
                super::image::put_words(rows, &self.rows[chunk][..used]);
                super::image::put_keys(keys, &self.keys[first..end]);
            }
            Chunk::Saved(saved) => {
                super::image::put_words(rows, &saved.rows);
                super::image::put_keys(keys, &saved.keys);
            }
            Chunk::Encoded => {}
        }
    }

    pub fn is_live(&self, local: u32) -> bool {
        self.keys.get(local as usize).is_some_and(|k| !k.is_empty())
    }

    /// Bytes held by profile rows (for memory reports).
    pub fn row_bytes(&self) -> usize {
        self.rows.iter().map(|c| c.len() * 4).sum()
    }

    /// A new empty profile slot, or `None` if the shard's id range is full.
    pub fn allocate(&mut self, plan: &Plan) -> Option<u32> {
        if let Some(local) = self.free.pop() {
            // A free slot holds no customer: no keys, in no segment.
            debug_assert!(!self.is_live(local), "slot {local} is free and live");
            return Some(local);
        }
        let local = self.gens.len() as u64;
        if local >= self.capacity {
            return None;
        }
        if local as usize % CHUNK_ROWS == 0 {
            self.rows
                .push(vec![0; CHUNK_ROWS * plan.layout.stride].into_boxed_slice());
        }
        self.gens.push(0);
        self.keys.push(Keys::default());
        Some(local as u32)
    }

    /// Adds keys to a live or just-allocated slot. Returns whether any was new to it.
    pub fn add_keys(
        &mut self,
        plan: &Plan,
        local: u32,
        keys: impl IntoIterator<Item = Key>,
    ) -> bool {
        let mut added = false;
        let id = self.id_base + local;
        for key in keys {
            if self.keys[local as usize].contains(&key) {
                continue;
            }
            // (`row_mut` below saves the chunk, keys included, before they change.)
            self.row_mut(plan, local)[KEY_MASK] |= 1 << key.namespace;
            // Rebuilt exactly to size: keys are added seldom, and kept for the profile's
            // life.
            let mut all = std::mem::take(&mut self.keys[local as usize]).into_vec();
            all.push(key);
            self.keys[local as usize] = all.into_boxed_slice();
            added = true;
        }
        if added {
            self.live.insert(id);
        }
        added
    }

    /// Moves the shard to `now` and runs every timer that is due.
    pub fn catch_up(&mut self, plan: &Plan, now: u32) {
        self.now = self.now.max(now);
        let now = self.now;
        self.why = Why::Time;
        while let Some(&first) = self.timers.first() {
            let (due, local) = ((first >> 32) as u32, first as u32);
            if due > now {
                break;
            }
            self.timers.pop_first();
            if self.is_live(local) && self.row(plan, local)[NEXT_TIMER] == due {
                self.row_mut(plan, local)[NEXT_TIMER] = 0;
                let next = self.reevaluate(plan, local, &plan.config.dependencies.time_dependent);
                self.schedule(plan, local, next);
            }
        }
    }

    /// Asks for a re-evaluation of `local` at `at`, unless one is already due earlier.
    fn schedule(&mut self, plan: &Plan, local: u32, at: Option<u32>) {
        let Some(at) = at else { return };
        let at = at.max(self.now + 1);
        let current = self.row(plan, local)[NEXT_TIMER];
        if current != 0 && current <= at {
            return;
        }
        self.row_mut(plan, local)[NEXT_TIMER] = at;
        self.timers.insert(timer(at, local));
    }

    /// Number of pending timer entries (some may be stale).
    pub fn pending_timers(&self) -> usize {
        self.timers.len()
    }

    /// Re-evaluates `segments` (in order) for one customer, updating bits and bitmaps.
    /// Returns the earliest time any of the time-dependent ones can flip.
    fn reevaluate(&mut self, plan: &Plan, local: u32, segments: &[usize]) -> Option<u32> {
        let id = self.id_base + local;
        let now = self.now;
        let mut next: Option<u32> = None;
        for &s in segments {
            let segment = &plan.config.segments[s];
            let (member, flip) = {
                let eval = Eval::of(plan, self.row(plan, local), now);
                if segment.time_dependent {
                    eval.truth_and_next_change(&segment.expr)
                } else {
                    (eval.truth(&segment.expr), None)
                }
            };
            if let Some(flip) = flip {
                next = Some(next.map_or(flip, |n: u32| n.min(flip)));
            }
            let row = self.row_mut(plan, local);
            if plan.layout.in_segment(row, s) != member {
                plan.layout.set_segment(row, s, member);
                if member {
                    self.members[s].insert(id);
                } else {
                    self.members[s].remove(id);
                }
                if plan.config.triggers.records(s) {
                    let kind = if member {
                        ChangeKind::Enter
                    } else {
                        ChangeKind::Exit
                    };
                    self.note(local, s, kind);
                }
            }
        }
        next
    }

    /// Notes a flip of recorded segment `segment` for the change stream.
    fn note(&mut self, local: u32, segment: usize, kind: ChangeKind) {
        let (cause, event) = self.why.cause();
        self.changes.push(Pending {
            customer: self.id_base + local,
            generation: self.gens[local as usize],
            segment: segment as u32,
            kind,
            cause,
            event,
        });
    }

    /// Notes a change the stream missed (see `Engine::reconcile_stream`). An exit of a
    /// slot freed since names the generation its customer had.
    pub(super) fn note_recovery(&mut self, local: u32, segment: usize, kind: ChangeKind) {
        self.why = Why::Recovery;
        let generation = match self.gens.get(local as usize) {
            Some(&g) if self.is_live(local) => g,
            Some(&g) => g.wrapping_sub(1),
            None => 0,
        };
        self.changes.push(Pending {
            customer: self.id_base + local,
            generation,
            segment: segment as u32,
            kind,
            cause: Cause::Recovery,
            event: 0,
        });
    }

    /// The changes noted, not yet recorded.
    pub(super) fn noted(&self) -> &[Pending] {
        &self.changes
    }

    /// The changes noted since they were last taken (see `changes`).
    pub(super) fn take_changes(&mut self) -> Vec<Pending> {
        std::mem::take(&mut self.changes)
    }

    /// Gives back the emptied list of [`take_changes`](Self::take_changes), to keep its
    /// room.
    pub(super) fn return_changes(&mut self, mut list: Vec<Pending>) {
        if self.changes.is_empty() {
            list.clear();
            self.changes = list;
        }
    }

    /// How many changes are noted: a mark for [`discard_changes`](Self::discard_changes).
    pub(super) fn changes_noted(&self) -> usize {
        self.changes.len()
    }

    /// Forgets the changes noted after `mark`: a profile made and removed again before
    /// anyone could see it changed nothing anybody knew of.
    pub(super) fn discard_changes(&mut self, mark: usize) {
        self.changes.truncate(mark);
    }

    /// Says what the changes made next are caused by.
    pub(super) fn set_why(&mut self, why: Why) {
        self.why = why;
    }

    /// Whether changes are noted, waiting for the journal.
    #[inline]
    pub(super) fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    /// Applies a resolved event to a live customer at time `now` (the shard's time).
    /// `keys_changed` says whether the event just linked new keys to the customer.
    pub fn apply(&mut self, plan: &Plan, local: u32, event: &Event, keys_changed: bool) {
        self.why = Why::Event(event.event_type as u32);
        let config = &plan.config;
        let layout = &plan.layout;
        let now = self.now;
        // Events from slightly ahead of the clock (within the allowed skew) count as now.
        let ts = ((event.timestamp_ms / 1000) as u32).min(now);
        let e = event.event_type;
        let row = self.row_mut(plan, local);
        if row[FIRST_SEEN] == 0 || ts < row[FIRST_SEEN] {
            row[FIRST_SEEN] = ts;
        }
        row[LAST_SEEN] = row[LAST_SEEN].max(ts);
        let channel_at = layout.channel_last_seen(event.channel);
        row[channel_at] = row[channel_at].max(ts);
        for &f in &config.dependencies.event_features[e] {
            let feature = &config.features[f];
            let matcher = feature.matcher();
            if matcher.channel.is_some_and(|c| c != event.channel) {
                continue;
            }
            if let Some(filter) = &matcher.filter {
                if !filter_matches(filter, &event.properties) {
                    continue;
                }
            }
            let at = layout.features[f];
            match (feature, &plan.rings[f]) {
                (Feature::Window { aggregate, .. }, Some(ring)) => {
                    let amount = match aggregate {
                        Aggregate::Count => 1.0,
                        Aggregate::Sum(p) => match event.properties.get(*p) {
                            Some(super::event::PropValue::Num(v)) => *v,
                            _ => continue,
                        },
                    };
                    ring.add(row, at, now, ts, amount);
                }
                (Feature::Top { property, .. }, None) => {
                    if let (Some(top), Some(super::event::PropValue::Str { code, .. })) = (
                        super::top::Top::of(feature),
                        event.properties.get(*property),
                    ) {
                        top.add(row, at, now, ts, *code, &config.interner);
                    }
                }
                (
                    Feature::Value {
                        property, ty, last, ..
                    },
                    None,
                ) => {
                    let time_at = at + super::profile::value_words(*ty);
                    let held = row[time_at];
                    // The earliest event's value, or the latest's; between events of
                    // one second, the first to arrive for `first`, the last for `last`.
                    let newer = if *last {
                        ts >= held
                    } else {
                        held == 0 || ts < held
                    };
                    if !newer {
                        continue;
                    }
                    match event.properties.get(*property) {
                        Some(super::event::PropValue::Num(v)) => set_f64(row, at, *v),
                        Some(super::event::PropValue::Str { code, .. }) => {
                            if row[at] != *code {
                                config.interner.retain(*code);
                                config.interner.release(row[at]);
                                row[at] = *code;
                            }
                        }
                        _ => continue,
                    }
                    row[time_at] = ts.max(1);
                }
                _ => row[at] = row[at].max(ts),
            }
        }
        for &s in &config.dependencies.event_scores[e] {
            if let (Some(at), ScoreModel::Decayed { half_life, weights }) =
                (layout.scores[s], &config.scores[s].model)
            {
                decayed_add(row, at, *half_life, ts, weights[e]);
            }
        }
        let mut attributes_changed = false;
        for &(a, value) in &event.attributes {
            let (at, ty) = layout.attributes[a];
            let time_at = at + if ty == ValueType::Number { 2 } else { 1 };
            if ts >= row[time_at] {
                match value {
                    AttrValue::Num(v) => set_f64(row, at, v),
                    AttrValue::Str(code) => {
                        // The interner counts the rows that hold each code.
                        if row[at] != code {
                            config.interner.retain(code);
                            config.interner.release(row[at]);
                            row[at] = code;
                        }
                    }
                    AttrValue::Bool(b) => row[at] = b as u32,
                }
                row[time_at] = ts;
                attributes_changed = true;
            }
        }
        for &g in &config.dependencies.event_goals[e] {
            let goal = &config.goals[g];
            if goal
                .filter
                .as_ref()
                .is_some_and(|f| !filter_matches(f, &event.properties))
            {
                continue;
            }
            let value = match goal.value.and_then(|p| event.properties.get(p)) {
                Some(super::event::PropValue::Num(v)) if v.is_finite() => *v,
                _ => 0.0,
            };
            self.extension.goal(config, local, g, ts, value);
        }
        let variant = attributes_changed as usize | (keys_changed as usize) << 1;
        let next = self.reevaluate(plan, local, &config.dependencies.affected[e][variant]);
        self.schedule(plan, local, next);
    }

    /// Removes a customer: out of every bitmap, its row cleared, its slot free for
    /// reuse. Returns what it was, for a merge. `why` is what its exits are noted as
    /// caused by.
    pub fn take(&mut self, plan: &Plan, local: u32, why: Why) -> Taken<X> {
        debug_assert!(
            self.is_live(local),
            "taking slot {local}, which holds no customer"
        );
        self.save_chunk(plan, local as usize / CHUNK_ROWS);
        let id = self.id_base + local;
        let row = self.row(plan, local).to_vec();
        self.why = why;
        for s in 0..plan.config.segments.len() {
            if plan.layout.in_segment(&row, s) {
                self.members[s].remove(id);
                if plan.config.triggers.records(s) {
                    self.note(local, s, ChangeKind::Exit);
                }
            }
        }
        self.live.remove(id);
        self.row_mut(plan, local).fill(0);
        self.gens[local as usize] = self.gens[local as usize].wrapping_add(1);
        let keys = std::mem::take(&mut self.keys[local as usize]);
        let extension = self.extension.take(local);
        self.free.push(local);
        Taken {
            row,
            keys,
            extension,
        }
    }

    /// Removes a customer for good (FORGET): its slot is freed as in [`take`](Self::take)
    /// (segments, row, keys, extension), and the attribute strings its row held are let
    /// go. Returns its keys.
    pub fn forget(&mut self, plan: &Plan, local: u32) -> Vec<Key> {
        let taken = self.take(plan, local, Why::Forget);
        for &at in plan.layout.string_words() {
            plan.config.interner.release(taken.row[at]);
        }
        taken.keys.into_vec()
    }

    /// Folds another customer's row and keys into `local`, then re-evaluates every
    /// segment of the result at once.
    pub fn absorb(&mut self, plan: &Plan, local: u32, from: Taken<X>) {
        let now = self.now;
        let into = self.row_mut(plan, local);
        let strings = || plan.layout.string_words().iter().copied();
        // Both rows held their string codes; the merged row holds some of them (a top's
        // values may change slots), and the others are let go.
        let mut held: Vec<u32> = strings()
            .flat_map(|at| [into[at], from.row[at]])
            .filter(|&c| c != 0)
            .collect();
        merge_rows(&plan.config, &plan.layout, into, &from.row, now);
        held.sort_unstable();
        let mut kept: Vec<u32> = strings().map(|at| into[at]).filter(|&c| c != 0).collect();
        kept.sort_unstable();
        let mut kept = kept.into_iter().peekable();
        for code in held {
            // Both sorted: a held code still in the row is matched once, in order.
            while kept.peek().is_some_and(|&k| k < code) {
                kept.next();
            }
            if kept.peek() == Some(&code) {
                kept.next();
            } else {
                plan.config.interner.release(code);
            }
        }
        self.add_keys(plan, local, from.keys);
        if let Some(part) = from.extension {
            self.extension.absorb(local, part);
        }
        self.why = Why::Merge;
        let next = self.reevaluate(plan, local, &plan.config.segment_order);
        self.schedule(plan, local, next);
    }

    /// Evaluates a customer's segments from scratch (a new profile), the changes noted
    /// as caused by what caused the last ones (the event that made the profile).
    pub fn evaluate_all(&mut self, plan: &Plan, local: u32) {
        let next = self.reevaluate(plan, local, &plan.config.segment_order);
        self.schedule(plan, local, next);
    }

    /// A customer's profile for reading and its extension's part for updating, at once.
    /// Call [`Extension::settle`] when done with it.
    pub fn customer<'a>(
        &'a mut self,
        plan: &'a Plan,
        local: u32,
        context: &'a [f64],
        shard: usize,
    ) -> super::Customer<'a, X> {
        let stride = plan.layout.stride;
        let (chunk, at) = (
            local as usize / CHUNK_ROWS,
            local as usize % CHUNK_ROWS * stride,
        );
        let eval =
            Eval::of(plan, &self.rows[chunk][at..at + stride], self.now).with_context(context);
        super::Customer {
            eval,
            extension: self.extension.part(local),
            keys: &self.keys[local as usize],
            shard,
        }
    }

    pub fn eval<'a>(&'a self, plan: &'a Plan, local: u32) -> Eval<'a> {
        Eval::of(plan, self.row(plan, local), self.now)
    }
}

/// A customer removed from its shard by a merge, on its way into the survivor.
pub(crate) struct Taken<X: Extension> {
    pub row: Vec<u32>,
    pub keys: Keys,
    pub extension: Option<X::Customer>,
}

/// A customer's keys, exactly as many as it has: a `Vec` would keep room for four (32
/// bytes each) from its first push, and most customers have one to three.
pub(crate) type Keys = Box<[Key]>;

/// A timer queue entry: ordered by time, then slot.
fn timer(at: u32, local: u32) -> u64 {
    (at as u64) << 32 | local as u64
}

/// The profile of a customer omnia has never seen, as if first seen `now` on `channel`
/// with a key in `namespace`: what a decision for a new visitor is evaluated against.
/// Its segment bits are evaluated like a new profile's, so `in(new_visitors)` holds.
pub(crate) fn blank_row(plan: &Plan, now: u32, channel: usize, namespace: usize) -> Vec<u32> {
    let mut row = vec![0u32; plan.layout.stride];
    row[FIRST_SEEN] = now;
    row[LAST_SEEN] = now;
    row[plan.layout.channel_last_seen(channel)] = now;
    row[KEY_MASK] = 1 << namespace;
    for &s in &plan.config.segment_order {
        let member = Eval::of(plan, &row, now).truth(&plan.config.segments[s].expr);
        plan.layout.set_segment(&mut row, s, member);
    }
    row
}
