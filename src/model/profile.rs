//! The profile view: everything omnia knows about one customer, as a shop assistant or
//! a support agent would want to see it. The engine produces it, the protocol carries it,
//! the command line prints it.

use std::fmt;

use super::event::RawValue;

/// Dense customer id, as the engine assigns it.
pub type CustomerId = u32;

/// A customer's profile at one moment.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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
    /// Every aggregate the config keeps whose value is a number, by the rule text that
    /// asked for it (NaN for a `first` or `last` number not seen yet).
    pub aggregates: Vec<(String, f64)>,
    /// The aggregates whose value is a string (`first` and `last` of a string property,
    /// `top`), by rule text, while they have one.
    pub texts: Vec<(String, String)>,
    pub attributes: Vec<(String, RawValue)>,
    pub scores: Vec<(String, f64)>,
    /// Segments the customer is in, in config order.
    pub segments: Vec<String>,
    /// The time the view was taken, seconds since the Unix epoch.
    pub as_of: u32,
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

    pub fn attribute(&self, name: &str) -> Option<&RawValue> {
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
        for (label, value) in &self.texts {
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
