//! Global offer budgets, spent exactly under concurrency.
//!
//! A budget is one `AtomicU64`: the period number in the high 32 bits and the units
//! spent in it in the low 32. Spending is a compare-and-swap loop that never lets the
//! count pass the limit, so sixteen channels racing for the last unit spend it once; a
//! new period (for `per = "1d"`, the next UTC day) starts from zero in the same swap.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::BudgetDef;

#[derive(Debug)]
pub(crate) struct Budget {
    def: BudgetDef,
    state: AtomicU64,
}

impl Budget {
    pub fn new(def: BudgetDef) -> Budget {
        Budget {
            def,
            state: AtomicU64::new(0),
        }
    }

    pub fn def(&self) -> &BudgetDef {
        &self.def
    }

    pub fn period(&self, now: u32) -> u64 {
        self.def.per.map_or(0, |per| (now / per) as u64)
    }

    /// Units spent in the period containing `now`.
    pub fn spent(&self, now: u32) -> u64 {
        let state = self.state.load(Ordering::Acquire);
        if state >> 32 == self.period(now) {
            state & 0xFFFF_FFFF
        } else {
            0
        }
    }

    pub fn exhausted(&self, now: u32) -> bool {
        self.spent(now) >= self.def.limit
    }

    /// Spends one unit if any is left in the current period.
    pub fn try_spend(&self, now: u32) -> bool {
        let period = self.period(now);
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            let spent = if current >> 32 == period {
                current & 0xFFFF_FFFF
            } else if current >> 32 > period {
                // Another thread already moved to a later period (its clock read was
                // later); this spend belongs to the past one, which is gone: refuse.
                return false;
            } else {
                0
            };
            if spent >= self.def.limit {
                return false;
            }
            let next = period << 32 | (spent + 1);
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Adds units spent in `period`, read from a snapshot: a later period replaces an
    /// earlier one, an earlier one is over and adds nothing.
    pub fn add_restored(&self, period: u64, units: u64) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                let spent = current & 0xFFFF_FFFF;
                match (current >> 32).cmp(&period) {
                    std::cmp::Ordering::Less => Some(period << 32 | units.min(u32::MAX as u64)),
                    std::cmp::Ordering::Equal => {
                        Some(period << 32 | (spent + units).min(u32::MAX as u64))
                    }
                    std::cmp::Ordering::Greater => None,
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BudgetCounts;

    #[test]
    fn never_overspent_under_contention() {
        let budget = Budget::new(BudgetDef {
            counts: BudgetCounts::Accepts,
            limit: 1000,
            per: None,
        });
        let spent: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..500).filter(|_| budget.try_spend(7)).count()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(spent, 1000);
        assert_eq!(budget.spent(7), 1000);
        assert!(budget.exhausted(7));
    }

    #[test]
    fn periods_start_from_zero() {
        let budget = Budget::new(BudgetDef {
            counts: BudgetCounts::Impressions,
            limit: 2,
            per: Some(86_400),
        });
        assert!(budget.try_spend(100));
        assert!(budget.try_spend(200));
        assert!(!budget.try_spend(86_399));
        assert_eq!(budget.spent(86_400), 0);
        assert!(budget.try_spend(86_400));
        assert!(!budget.try_spend(100), "yesterday's budget is closed");
    }
}
