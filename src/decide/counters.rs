//! Offer counters: decisions, impressions, clicks, acceptances and dismissals per offer,
//! channel and experiment arm.
//!
//! One flat array of relaxed atomics, indexed `[offer][channel][slot][measure]`. Slot 0
//! counts every customer; slots 1.. are the arms of every experiment in config order,
//! so each experiment's arms add up to the total and uplift is read per experiment.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Config;
use crate::model::decision::{FeedbackKind, OfferStats};

/// What is counted: a decision that returned the offer, then each kind of feedback.
pub(crate) const DECISIONS: usize = 0;
const MEASURES: usize = 5;

pub(crate) struct Counters {
    cells: Box<[AtomicU64]>,
    channels: usize,
    slots: usize,
    /// The first slot of each experiment.
    experiment_slot: Vec<usize>,
}

impl Counters {
    pub fn new(config: &Config) -> Counters {
        let d = &config.decisions;
        let mut experiment_slot = Vec::new();
        let mut slots = 1;
        for e in &d.experiments {
            experiment_slot.push(slots);
            slots += e.arms.len();
        }
        let len = d.offers.len() * config.channels.len() * slots * MEASURES;
        Counters {
            cells: (0..len).map(|_| AtomicU64::new(0)).collect(),
            channels: config.channels.len(),
            slots,
            experiment_slot,
        }
    }

    fn cell(&self, offer: usize, channel: usize, slot: usize, measure: usize) -> &AtomicU64 {
        &self.cells[((offer * self.channels + channel) * self.slots + slot) * MEASURES + measure]
    }

    /// Every counter, in storage order (for snapshots).
    pub fn values(&self) -> Vec<u64> {
        self.cells
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Sets the counters from [`Counters::values`] of the same config; other lengths
    /// (another config) are ignored: these are statistics, not state.
    pub fn restore(&self, values: &[u64]) {
        if values.len() == self.cells.len() {
            for (cell, &v) in self.cells.iter().zip(values) {
                cell.store(v, Ordering::Relaxed);
            }
        }
    }

    /// Counts one measure for the total and for each of the customer's arms (`arms[e]` is
    /// the arm index + 1 in experiment `e`, 0 when not assigned).
    pub fn add(&self, offer: usize, channel: usize, arms: &[u8], measure: usize) {
        self.cell(offer, channel, 0, measure)
            .fetch_add(1, Ordering::Relaxed);
        for (e, &arm) in arms.iter().enumerate() {
            if arm > 0 {
                let slot = self.experiment_slot[e] + arm as usize - 1;
                self.cell(offer, channel, slot, measure)
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn feedback_measure(kind: FeedbackKind) -> usize {
        1 + kind.index()
    }

    /// Every non-zero row, totals first, then per experiment arm.
    pub fn snapshot(&self, config: &Config) -> Vec<OfferStats> {
        let d = &config.decisions;
        let mut out = Vec::new();
        let mut slot_names: Vec<(Option<String>, Option<String>)> = vec![(None, None)];
        for e in &d.experiments {
            for a in &e.arms {
                slot_names.push((Some(e.name.clone()), Some(a.name.clone())));
            }
        }
        for (slot, (experiment, arm)) in slot_names.iter().enumerate() {
            for (o, offer) in d.offers.iter().enumerate() {
                for (c, channel) in config.channels.iter().enumerate() {
                    let v = |m| self.cell(o, c, slot, m).load(Ordering::Relaxed);
                    let stats = OfferStats {
                        offer: offer.name.clone(),
                        channel: channel.clone(),
                        experiment: experiment.clone(),
                        arm: arm.clone(),
                        decisions: v(DECISIONS),
                        impressions: v(Self::feedback_measure(FeedbackKind::Impression)),
                        clicks: v(Self::feedback_measure(FeedbackKind::Click)),
                        accepts: v(Self::feedback_measure(FeedbackKind::Accept)),
                        dismisses: v(Self::feedback_measure(FeedbackKind::Dismiss)),
                    };
                    if stats.decisions
                        + stats.impressions
                        + stats.clicks
                        + stats.accepts
                        + stats.dismisses
                        > 0
                    {
                        out.push(stats);
                    }
                }
            }
        }
        out
    }
}
