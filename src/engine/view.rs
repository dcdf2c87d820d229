//! The profile view: everything omnia knows about one customer, as a shop assistant or
//! a support agent would want to see it.

use super::event::Key;
use super::profile::{get_f64, FIRST_SEEN, LAST_SEEN};
use super::Engine;
use crate::config::ValueType;
use crate::model::event::RawValue;
pub use crate::model::profile::ProfileView;

/// The key in the most preferred namespace (lowest index), first linked on a tie.
pub(crate) fn primary_key(keys: &[Key]) -> String {
    keys.iter()
        .min_by_key(|k| k.namespace)
        .map(|k| k.text.to_string())
        .unwrap_or_default()
}

impl<X: super::Extension> Engine<X> {
    /// Evaluates a segment's rule for one customer now, without changing anything:
    /// what the rule says, whatever the stored membership. `None` for an unknown key.
    pub fn evaluate(&self, segment: usize, key: &str) -> Option<bool> {
        let id = self.customer_of(key)?;
        let (shard, local) = self.split(id);
        let state = self.lock(shard);
        let rule = &self.config().segments.get(segment)?.expr;
        state
            .is_live(local)
            .then(|| state.eval(&self.plan, local).truth(rule))
    }

    /// The profile of the customer a key belongs to; `None` for an unknown key.
    pub fn profile(&self, key: &str) -> Option<ProfileView> {
        let id = self.customer_of(key)?;
        let (shard, local) = self.split(id);
        let state = self.lock(shard);
        if !state.is_live(local) {
            return None;
        }
        let config = self.config();
        let layout = &self.plan.layout;
        let eval = state.eval(&self.plan, local);
        let row = eval.p;
        let attributes = config
            .attributes
            .iter()
            .zip(&layout.attributes)
            .filter_map(|(def, &(at, ty))| {
                let time_at = at + if ty == ValueType::Number { 2 } else { 1 };
                if row[time_at] == 0 {
                    return None;
                }
                let value = match ty {
                    ValueType::Number => RawValue::Num(get_f64(row, at)),
                    ValueType::Bool => RawValue::Bool(row[at] != 0),
                    ValueType::String => RawValue::Str(
                        config
                            .interner
                            .resolve(row[at])
                            .map(|s| s.to_string())
                            .unwrap_or_default(),
                    ),
                };
                Some((def.name.clone(), value))
            })
            .collect();
        use crate::config::{rule::Expr, Feature};
        let mut texts = Vec::new();
        let aggregates = config
            .features
            .iter()
            .enumerate()
            .filter_map(|(f, feature)| {
                let value = match feature {
                    Feature::Window { .. } => eval.number(&Expr::Window(f)),
                    Feature::LastSeen { .. } => eval.number(&Expr::Since(f)),
                    Feature::Value {
                        ty: ValueType::String,
                        ..
                    } => {
                        let code = row[layout.features[f]];
                        if let Some(text) = config.interner.resolve(code).filter(|_| code != 0) {
                            texts.push((feature.label().to_string(), text.to_string()));
                        }
                        return None;
                    }
                    Feature::Value { .. } => eval.number(&Expr::ValueNum(f)),
                    Feature::Top { .. } => {
                        let code = eval.string(&Expr::Top(f));
                        if let Some(text) = config.interner.resolve(code).filter(|_| code != 0) {
                            texts.push((feature.label().to_string(), text.to_string()));
                        }
                        return None;
                    }
                };
                Some((feature.label().to_string(), value))
            })
            .collect();
        Some(ProfileView {
            customer: id,
            primary_key: primary_key(state.keys(local)),
            keys: state.key_texts(local),
            first_seen: row[FIRST_SEEN],
            last_seen: row[LAST_SEEN],
            channels: config
                .channels
                .iter()
                .enumerate()
                .filter_map(|(c, name)| {
                    let t = row[layout.channel_last_seen(c)];
                    (t != 0).then(|| (name.clone(), t))
                })
                .collect(),
            aggregates,
            texts,
            attributes,
            scores: (0..config.scores.len())
                .map(|s| (config.scores[s].name.clone(), eval.score(s)))
                .collect(),
            segments: config
                .segments
                .iter()
                .enumerate()
                .filter(|(s, _)| layout.in_segment(row, *s))
                .map(|(_, d)| d.name.clone())
                .collect(),
            as_of: state.now(),
        })
    }
}
