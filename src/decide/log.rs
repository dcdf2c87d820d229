//! Recent decisions, so that feedback can refer to a decision by its id alone.
//!
//! A bounded, sharded table: each shard keeps its decisions in arrival order and forgets
//! the oldest once it holds its share of `decisions.remember_decisions`. Feedback for a
//! forgotten decision gets a clear error that says to send (customer, offer, channel)
//! instead, never a silent drop.

use std::collections::{HashMap, VecDeque};

use compact_str::CompactString;
use parking_lot::Mutex;

const SHARDS: usize = 16;

/// What feedback needs from a decision.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LoggedDecision {
    /// A key of the customer (its primary key when it was known); keys are stable
    /// across merges, customer ids are not.
    pub key: CompactString,
    pub channel: u8,
    /// The offers returned, best first.
    pub offers: Vec<u16>,
}

struct Shard {
    by_id: HashMap<u64, LoggedDecision, ahash::RandomState>,
    order: VecDeque<u64>,
}

pub(crate) struct DecisionLog {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

impl DecisionLog {
    pub fn new(capacity: u32) -> DecisionLog {
        DecisionLog {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        by_id: HashMap::default(),
                        order: VecDeque::new(),
                    })
                })
                .collect(),
            per_shard: (capacity as usize).div_ceil(SHARDS).max(1),
        }
    }

    /// Moves every decision of `other` (of the same capacity) into this log, which must
    /// be empty.
    pub fn take_from(&self, other: &DecisionLog) {
        for (mine, theirs) in self.shards.iter().zip(other.shards.iter()) {
            let (mut mine, mut theirs) = (mine.lock(), theirs.lock());
            std::mem::swap(&mut mine.by_id, &mut theirs.by_id);
            std::mem::swap(&mut mine.order, &mut theirs.order);
        }
    }

    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    pub fn insert(&self, id: u64, decision: LoggedDecision) {
        let mut shard = self.shards[id as usize % SHARDS].lock();
        if shard.order.len() >= self.per_shard {
            if let Some(old) = shard.order.pop_front() {
                shard.by_id.remove(&old);
            }
        }
        shard.order.push_back(id);
        shard.by_id.insert(id, decision);
    }

    /// The decisions remembered for a customer known by one of `keys`, by id.
    pub fn of(&self, keys: &[String]) -> Vec<(u64, LoggedDecision)> {
        let mut found: Vec<(u64, LoggedDecision)> = self
            .shards
            .iter()
            .flat_map(|shard| {
                shard
                    .lock()
                    .by_id
                    .iter()
                    .filter(|(_, d)| keys.iter().any(|k| k.as_str() == d.key.as_str()))
                    .map(|(id, d)| (*id, d.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        found.sort_by_key(|(id, _)| *id);
        found
    }

    /// Drops every decision made for a customer known by one of `keys` (FORGET).
    pub fn forget(&self, keys: &[String]) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard
                .by_id
                .retain(|_, d| !keys.iter().any(|k| k.as_str() == d.key.as_str()));
            let Shard { by_id, order } = &mut *shard;
            order.retain(|id| by_id.contains_key(id));
        }
    }

    pub fn get(&self, id: u64) -> Option<LoggedDecision> {
        self.shards[id as usize % SHARDS]
            .lock()
            .by_id
            .get(&id)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest_beyond_capacity() {
        let log = DecisionLog::new(32);
        for id in 0..64u64 {
            log.insert(
                id,
                LoggedDecision {
                    key: "user:1".into(),
                    channel: 0,
                    offers: vec![id as u16],
                },
            );
        }
        assert_eq!(log.get(0), None);
        assert_eq!(log.get(63).map(|d| d.offers), Some(vec![63]));
    }
}
