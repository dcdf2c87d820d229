//! `top(EVENT.PROP, W)`: the most frequent values of a string property over a sliding
//! window, kept per customer in [`TOP_SLOTS`] slots of its row.
//!
//! A slot is `[code][latest][ring]`: a value (an interned code, 0 for none), the time of
//! its latest event, and a count ring shaped like a window count's (`profile::Ring`:
//! head bucket and `B` buckets of `W/B` seconds, aligned to the epoch). An event in the
//! window counts in its value's slot; a value without one takes a free slot (no value,
//! or nothing left in its window), and when every slot holds a value still in the
//! window, the weakest (fewest in the window, then the oldest latest event) gives its
//! slot up and the new value starts from its one event.
//!
//! Invariant: while at most `TOP_SLOTS` distinct values have events in the window,
//! every one of them has a slot with its exact count, so the ranking is exact. Beyond
//! that it is an approximation that favours values seen often and lately.
//!
//! The ranking: most events in the window first, then the latest event, then the lower
//! slot. `top(...)` is the first value; `x in top(..., N)` tests the first N that have
//! an event in the window. Each code in a slot holds one interner reference
//! (`Interner::retain`), as string attributes do; the caller releases the codes a
//! merge drops (`shard::absorb`).

use super::profile::Ring;
use crate::config::rule::Interner;
use crate::config::{Feature, TOP_SLOTS};

/// A top feature's shape, copied out of the config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Top {
    ring: Ring,
}

impl Top {
    pub fn of(feature: &Feature) -> Option<Top> {
        match feature {
            Feature::Top {
                bucket_width,
                buckets,
                ..
            } => Some(Top {
                ring: Ring {
                    width: *bucket_width,
                    buckets: *buckets,
                    sum: false,
                },
            }),
            _ => None,
        }
    }

    fn slot_words(&self) -> usize {
        3 + self.ring.words()
    }

    /// Words of the feature in a row.
    pub fn words(&self) -> usize {
        TOP_SLOTS * self.slot_words()
    }

    /// Where slot `i` of the feature at `at` starts.
    fn slot(&self, at: usize, i: usize) -> usize {
        at + i * self.slot_words()
    }

    /// The offsets of the words that hold codes.
    pub fn code_words(&self, at: usize) -> impl Iterator<Item = usize> + '_ {
        (0..TOP_SLOTS).map(move |i| self.slot(at, i))
    }

    fn count(&self, p: &[u32], s: usize, now: u32) -> f64 {
        if p[s] == 0 {
            0.0
        } else {
            self.ring.value(p, s + 2, now)
        }
    }

    /// The slot (its start) a new value may take: a free one, else the weakest.
    fn room(&self, p: &[u32], at: usize, now: u32) -> usize {
        let slots = (0..TOP_SLOTS).map(|i| self.slot(at, i));
        slots
            .clone()
            .find(|&s| self.count(p, s, now) == 0.0)
            .unwrap_or_else(|| {
                slots
                    .min_by(|&a, &b| {
                        let key = |s: usize| (self.count(p, s, now), p[s + 1]);
                        key(a)
                            .partial_cmp(&key(b))
                            .unwrap_or(std::cmp::Ordering::Equal)
                    })
                    .unwrap_or(at)
            })
    }

    /// Counts an event of value `code` at `ts` (`ts <= now`).
    pub fn add(&self, p: &mut [u32], at: usize, now: u32, ts: u32, code: u32, interner: &Interner) {
        let (n, b) = (now / self.ring.width, ts / self.ring.width);
        if code == 0 || b + self.ring.buckets <= n {
            return; // older than the window: it no longer counts
        }
        let found = (0..TOP_SLOTS)
            .map(|i| self.slot(at, i))
            .find(|&s| p[s] == code);
        let s = match found {
            Some(s) => s,
            None => {
                let s = self.room(p, at, now);
                interner.retain(code);
                interner.release(p[s]);
                p[s..s + self.slot_words()].fill(0);
                p[s] = code;
                s
            }
        };
        self.ring.add(p, s + 2, now, ts, 1.0);
        p[s + 1] = p[s + 1].max(ts.max(1));
    }

    /// The slots with an event in the window, best first, in a fixed array (no
    /// allocation: rules read this on every event): `(slots, how many)`.
    fn ranked(&self, p: &[u32], at: usize, now: u32) -> ([usize; TOP_SLOTS], usize) {
        let mut live = [(0usize, 0.0f64); TOP_SLOTS];
        let mut len = 0;
        for i in 0..TOP_SLOTS {
            let s = self.slot(at, i);
            let c = self.count(p, s, now);
            if c > 0.0 {
                live[len] = (s, c);
                len += 1;
            }
        }
        live[..len].sort_unstable_by(|&(a, ca), &(b, cb)| {
            cb.partial_cmp(&ca)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(p[b + 1].cmp(&p[a + 1]))
                .then(a.cmp(&b))
        });
        let mut slots = [0usize; TOP_SLOTS];
        for (out, &(s, _)) in slots.iter_mut().zip(&live[..len]) {
            *out = s;
        }
        (slots, len)
    }

    /// The most frequent value now, 0 when the window is empty.
    pub fn best(&self, p: &[u32], at: usize, now: u32) -> u32 {
        let (slots, len) = self.ranked(p, at, now);
        if len == 0 {
            0
        } else {
            p[slots[0]]
        }
    }

    /// Whether `code` is among the `n` most frequent values now.
    pub fn has(&self, p: &[u32], at: usize, now: u32, code: u32, n: u32) -> bool {
        let (slots, len) = self.ranked(p, at, now);
        code != 0 && slots[..len].iter().take(n as usize).any(|&s| p[s] == code)
    }

    /// When the counts next change with time alone: a slot's oldest event leaving.
    pub fn next_change(&self, p: &[u32], at: usize, now: u32) -> Option<u32> {
        (0..TOP_SLOTS)
            .map(|i| self.slot(at, i))
            .filter(|&s| p[s] != 0)
            .filter_map(|s| self.ring.next_change(p, s + 2, now))
            .min()
    }

    /// Adds `from`'s values into `into`'s (customers merging): a value both hold adds
    /// up; one only `from` holds takes a free slot or the weakest, if it is stronger.
    /// Interner references are the caller's to settle.
    pub fn merge(&self, into: &mut [u32], from: &[u32], at: usize, now: u32) {
        let words = self.slot_words();
        for j in 0..TOP_SLOTS {
            let f = self.slot(at, j);
            let count = self.count(from, f, now);
            if count == 0.0 {
                continue;
            }
            let same = (0..TOP_SLOTS)
                .map(|i| self.slot(at, i))
                .find(|&s| into[s] == from[f]);
            if let Some(s) = same {
                self.ring.merge_from(into, s + 2, from, f + 2, now);
                into[s + 1] = into[s + 1].max(from[f + 1]);
                continue;
            }
            let s = self.room(into, at, now);
            let weaker = (self.count(into, s, now), into[s + 1]) < (count, from[f + 1]);
            if weaker {
                into[s..s + words].copy_from_slice(&from[f..f + words]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top() -> Top {
        Top {
            ring: Ring {
                width: 100,
                buckets: 4,
                sum: false,
            },
        }
    }

    #[test]
    fn the_most_frequent_value_wins_then_the_latest_and_old_events_leave() {
        let (t, interner) = (top(), Interner::default());
        let (a, b) = (interner.intern("a"), interner.intern("b"));
        let mut p = vec![0u32; t.words()];
        t.add(&mut p, 0, 1000, 950, a, &interner);
        t.add(&mut p, 0, 1000, 960, b, &interner);
        assert_eq!(t.best(&p, 0, 1000), b, "a tie goes to the latest event");
        t.add(&mut p, 0, 1000, 700, a, &interner);
        assert_eq!(t.best(&p, 0, 1000), a);
        assert!(t.has(&p, 0, 1000, b, 2) && !t.has(&p, 0, 1000, b, 1));
        // At 1100 the bucket of 700 has left the window (buckets 8..=11).
        assert_eq!(t.next_change(&p, 0, 1000), Some(1100));
        assert_eq!(t.best(&p, 0, 1100), b);
        assert_eq!(t.best(&p, 0, 1400), 0, "an empty window has no top value");
        // Too old to count.
        t.add(&mut p, 0, 1400, 1000, a, &interner);
        assert_eq!(t.best(&p, 0, 1400), 0);
    }

    #[test]
    fn a_fifth_value_takes_the_weakest_slot() {
        let (t, interner) = (top(), Interner::default());
        let codes: Vec<u32> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|s| interner.intern(s))
            .collect();
        let mut p = vec![0u32; t.words()];
        for (k, &c) in codes[..4].iter().enumerate() {
            for _ in 0..=k {
                t.add(&mut p, 0, 1000, 900 + k as u32, c, &interner);
            }
        }
        t.add(&mut p, 0, 1000, 990, codes[4], &interner);
        assert!(
            !t.has(&p, 0, 1000, codes[0], 4),
            "a, seen once, gave up its slot"
        );
        assert!(t.has(&p, 0, 1000, codes[4], 4));
        assert_eq!(t.best(&p, 0, 1000), codes[3]);
    }
}
