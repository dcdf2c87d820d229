//! Profile storage: a fixed row of `u32` words per customer, laid out from the config.
//!
//! A shard keeps all its profiles in one `Vec<u32>` with a fixed stride, so a profile
//! is a slice, found by multiplying its slot by the stride, and an event touches one or
//! two cache lines. The [`Layout`] says where each thing lives:
//!
//! ```text
//! [first_seen][last_seen][key mask][next timer][channel last seen x C]
//! [segment bits: ceil(S/32) words]
//! [attributes: value (2 words for numbers, 1 otherwise) + set time]
//! [decayed scores: f64 value (2 words) + time of value]
//! [features: window = head bucket + B buckets (u16 counts, two per word; f32 sums) | last seen = 1 word
//!            | first or last value = value (2 words for a number, 1 for a string code) + its event's time]
//! ```
//!
//! Times are whole seconds since the Unix epoch in a `u32`; 0 means "never". A window
//! is a ring of `B` buckets of `bucket_width` seconds aligned to the epoch; `head` is
//! the absolute index of the newest bucket, and the ring holds buckets `(head-B, head]`.
//! At time `now` (bucket `n`), a window's value is the sum of the buckets in
//! `(n-B, n]`: the current, partly elapsed bucket plus the `B-1` before it. So a window
//! `W` covers between `W - W/B` and `W` of the past, exactly and deterministically.

use crate::config::{Aggregate, Config, Feature, ScoreModel, ValueType};

pub(crate) const FIRST_SEEN: usize = 0;
pub(crate) const LAST_SEEN: usize = 1;
pub(crate) const KEY_MASK: usize = 2;
pub(crate) const NEXT_TIMER: usize = 3;
const CHANNELS: usize = 4;

/// Where everything of a profile lives in its row.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub stride: usize,
    pub segment_base: usize,
    /// Offset of each attribute's value; its set time follows the value.
    pub attributes: Vec<(usize, ValueType)>,
    /// Offset of each decayed score (`None` for computed scores).
    pub scores: Vec<Option<usize>>,
    pub features: Vec<usize>,
    /// See [`Layout::string_words`].
    strings: Vec<usize>,
}

impl Layout {
    /// The offsets of every word that holds an interned string code: string attributes'
    /// values, string first/last values and a top's values. Each code there holds one
    /// reference (`Interner::retain`), released when the word changes or the row goes.
    pub fn string_words(&self) -> &[usize] {
        &self.strings
    }

    pub fn new(config: &Config) -> Layout {
        let mut at = CHANNELS + config.channels.len();
        let segment_base = at;
        at += config.segments.len().div_ceil(32);
        let mut attributes = Vec::new();
        for a in &config.attributes {
            attributes.push((at, a.ty));
            at += if a.ty == ValueType::Number { 2 } else { 1 } + 1;
        }
        let mut scores = Vec::new();
        for s in &config.scores {
            if let ScoreModel::Decayed { .. } = s.model {
                scores.push(Some(at));
                at += 3;
            } else {
                scores.push(None);
            }
        }
        let mut features = Vec::new();
        for f in &config.features {
            features.push(at);
            at += feature_words(f);
        }
        let mut strings: Vec<usize> = attributes
            .iter()
            .filter(|(_, ty)| *ty == ValueType::String)
            .map(|&(at, _)| at)
            .collect();
        for (f, &at) in config.features.iter().zip(&features) {
            match f {
                Feature::Value {
                    ty: ValueType::String,
                    ..
                } => strings.push(at),
                Feature::Top { .. } => {
                    if let Some(top) = super::top::Top::of(f) {
                        strings.extend(top.code_words(at));
                    }
                }
                _ => {}
            }
        }
        Layout {
            stride: at,
            segment_base,
            attributes,
            scores,
            features,
            strings,
        }
    }

    #[inline]
    pub fn channel_last_seen(&self, channel: usize) -> usize {
        CHANNELS + channel
    }

    #[inline]
    pub fn in_segment(&self, p: &[u32], segment: usize) -> bool {
        p[self.segment_base + segment / 32] & (1 << (segment % 32)) != 0
    }

    #[inline]
    pub fn set_segment(&self, p: &mut [u32], segment: usize, member: bool) {
        let word = &mut p[self.segment_base + segment / 32];
        if member {
            *word |= 1 << (segment % 32);
        } else {
            *word &= !(1 << (segment % 32));
        }
    }
}

#[inline]
pub(crate) fn get_f64(p: &[u32], at: usize) -> f64 {
    f64::from_bits(p[at] as u64 | (p[at + 1] as u64) << 32)
}

#[inline]
pub(crate) fn set_f64(p: &mut [u32], at: usize, value: f64) {
    let bits = value.to_bits();
    p[at] = bits as u32;
    p[at + 1] = (bits >> 32) as u32;
}

/// The words of a feature in a row: a window's ring and its head; a last-seen time; a
/// value (two words for a number, an f64 low word first; one for a string's code) and
/// the time of the event it came from (0: none yet).
pub(crate) fn feature_words(f: &Feature) -> usize {
    match (f, Ring::of(f)) {
        (_, Some(ring)) => 1 + ring.words(),
        (Feature::Value { ty, .. }, None) => value_words(*ty) + 1,
        (Feature::Top { .. }, None) => super::top::Top::of(f).map_or(0, |t| t.words()),
        _ => 1,
    }
}

/// Words of a value of type `ty` in a row.
pub(crate) fn value_words(ty: ValueType) -> usize {
    if ty == ValueType::Number {
        2
    } else {
        1
    }
}

/// A window feature's shape, copied out of the config for the hot path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ring {
    pub width: u32,
    pub buckets: u32,
    pub sum: bool,
}

impl Ring {
    pub fn of(feature: &Feature) -> Option<Ring> {
        match feature {
            Feature::Window {
                bucket_width,
                buckets,
                aggregate,
                ..
            } => Some(Ring {
                width: *bucket_width,
                buckets: *buckets,
                sum: matches!(aggregate, Aggregate::Sum(_)),
            }),
            Feature::LastSeen { .. } | Feature::Value { .. } | Feature::Top { .. } => None,
        }
    }

    /// Words of bucket storage: counts are `u16` (two per word), sums `f32`.
    pub fn words(&self) -> usize {
        if self.sum {
            self.buckets as usize
        } else {
            (self.buckets as usize).div_ceil(2)
        }
    }

    #[inline]
    fn cell(&self, p: &[u32], at: usize, bucket: u32) -> f64 {
        let i = (bucket % self.buckets) as usize;
        if self.sum {
            f32::from_bits(p[at + 1 + i]) as f64
        } else {
            ((p[at + 1 + i / 2] >> (16 * (i % 2))) & 0xffff) as f64
        }
    }

    /// Sets a bucket; counts saturate at 65,535 per bucket.
    #[inline]
    fn put(&self, p: &mut [u32], at: usize, bucket: u32, value: f64) {
        let i = (bucket % self.buckets) as usize;
        if self.sum {
            p[at + 1 + i] = (value as f32).to_bits();
        } else {
            let shift = 16 * (i % 2);
            let word = &mut p[at + 1 + i / 2];
            let count = value.clamp(0.0, 65_535.0) as u32;
            *word = (*word & !(0xffff << shift)) | count << shift;
        }
    }

    /// Moves the ring forward to bucket `n`, clearing buckets that left the window.
    #[inline]
    pub fn advance(&self, p: &mut [u32], at: usize, n: u32) {
        let head = p[at];
        if n <= head {
            return;
        }
        if n - head >= self.buckets {
            p[at + 1..at + 1 + self.words()].fill(0);
        } else {
            for b in head + 1..=n {
                self.put(p, at, b, 0.0);
            }
        }
        p[at] = n;
    }

    /// Adds an event at time `ts` (seconds, `ts <= now`) to the window at `now`.
    #[inline]
    pub fn add(&self, p: &mut [u32], at: usize, now: u32, ts: u32, amount: f64) {
        let n = now / self.width;
        self.advance(p, at, n);
        let b = ts / self.width;
        if b + self.buckets <= n || b > n {
            return; // older than the window: it no longer counts
        }
        self.put(p, at, b, self.cell(p, at, b) + amount);
    }

    /// The window's value at `now`, without moving the ring.
    #[inline]
    pub fn value(&self, p: &[u32], at: usize, now: u32) -> f64 {
        let n = now / self.width;
        let head = p[at];
        let mut total = 0.0;
        for b in self.live_buckets(n, head) {
            total += self.cell(p, at, b);
        }
        total
    }

    fn live_buckets(&self, n: u32, head: u32) -> std::ops::RangeInclusive<u32> {
        let lo = n.max(head).saturating_sub(self.buckets - 1);
        lo..=head.min(n)
    }

    /// When the value next changes with time alone: the oldest non-empty bucket leaving.
    pub fn next_change(&self, p: &[u32], at: usize, now: u32) -> Option<u32> {
        let n = now / self.width;
        let head = p[at];
        self.live_buckets(n, head)
            .find(|&b| self.cell(p, at, b) != 0.0)
            .map(|b| (b + self.buckets).saturating_mul(self.width))
    }

    /// Adds `from`'s window into `into`'s (both at `now`): customers merging.
    pub fn merge(&self, into: &mut [u32], from: &[u32], at: usize, now: u32) {
        self.merge_from(into, at, from, at, now)
    }

    /// [`Ring::merge`] of rings at different offsets (a top's slots).
    pub fn merge_from(&self, into: &mut [u32], at: usize, from: &[u32], from_at: usize, now: u32) {
        let n = now / self.width;
        self.advance(into, at, n);
        for b in self.live_buckets(n, from[from_at]) {
            let v = self.cell(from, from_at, b);
            if v != 0.0 {
                self.put(into, at, b, self.cell(into, at, b) + v);
            }
        }
    }
}

/// A decayed score: `value` as of `time`, halving every `half_life` seconds.
#[inline]
pub(crate) fn decayed_at(p: &[u32], at: usize, half_life: u32, now: u32) -> f64 {
    let value = get_f64(p, at);
    let time = p[at + 2];
    if time == 0 || value == 0.0 {
        return 0.0;
    }
    value * decay(now.saturating_sub(time), half_life)
}

#[inline]
pub(crate) fn decay(elapsed: u32, half_life: u32) -> f64 {
    (-(elapsed as f64) / half_life as f64).exp2()
}

/// Adds an event of weight `w` at time `ts` to a decayed score.
#[inline]
pub(crate) fn decayed_add(p: &mut [u32], at: usize, half_life: u32, ts: u32, w: f64) {
    let value = get_f64(p, at);
    let time = p[at + 2];
    if time == 0 {
        set_f64(p, at, w);
        p[at + 2] = ts;
    } else if ts >= time {
        set_f64(p, at, value * decay(ts - time, half_life) + w);
        p[at + 2] = ts;
    } else {
        set_f64(p, at, value + w * decay(time - ts, half_life));
    }
}

/// Merges the profile row `from` into `into` at time `now`: counts and sums add up,
/// first seen is the earliest, last-seen times the latest, attributes keep the newest
/// value, decayed scores add after decaying to a common time. Segment bits and the
/// timer are left to the caller, which re-evaluates the merged profile.
pub(crate) fn merge_rows(
    config: &Config,
    layout: &Layout,
    into: &mut [u32],
    from: &[u32],
    now: u32,
) {
    // 0 is "never", not the earliest time.
    into[FIRST_SEEN] = match (into[FIRST_SEEN], from[FIRST_SEEN]) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    };
    into[LAST_SEEN] = into[LAST_SEEN].max(from[LAST_SEEN]);
    into[KEY_MASK] |= from[KEY_MASK];
    for c in 0..config.channels.len() {
        let at = layout.channel_last_seen(c);
        into[at] = into[at].max(from[at]);
    }
    for &(at, ty) in &layout.attributes {
        let width = if ty == ValueType::Number { 2 } else { 1 };
        let time_at = at + width;
        if from[time_at] > into[time_at] {
            into[at..=time_at].copy_from_slice(&from[at..=time_at]);
        }
    }
    for (s, score) in config.scores.iter().enumerate() {
        if let (Some(at), ScoreModel::Decayed { half_life, .. }) = (layout.scores[s], &score.model)
        {
            let (ta, tb) = (into[at + 2], from[at + 2]);
            if tb == 0 {
                continue;
            }
            if ta == 0 {
                into[at..at + 3].copy_from_slice(&from[at..at + 3]);
                continue;
            }
            let t = ta.max(tb);
            let value = get_f64(into, at) * decay(t - ta, *half_life)
                + get_f64(from, at) * decay(t - tb, *half_life);
            set_f64(into, at, value);
            into[at + 2] = t;
        }
    }
    for (f, feature) in config.features.iter().enumerate() {
        let at = layout.features[f];
        match (feature, Ring::of(feature)) {
            (_, Some(ring)) => ring.merge(into, from, at, now),
            (Feature::Top { .. }, None) => {
                if let Some(top) = super::top::Top::of(feature) {
                    top.merge(into, from, at, now);
                }
            }
            (Feature::Value { ty, last, .. }, None) => {
                // The earlier first value, the later last one; on a tie the survivor's.
                let time_at = at + value_words(*ty);
                let (mine, theirs) = (into[time_at], from[time_at]);
                let take =
                    theirs != 0 && (mine == 0 || if *last { theirs > mine } else { theirs < mine });
                if take {
                    into[at..=time_at].copy_from_slice(&from[at..=time_at]);
                }
            }
            _ => into[at] = into[at].max(from[at]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(sum: bool) -> (Ring, Vec<u32>) {
        let r = Ring {
            width: 10,
            buckets: 4,
            sum,
        };
        (r, vec![0; 1 + r.words()])
    }

    #[test]
    fn window_counts_the_current_bucket_and_the_three_before() {
        let (r, mut p) = ring(false);
        r.add(&mut p, 0, 105, 105, 1.0); // bucket 10
        r.add(&mut p, 0, 105, 75, 1.0); // bucket 7
        r.add(&mut p, 0, 105, 69, 1.0); // bucket 6: too old at bucket 10
        assert_eq!(r.value(&p, 0, 105), 2.0);
        // Bucket 7 leaves when bucket 11 starts, at t=110.
        assert_eq!(r.next_change(&p, 0, 105), Some(110));
        assert_eq!(r.value(&p, 0, 109), 2.0);
        assert_eq!(r.value(&p, 0, 110), 1.0);
        assert_eq!(r.value(&p, 0, 139), 1.0);
        assert_eq!(r.value(&p, 0, 140), 0.0);
        assert_eq!(r.next_change(&p, 0, 140), None);
    }

    #[test]
    fn advancing_far_clears_everything() {
        let (r, mut p) = ring(true);
        r.add(&mut p, 0, 100, 100, 2.5);
        r.add(&mut p, 0, 1000, 1000, 1.5);
        assert_eq!(r.value(&p, 0, 1000), 1.5);
    }

    #[test]
    fn merging_windows_adds_live_buckets() {
        let (r, mut a) = ring(true);
        let (_, mut b) = ring(true);
        r.add(&mut a, 0, 100, 95, 1.0);
        r.add(&mut b, 0, 120, 118, 2.0);
        r.add(&mut b, 0, 120, 100, 4.0);
        r.merge(&mut a, &b, 0, 120);
        assert_eq!(r.value(&a, 0, 120), 7.0);
        assert_eq!(r.value(&a, 0, 130), 6.0);
    }

    #[test]
    fn decayed_scores_halve_per_half_life_in_any_order() {
        let mut p = vec![0u32; 3];
        decayed_add(&mut p, 0, 100, 1000, 8.0);
        decayed_add(&mut p, 0, 100, 900, 8.0); // late event: already decayed by half
        assert!((decayed_at(&p, 0, 100, 1000) - 12.0).abs() < 1e-9);
        assert!((decayed_at(&p, 0, 100, 1100) - 6.0).abs() < 1e-9);
    }
}
