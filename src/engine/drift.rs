//! Tracking-plan drift: what live ingest dropped or refused by name, counted, so that a
//! data team sees trackers sending what the config does not declare.
//!
//! Under `engine.unknown_properties = "ignore"` an undeclared property (or attribute)
//! is dropped and the event applied; dropped without a trace, a renamed property in a
//! tracker would silently stop feeding its rules. So every (event type, property) pair
//! dropped is counted here, attributes as `attr.NAME`, and so is every unknown event
//! type by name (those events are rejected, but a name nobody declared is drift too).
//!
//! Invariants: at most [`MAX_NAMES`] distinct pairs and [`MAX_NAMES`] distinct unknown
//! event names are kept, so hostile names cannot grow memory; what comes after is
//! counted under [`OTHER`]. Counts are of live ingest only (recovery replays records
//! whose drift was counted when they came) and survive a reload (see
//! [`Drift::take_from`]), not a restart, like every other counter of the server.

use std::sync::atomic::{AtomicU64, Ordering};

use compact_str::CompactString;
use dashmap::DashMap;

/// Most distinct names kept per kind.
pub const MAX_NAMES: usize = 1000;
/// The name counts go under once [`MAX_NAMES`] are kept.
pub const OTHER: &str = "(other)";

type Counts<K> = DashMap<K, AtomicU64, ahash::RandomState>;

/// Counts of what ingest dropped or refused by name (see the module doc).
#[derive(Default)]
pub struct Drift {
    /// `(event type, property)` dropped; an attribute is `attr.NAME`.
    ignored: Counts<(CompactString, CompactString)>,
    /// Unknown event types, by the name they came with.
    unknown_events: Counts<CompactString>,
}

/// One counted pair: event type, property (or `attr.NAME`), how many times.
pub type Ignored = (String, String, u64);

fn note<K: Eq + std::hash::Hash + Clone>(counts: &Counts<K>, key: K, other: impl FnOnce() -> K) {
    if let Some(n) = counts.get(&key) {
        n.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let key = if counts.len() < MAX_NAMES {
        key
    } else {
        other()
    };
    counts
        .entry(key)
        .or_default()
        .fetch_add(1, Ordering::Relaxed);
}

impl Drift {
    /// Property `property` of an event of type `event` was dropped.
    pub fn property_ignored(&self, event: &str, property: &str) {
        note(&self.ignored, (event.into(), property.into()), || {
            (OTHER.into(), OTHER.into())
        });
    }

    /// Attribute `attribute` of an event of type `event` was dropped.
    pub fn attribute_ignored(&self, event: &str, attribute: &str) {
        let label = format!("attr.{attribute}");
        self.property_ignored(event, &label);
    }

    /// An event came with the undeclared type `name`.
    pub fn unknown_event(&self, name: &str) {
        note(&self.unknown_events, name.into(), || OTHER.into());
    }

    /// Every pair dropped so far, sorted.
    pub fn ignored(&self) -> Vec<Ignored> {
        let mut all: Vec<Ignored> = self
            .ignored
            .iter()
            .map(|e| {
                let (event, property) = e.key();
                (
                    event.to_string(),
                    property.to_string(),
                    e.value().load(Ordering::Relaxed),
                )
            })
            .collect();
        all.sort();
        all
    }

    /// Every unknown event type name so far, sorted.
    pub fn unknown_events(&self) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> = self
            .unknown_events
            .iter()
            .map(|e| (e.key().to_string(), e.value().load(Ordering::Relaxed)))
            .collect();
        all.sort();
        all
    }

    /// Adds `old`'s counts to these: a reload's new engine goes on counting where the
    /// old one stopped.
    pub fn take_from(&self, old: &Drift) {
        for e in old.ignored.iter() {
            let n = e.value().load(Ordering::Relaxed);
            let (event, property) = e.key().clone();
            self.ignored
                .entry((event, property))
                .or_default()
                .fetch_add(n, Ordering::Relaxed);
        }
        for e in old.unknown_events.iter() {
            let n = e.value().load(Ordering::Relaxed);
            self.unknown_events
                .entry(e.key().clone())
                .or_default()
                .fetch_add(n, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_counted_and_bounded() {
        let drift = Drift::default();
        drift.property_ignored("purchase", "colour");
        drift.property_ignored("purchase", "colour");
        drift.attribute_ignored("identify", "shoe_size");
        for i in 0..MAX_NAMES + 5 {
            drift.property_ignored("page_view", &format!("p{i}"));
        }
        let all = drift.ignored();
        assert_eq!(all.len(), MAX_NAMES + 1, "the kept names and (other)");
        assert!(all.contains(&("purchase".into(), "colour".into(), 2)));
        assert!(all.contains(&("identify".into(), "attr.shoe_size".into(), 1)));
        // Two were kept before the flood, so 1000 - 2 of it were, and 7 went to (other).
        assert!(all.contains(&(OTHER.into(), OTHER.into(), 7)));
        let next = Drift::default();
        next.take_from(&drift);
        next.property_ignored("purchase", "colour");
        assert!(next
            .ignored()
            .contains(&("purchase".into(), "colour".into(), 3)));
    }
}
