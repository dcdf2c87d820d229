//! Moving profiles from one config's layout to another's: what lets a snapshot written
//! under one config be loaded under a changed one.
//!
//! A profile row is laid out from the config (see `profile`), so a changed config puts
//! things elsewhere. [`LayoutMap`] matches the two by name: channels, attributes (same
//! name and type), decayed scores (same name) and aggregates (same rule text, such as
//! `count(purchase, 30d)`, and the same window shape). What matches is copied; what the
//! new config adds starts empty, as if nothing had happened before the change; what it
//! drops is gone. Segment bits are not copied: every segment is evaluated afresh for
//! every customer, so new and changed rules hold at once, and the timers follow from
//! that evaluation. What the shard's extension holds (offer state) is moved by the
//! extension itself ([`Extension::remap`], [`Extension::convert`]).
//!
//! Namespaces may be added or reordered, never removed: customers' keys in a removed
//! namespace would be lost, and with them the way to find the customer.

use super::event::Key;
use super::profile::{Ring, FIRST_SEEN, KEY_MASK, LAST_SEEN};
use super::shard::ShardState;
use super::Extension;
use super::Plan;
use crate::config::{Feature, ScoreModel, ValueType};

/// Where each part of an old row goes in a new one, and how indexes translate.
pub(crate) struct LayoutMap<X: Extension> {
    /// `(old offset, new offset, words)`.
    moves: Vec<(usize, usize, usize)>,
    namespaces: Vec<usize>,
    /// How the extension's indexes translate (decided by the extension).
    extension: X::Remap,
}

use super::profile::feature_words;

/// Whether `b` can take over `a`'s words: the same kind and, for a window, the same
/// buckets; for a value the same type (a string code is not a number).
fn same_shape(a: &Feature, b: &Feature) -> bool {
    match (a, b, Ring::of(a), Ring::of(b)) {
        (_, _, Some(x), Some(y)) => x.width == y.width && x.buckets == y.buckets && x.sum == y.sum,
        (Feature::LastSeen { .. }, Feature::LastSeen { .. }, None, None) => true,
        (
            Feature::Value { ty: x, last: l, .. },
            Feature::Value { ty: y, last: m, .. },
            None,
            None,
        ) => x == y && l == m,
        (
            Feature::Top {
                bucket_width: w,
                buckets: b,
                ..
            },
            Feature::Top {
                bucket_width: x,
                buckets: c,
                ..
            },
            None,
            None,
        ) => w == x && b == c,
        _ => false,
    }
}

impl<X: Extension> LayoutMap<X> {
    pub fn new(from: &Plan, to: &Plan) -> Result<LayoutMap<X>, String> {
        let (a, b) = (&from.config, &to.config);
        let position = |names: &[String], name: &str| names.iter().position(|n| n == name);
        let mut namespaces = Vec::new();
        for name in &a.namespaces {
            namespaces.push(position(&b.namespaces, name).ok_or_else(|| {
                format!("namespace `{name}` is gone, and customers' keys in it would be lost; keep it in [identity] namespaces")
            })?);
        }
        let channels: Vec<Option<usize>> = a
            .channels
            .iter()
            .map(|c| position(&b.channels, c))
            .collect();
        let mut moves = vec![(FIRST_SEEN, FIRST_SEEN, 1), (LAST_SEEN, LAST_SEEN, 1)];
        for (old, new) in channels.iter().enumerate() {
            if let Some(new) = new {
                moves.push((
                    from.layout.channel_last_seen(old),
                    to.layout.channel_last_seen(*new),
                    1,
                ));
            }
        }
        for (i, attr) in a.attributes.iter().enumerate() {
            let found = b
                .attributes
                .iter()
                .position(|x| x.name == attr.name && x.ty == attr.ty);
            if let Some(j) = found {
                let words = if attr.ty == ValueType::Number { 3 } else { 2 };
                moves.push((
                    from.layout.attributes[i].0,
                    to.layout.attributes[j].0,
                    words,
                ));
            }
        }
        for (i, score) in a.scores.iter().enumerate() {
            let (Some(at), ScoreModel::Decayed { .. }) = (from.layout.scores[i], &score.model)
            else {
                continue;
            };
            let found = b.scores.iter().position(|x| {
                x.name == score.name && matches!(x.model, ScoreModel::Decayed { .. })
            });
            if let Some(new_at) = found.and_then(|j| to.layout.scores[j]) {
                moves.push((at, new_at, 3));
            }
        }
        for (i, feature) in a.features.iter().enumerate() {
            let found = b
                .features
                .iter()
                .position(|x| x.label() == feature.label() && same_shape(x, feature));
            if let Some(j) = found {
                moves.push((
                    from.layout.features[i],
                    to.layout.features[j],
                    feature_words(feature),
                ));
            }
        }
        Ok(LayoutMap {
            moves,
            namespaces,
            extension: X::remap(a, b),
        })
    }

    /// The shard `old` (in `from`'s layout) in `to`'s layout, every segment evaluated.
    pub fn convert(&self, old: ShardState<X>, from: &Plan, to: &Plan) -> ShardState<X> {
        let mut new = ShardState::with_slots(
            to,
            old.id_base(),
            old.capacity(),
            old.now(),
            old.generations().to_vec(),
            old.free_slots().to_vec(),
        );
        for local in 0..old.slots() as u32 {
            if !old.is_live(local) {
                continue;
            }
            let keys: Vec<Key> = old
                .keys(local)
                .iter()
                .map(|k| Key {
                    namespace: self.namespaces[k.namespace],
                    text: k.text.clone(),
                })
                .collect();
            let src = old.row(from, local);
            let dst = new.row_mut(to, local);
            // (`old` and `new` are two shards: no aliasing.)
            for &(at, to_at, words) in &self.moves {
                dst[to_at..to_at + words].copy_from_slice(&src[at..at + words]);
            }
            dst[KEY_MASK] = 0;
            new.add_keys(to, local, keys);
            new.evaluate_all(to, local);
        }
        new.set_extension(old.into_extension().convert(&self.extension, &to.config));
        new
    }
}
