//! Segment queries: counts, membership, and set algebra over segment bitmaps.
//!
//! A query such as `cart_abandoners and not email_reachable` is parsed with the rule
//! language's parser (segment names, `and`, `or`, `not`, parentheses; `all` is every
//! customer) and evaluated per shard on that shard's roaring bitmaps, never by scanning
//! profiles. Counts are summed over shards; member pages walk the shards in id order,
//! so a cursor (the next customer id) pages through a stable order.

use std::borrow::Cow;

use roaring::RoaringBitmap;

use super::shard::ShardState;
use super::Extension;
use super::{CustomerId, Engine};
use crate::config::rule::{parse, RuleError};
use crate::config::Config;

/// A parsed set-algebra expression over segments.
#[derive(Debug, Clone, PartialEq)]
pub enum SetQuery {
    Segment(usize),
    /// Every customer.
    All,
    Not(Box<SetQuery>),
    And(Box<SetQuery>, Box<SetQuery>),
    Or(Box<SetQuery>, Box<SetQuery>),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    #[error("unknown segment `{name}`; declared segments: {declared}")]
    UnknownSegment { name: String, declared: String },
    #[error("bad segment query at column {column} of `{query}`: {message}")]
    Syntax {
        query: String,
        column: usize,
        message: String,
    },
}

/// One page of segment members.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Customer ids and their primary keys, in id order.
    pub members: Vec<(CustomerId, String)>,
    /// Where the next page starts; `None` after the last page.
    pub next_cursor: Option<CustomerId>,
}

impl SetQuery {
    /// Parses `text` against the config's segment names.
    pub fn parse(config: &Config, text: &str) -> Result<SetQuery, QueryError> {
        let syntax = |e: RuleError| QueryError::Syntax {
            query: text.to_string(),
            column: text[..e.span.start.min(text.len())].chars().count() + 1,
            message: e.message,
        };
        let node = parse(text).map_err(syntax)?;
        Self::from_node(config, text, &node)
    }

    fn from_node(
        config: &Config,
        text: &str,
        node: &crate::config::rule::parser::Node,
    ) -> Result<SetQuery, QueryError> {
        use crate::config::rule::parser::{Call, NodeKind};
        let segment = |name: &str| {
            config
                .segment_id(name)
                .map(SetQuery::Segment)
                .ok_or_else(|| QueryError::UnknownSegment {
                    name: name.to_string(),
                    declared: config
                        .segments
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        };
        Ok(match &node.kind {
            NodeKind::Property(name) if name == "all" && config.segment_id("all").is_none() => {
                SetQuery::All
            }
            NodeKind::Property(name) => segment(name)?,
            NodeKind::Call(Call::In(name)) => segment(&name.text)?,
            NodeKind::Not(x) => SetQuery::Not(Box::new(Self::from_node(config, text, x)?)),
            NodeKind::And(a, b) => SetQuery::And(
                Box::new(Self::from_node(config, text, a)?),
                Box::new(Self::from_node(config, text, b)?),
            ),
            NodeKind::Or(a, b) => SetQuery::Or(
                Box::new(Self::from_node(config, text, a)?),
                Box::new(Self::from_node(config, text, b)?),
            ),
            _ => return Err(QueryError::Syntax {
                query: text.to_string(),
                column: text[..node.span.start.min(text.len())].chars().count() + 1,
                message:
                    "a segment query combines segment names with `and`, `or`, `not` and parentheses"
                        .into(),
            }),
        })
    }

    fn eval<'a, X: Extension>(&self, shard: &'a ShardState<X>) -> Cow<'a, RoaringBitmap> {
        match self {
            SetQuery::Segment(s) => Cow::Borrowed(shard.members(*s)),
            SetQuery::All => Cow::Borrowed(shard.live()),
            SetQuery::Not(x) => Cow::Owned(shard.live() - x.eval(shard).as_ref()),
            SetQuery::And(a, b) => match (a.as_ref(), b.as_ref()) {
                // `a and not b` without building the complement.
                (x, SetQuery::Not(y)) | (SetQuery::Not(y), x) => {
                    Cow::Owned(x.eval(shard).as_ref() - y.eval(shard).as_ref())
                }
                _ => Cow::Owned(a.eval(shard).as_ref() & b.eval(shard).as_ref()),
            },
            SetQuery::Or(a, b) => Cow::Owned(a.eval(shard).as_ref() | b.eval(shard).as_ref()),
        }
    }

    /// The count in one shard, avoiding a materialised result where roaring can.
    fn count<X: Extension>(&self, shard: &ShardState<X>) -> u64 {
        match self {
            SetQuery::Segment(_) | SetQuery::All => self.eval(shard).len(),
            SetQuery::Not(x) => shard.live().len() - x.count(shard),
            SetQuery::And(a, b) => match (a.as_ref(), b.as_ref()) {
                (x, SetQuery::Not(y)) | (SetQuery::Not(y), x) => {
                    let x = x.eval(shard);
                    x.len() - x.intersection_len(y.eval(shard).as_ref())
                }
                _ => a.eval(shard).intersection_len(b.eval(shard).as_ref()),
            },
            SetQuery::Or(a, b) => a.eval(shard).union_len(b.eval(shard).as_ref()),
        }
    }
}

impl<X: Extension> Engine<X> {
    /// Parses a set-algebra query over segment names.
    pub fn query(&self, text: &str) -> Result<SetQuery, QueryError> {
        SetQuery::parse(self.config(), text)
    }

    /// Number of customers in a segment.
    pub fn segment_count(&self, segment: &str) -> Result<u64, QueryError> {
        let query = self.query(segment)?;
        Ok(self.count(&query))
    }

    /// Number of customers a query selects.
    pub fn count(&self, query: &SetQuery) -> u64 {
        (0..self.shard_count())
            .map(|s| query.count(&self.lock(s)))
            .sum()
    }

    /// Whether the customer with `key` is in `segment`; an unknown key is in no segment.
    pub fn contains(&self, segment: &str, key: &str) -> Result<bool, QueryError> {
        let s = self
            .config()
            .segment_id(segment)
            .ok_or_else(|| QueryError::UnknownSegment {
                name: segment.to_string(),
                declared: self
                    .config()
                    .segments
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let Some(id) = self.customer_of(key) else {
            return Ok(false);
        };
        let (shard, _) = self.split(id);
        Ok(self.lock(shard).members(s).contains(id))
    }

    /// Up to `limit` members of a query's result, from customer id `cursor` on.
    pub fn members(&self, query: &SetQuery, cursor: CustomerId, limit: usize) -> Page {
        let mut members = Vec::new();
        let (first_shard, _) = self.split(cursor);
        for s in first_shard..self.shard_count() {
            let state = self.lock(s);
            let result = query.eval(&state);
            for id in result.range(cursor..) {
                if members.len() == limit {
                    return Page {
                        members,
                        next_cursor: Some(id),
                    };
                }
                let (_, local) = self.split(id);
                members.push((id, super::view::primary_key(state.keys(local))));
            }
        }
        Page {
            members,
            next_cursor: None,
        }
    }
}
