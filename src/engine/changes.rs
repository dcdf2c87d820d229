//! The change stream's engine side: every flip of a recorded segment becomes a CHANGE
//! record in the journal, in the order of the shard's other records.
//!
//! A shard notes each flip of a segment the config records (`[triggers] stream`) as a
//! `Pending` change while it works, and the `ShardGuard` that
//! holds the shard's lock appends them to the journal when it is dropped, still under
//! the lock. So within a shard a change comes after the record of the event that caused
//! it and before any later record; a snapshot's cut of the shard (taken under the same
//! lock) holds exactly the changes up to the cut; and a reader of the journal that
//! applies the changes of a shard in order to the shard's segment bitmaps at a cut
//! gets the bitmaps of any later point.
//!
//! Changes are not recorded while no journal is attached (recovery, the catch-up of a
//! reload): the store compares the recovered segments with what the stream says and
//! records the difference (`Cause::Recovery`), because replay applies events at the
//! time of the replay, not at the time they first happened, and so cannot reproduce the
//! flips time made in between. A change the journal held, but lost in a crash with its
//! event still logged, is made good the same way.
//!
//! A change costs one record of about 30 bytes plus the segment's and the event type's
//! names; flips of segments not on the stream cost one test of a flag.

use std::collections::{HashMap, HashSet};

use roaring::RoaringBitmap;

use super::{journal, Engine, Extension, Plan};
use crate::codec::{named, DecodeError, Reader, Write};
use crate::model::{Cause, Change, ChangeKind, CustomerId};

/// A customer as a trigger sees it when acting: read under one lock, so the three
/// agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerNow {
    /// Its keys, most preferred namespace first.
    pub keys: Vec<String>,
    /// Whether it is a member of the segment asked about.
    pub member: bool,
    /// Whether the rule asked about holds (true when none was).
    pub holds: bool,
}

/// What the stream says the members of each segment are, by name: built while the
/// engine is restored and the log replayed, compared with the segments after.
pub(crate) type StreamView = HashMap<String, RoaringBitmap>;

impl<X: Extension> Engine<X> {
    /// The keys of the customer a change names, now, most preferred namespace first;
    /// empty if the slot holds another customer or none (forgotten, or merged away).
    pub fn keys_of(&self, customer: CustomerId, generation: u32) -> Vec<String> {
        let (shard, local) = self.split(customer);
        if shard >= self.shard_count() {
            return Vec::new();
        }
        let state = self.lock(shard);
        if !state.holds(local, generation) {
            return Vec::new();
        }
        state.key_texts(local)
    }

    /// Counts the changes `old` (the engine a reload replaces) recorded as this one's
    /// too, so that the count goes on growing across reloads.
    pub fn take_changes_recorded_from(&self, old: &Engine<X>) {
        let n = old
            .changes_recorded
            .load(std::sync::atomic::Ordering::Relaxed);
        self.changes_recorded
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// What a trigger acting on a change needs to know of its customer now (see
    /// [`CustomerNow`]); `None` if the slot holds another customer or none (forgotten,
    /// or merged away), or `segment` is not one.
    pub fn customer_now(
        &self,
        customer: CustomerId,
        generation: u32,
        segment: usize,
        rule: Option<&crate::config::rule::Expr>,
    ) -> Option<CustomerNow> {
        let (shard, local) = self.split(customer);
        if shard >= self.shard_count() || segment >= self.config().segments.len() {
            return None;
        }
        let state = self.lock(shard);
        if !state.holds(local, generation) {
            return None;
        }
        let member = state.members(segment).contains(customer);
        let holds = rule.map_or(true, |rule| state.eval(&self.plan, local).truth(rule));
        Some(CustomerNow {
            keys: state.key_texts(local),
            member,
            holds,
        })
    }

    /// Adds to the stream's view what a restored shard's image says: the members of
    /// the segments the image's config recorded (`recorded`, by name), as they were at
    /// the shard's cut. `layout` is the plan the shard was read under.
    pub(super) fn view_image(
        &self,
        layout: &Plan,
        state: &super::ShardState<X>,
        recorded: &HashSet<String>,
    ) {
        let mut view = self.stream_view.lock();
        let view = view.get_or_insert_with(StreamView::new);
        for (s, segment) in layout.config.segments.iter().enumerate() {
            if recorded.contains(&segment.name) {
                *view.entry(segment.name.clone()).or_default() |= state.members(s);
            }
        }
    }

    /// Replays a CHANGE record read back from the log at `sequence` into the stream's
    /// view, unless the image of its customer's shard holds it already (a reset, which
    /// is written when nothing else runs, after every cut).
    pub fn replay_change(&self, change: &Change, sequence: u64, cuts: &[u64]) {
        let mut view = self.stream_view.lock();
        let view = view.get_or_insert_with(StreamView::new);
        let (shard, _) = self.split(change.customer);
        let after_cut = |shard: usize| cuts.get(shard).map_or(true, |&cut| sequence > cut);
        match change.kind {
            ChangeKind::Reset if cuts.iter().all(|&cut| sequence > cut) => {
                view.insert(change.segment.clone(), RoaringBitmap::new());
            }
            ChangeKind::Enter if after_cut(shard) => {
                view.entry(change.segment.clone())
                    .or_default()
                    .insert(change.customer);
            }
            ChangeKind::Exit if after_cut(shard) => {
                view.entry(change.segment.clone())
                    .or_default()
                    .remove(change.customer);
            }
            _ => {}
        }
    }

    /// Brings the stream in line with the segments, once the journal is attached after
    /// a recovery or a reload's catch-up: every recorded segment's members that the
    /// stream does not hold are entered, and the ones it holds that are not members
    /// exit, with the cause `recovery`. A recorded segment the stream has not held since
    /// the image (new on the stream, or recorded again after a while) starts with a
    /// reset, unless the stream never held anything (no image, no change logged). Must
    /// run before the engine takes requests. Returns the changes recorded.
    pub fn reconcile_stream(&self) -> u64 {
        // No image and no change in the log: the stream never held anything, so there
        // is nothing to reset.
        let (view, seen) = match self.stream_view.lock().take() {
            Some(view) => (view, true),
            None => (StreamView::new(), false),
        };
        let Some(journal) = self.journal.get() else {
            return 0;
        };
        let config = &self.plan.config;
        let now = self.now_secs();
        let recorded: Vec<usize> = (0..config.segments.len())
            .filter(|&s| config.triggers.records(s))
            .collect();
        let mut recorded_changes = 0;
        for &s in &recorded {
            let name = &config.segments[s].name;
            if seen && !view.contains_key(name) {
                journal.append(journal::kind::CHANGE, &mut |body| {
                    encode_parts(
                        body,
                        now,
                        0,
                        0,
                        ChangeKind::Reset,
                        Cause::Recovery,
                        name,
                        "",
                    )
                });
                self.changes_recorded
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                recorded_changes += 1;
            }
        }
        let empty = RoaringBitmap::new();
        for shard in 0..self.shard_count() {
            let mut state = self.lock_at(shard, now);
            let base = state.id_base();
            let mut range = RoaringBitmap::new();
            let last = (base as u64 + state.capacity() - 1).min(u32::MAX as u64) as u32;
            range.insert_range(base..=last);
            for &s in &recorded {
                let mut streamed = view.get(&config.segments[s].name).unwrap_or(&empty) & &range;
                // Timers that ran as the shard was locked: noted, recorded on unlock.
                for p in state.noted().iter().filter(|p| p.segment as usize == s) {
                    match p.kind {
                        ChangeKind::Enter => streamed.insert(p.customer),
                        _ => streamed.remove(p.customer),
                    };
                }
                let members = state.members(s).clone();
                for id in &members - &streamed {
                    state.note_recovery(id - base, s, ChangeKind::Enter);
                }
                for id in &streamed - &members {
                    state.note_recovery(id - base, s, ChangeKind::Exit);
                }
            }
            recorded_changes += state.changes_noted() as u64;
        }
        recorded_changes
    }
}

/// A change noted by a shard, not yet in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pending {
    pub customer: CustomerId,
    pub generation: u32,
    pub segment: u32,
    pub kind: ChangeKind,
    pub cause: Cause,
    /// The event type, when the cause is an event.
    pub event: u32,
}

/// Why a shard is changing, as its changes will say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    Event(u32),
    Time,
    Merge,
    Forget,
    Recovery,
}

impl Why {
    pub fn cause(self) -> (Cause, u32) {
        match self {
            Why::Event(e) => (Cause::Event, e),
            Why::Time => (Cause::Time, 0),
            Why::Merge => (Cause::Merge, 0),
            Why::Forget => (Cause::Forget, 0),
            Why::Recovery => (Cause::Recovery, 0),
        }
    }
}

/// Writes a CHANGE record's body:
///
/// ```text
/// u32 time (seconds) | u32 customer | u32 generation | u8 kind (1 enter, 2 exit,
/// 3 reset) | u8 cause (1 event, 2 time, 3 merge, 4 forget, 5 recovery)
/// | str segment | str event type (empty unless the cause is an event)
/// ```
pub fn encode(change: &Change, out: &mut Vec<u8>) {
    encode_parts(
        out,
        change.time,
        change.customer,
        change.generation,
        change.kind,
        change.cause,
        &change.segment,
        &change.event,
    );
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_parts(
    out: &mut Vec<u8>,
    time: u32,
    customer: CustomerId,
    generation: u32,
    kind: ChangeKind,
    cause: Cause,
    segment: &str,
    event: &str,
) {
    out.reserve(16 + segment.len() + event.len());
    out.extend_from_slice(&time.to_le_bytes());
    out.extend_from_slice(&customer.to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.push(kind.code());
    out.push(cause.code());
    Write::str(out, segment);
    Write::str(out, event);
}

/// Reads a CHANGE record's body (see [`encode`]).
pub fn decode(body: &[u8]) -> Result<Change, DecodeError> {
    let mut r = Reader::new(body);
    let time = r.u32(&named("time"))?;
    let customer = r.u32(&named("customer"))?;
    let generation = r.u32(&named("generation"))?;
    let kind_code = r.u8(&named("kind"))?;
    let kind = ChangeKind::from_code(kind_code)
        .ok_or_else(|| r.invalid("kind", format!("unknown change kind {kind_code}")))?;
    let cause_code = r.u8(&named("cause"))?;
    let cause = Cause::from_code(cause_code)
        .ok_or_else(|| r.invalid("cause", format!("unknown cause {cause_code}")))?;
    let segment = r.str(&named("segment"))?.to_string();
    let event = r.str(&named("event type"))?.to_string();
    r.finish()?;
    Ok(Change {
        time,
        customer,
        generation,
        segment,
        kind,
        cause,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_reads_back_as_written_and_a_bad_kind_is_named() {
        let change = Change {
            time: 1_700_000_000,
            customer: 42,
            generation: 3,
            segment: "cart_abandoners".into(),
            kind: ChangeKind::Exit,
            cause: Cause::Event,
            event: "purchase".into(),
        };
        let mut body = Vec::new();
        encode(&change, &mut body);
        assert_eq!(decode(&body).unwrap(), change);
        body[12] = 9;
        let error = decode(&body).unwrap_err().to_string();
        assert!(error.contains("unknown change kind 9"), "{error}");
        assert!(decode(&body[..10]).is_err());
    }
}
