//! The profile view: everything omnia knows about one customer, as a shop assistant or
//! a support agent would want to see it.

use std::fmt;

use super::event::Key;
use super::profile::{get_f64, FIRST_SEEN, LAST_SEEN};
use super::{CustomerId, Engine};
use crate::config::ValueType;

/// A customer's profile at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileView {
    pub customer: CustomerId,
    /// The key in the most preferred namespace.
    pub primary_key: String,
    pub keys: Vec<String>,
    /// Seconds since the Unix epoch.
    pub first_seen: u32,
    pub last_seen: u32,
    /// Channels with activity, and the time of the last event on each.
    pub channels: Vec<(String, u32)>,
    /// Every aggregate the config keeps, by the rule text that asked for it.
    pub aggregates: Vec<(String, f64)>,
    pub attributes: Vec<(String, AttributeValue)>,
    pub scores: Vec<(String, f64)>,
    /// Segments the customer is in, in config order.
    pub segments: Vec<String>,
    /// The time the view was taken, seconds since the Unix epoch.
    pub as_of: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    Num(f64),
    Str(String),
    Bool(bool),
}

impl fmt::Display for AttributeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttributeValue::Num(v) => write!(f, "{v}"),
            AttributeValue::Str(s) => write!(f, "{s:?}"),
            AttributeValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl ProfileView {
    pub fn aggregate(&self, label: &str) -> Option<f64> {
        self.aggregates
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, v)| *v)
    }

    pub fn score(&self, name: &str) -> Option<f64> {
        self.scores.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    pub fn attribute(&self, name: &str) -> Option<&AttributeValue> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    pub fn in_segment(&self, name: &str) -> bool {
        self.segments.iter().any(|s| s == name)
    }
}

impl fmt::Display for ProfileView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ago = |t: u32| {
            if t == 0 {
                "never".to_string()
            } else {
                format!("{}s ago", self.as_of.saturating_sub(t))
            }
        };
        writeln!(f, "customer {} ({})", self.customer, self.primary_key)?;
        writeln!(f, "  keys:       {}", self.keys.join(", "))?;
        writeln!(f, "  first seen: {}", ago(self.first_seen))?;
        writeln!(f, "  last seen:  {}", ago(self.last_seen))?;
        for (channel, t) in &self.channels {
            writeln!(f, "  channel {channel:<12} last {}", ago(*t))?;
        }
        for (name, value) in &self.attributes {
            writeln!(f, "  attr.{name:<20} {value}")?;
        }
        for (label, value) in &self.aggregates {
            writeln!(f, "  {label:<45} {value}")?;
        }
        for (name, value) in &self.scores {
            writeln!(
                f,
                "  score({name}){:<w$} {value:.4}",
                "",
                w = 38usize.saturating_sub(name.len())
            )?;
        }
        write!(
            f,
            "  segments:   {}",
            if self.segments.is_empty() {
                "(none)".to_string()
            } else {
                self.segments.join(", ")
            }
        )
    }
}

/// The key in the most preferred namespace (lowest index), first linked on a tie.
pub(crate) fn primary_key(keys: &[Key]) -> String {
    keys.iter()
        .min_by_key(|k| k.namespace)
        .map(|k| k.text.to_string())
        .unwrap_or_default()
}

impl Engine {
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
        let mut keys: Vec<&Key> = state.keys[local as usize].iter().collect();
        keys.sort_by_key(|k| k.namespace);
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
                    ValueType::Number => AttributeValue::Num(get_f64(row, at)),
                    ValueType::Bool => AttributeValue::Bool(row[at] != 0),
                    ValueType::String => AttributeValue::Str(
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
        let aggregates = config
            .features
            .iter()
            .enumerate()
            .map(|(f, feature)| {
                let value = match feature {
                    crate::config::Feature::Window { .. } => {
                        eval.number(&crate::config::rule::Expr::Window(f))
                    }
                    crate::config::Feature::LastSeen { .. } => {
                        eval.number(&crate::config::rule::Expr::Since(f))
                    }
                };
                (feature.label().to_string(), value)
            })
            .collect();
        Some(ProfileView {
            customer: id,
            primary_key: primary_key(&state.keys[local as usize]),
            keys: keys.iter().map(|k| k.text.to_string()).collect(),
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
            as_of: state.now,
        })
    }
}
