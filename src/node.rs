//! The node: the engine with the decider beside it, what every request runs on.
//!
//! The engine knows profiles, identity, segments and scores, and keeps per customer an
//! extension it does not look inside (`engine::extension`); decide fills that extension
//! with offer state ([`Offers`]) and keeps what is shared by all customers (budgets,
//! counters, remembered decisions) in its [`Decider`]. Neither imports the other's
//! insides: the node joins them, and is what recovery fills, a snapshot copies, a reload
//! replaces and the server's requests go to.
//!
//! Invariants: a node's decider was built for its engine's config; after
//! `Node::restore_with`, the decider's budgets hold exactly what the restored shards'
//! tallies say was spent, and its counters are the image's when the offer indexes
//! mean the same in both configs, zero otherwise.
//!
//! Data flow: a request reads or changes the engine through [`Node::engine`]; a decision
//! or a feedback goes through [`Node::decide`] and [`Node::feedback`], which run one
//! engine action each (`engine::action`) with the decider's budgets and counters.

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::Config;
use crate::decide::record::{ActionRecord, OfferAction};
use crate::decide::{DecideError, Decider, Offers};
use crate::engine::event::EventView;
use crate::engine::{
    Applied, Engine, EngineImage, EngineStats, EventError, Plan, ProfileView, QueryError, Receipt,
    RestoreError,
};
use crate::model::decision::{
    Decision, DecisionRequest, FeedbackKind, FeedbackResult, FeedbackTarget, OfferStats,
};

/// The engine and its decider (see the module doc).
pub struct Node {
    engine: Engine<Offers>,
    decider: Decider,
}

/// Everything a snapshot holds of a node: the engine's image and, copied after every
/// shard was cut, the decider's offer counters.
#[derive(Debug, Clone)]
pub struct NodeImage {
    pub engine: EngineImage,
    /// The offer counters (statistics: decisions, impressions, ...), as of
    /// `engine.position`.
    pub counters: Vec<u64>,
}

impl Node {
    /// A node with no customers under `config`.
    pub fn new(config: Config, clock: Arc<dyn Clock>) -> Node {
        let decider = Decider::new(&config, clock.now_ms());
        Node {
            engine: Engine::new(config, clock),
            decider,
        }
    }

    /// The engine: ingest, profiles, segments, queries, the journal.
    pub fn engine(&self) -> &Engine<Offers> {
        &self.engine
    }

    /// The config the node runs under.
    pub fn config(&self) -> &Config {
        self.engine.config()
    }

    // What channels and trackers ask of every node, here so that they need not reach
    // through `engine()`: events in, profiles and segment sizes out.

    /// Ingests one event (see `Engine::ingest`).
    pub fn ingest(&self, raw: &impl EventView) -> Result<Applied, EventError> {
        self.engine.ingest(raw)
    }

    /// [`Node::ingest`], noting its log record in `receipt`.
    pub fn ingest_with(
        &self,
        raw: &impl EventView,
        receipt: &mut Receipt,
    ) -> Result<Applied, EventError> {
        self.engine.ingest_with(raw, receipt)
    }

    /// The profile of the customer `key` belongs to.
    pub fn profile(&self, key: &str) -> Option<ProfileView> {
        self.engine.profile(key)
    }

    /// Forgets the customer `key` belongs to, everything of it at once: the profile and
    /// every key, segment memberships, offer state and coupons (the engine's), and the
    /// decisions remembered for it (the decider's). Its keys go onto the suppression
    /// list. Budgets it spent stay spent.
    pub fn forget_with(
        &self,
        key: &str,
        receipt: &mut Receipt,
    ) -> Result<crate::engine::Forgotten, crate::engine::ForgetError> {
        let forgotten = self.engine.forget_with(key, receipt)?;
        self.decider.forget(&forgotten.keys);
        Ok(forgotten)
    }

    /// Everything held on the customer `key` belongs to, as one document; `None` for
    /// an unknown key.
    pub fn export(&self, key: &str) -> Option<crate::model::export::Export> {
        let profile = self.engine.profile(key)?;
        let (offers, decisions) = self.decider.export(&self.engine, key, &profile.keys)?;
        Some(crate::model::export::Export {
            profile,
            offers,
            decisions,
        })
    }

    /// Customers, keys, events and merges so far.
    pub fn stats(&self) -> EngineStats {
        self.engine.stats()
    }

    /// The number of members of a segment (or of a segment query).
    pub fn segment_count(&self, segment: &str) -> Result<u64, QueryError> {
        self.engine.segment_count(segment)
    }

    /// Runs the timers due now in every shard.
    pub fn tick(&self) {
        // Retention's forgotten customers leave no remembered decisions behind either.
        for keys in self.engine.expire_unseen() {
            self.decider.forget(&keys);
        }
        self.decider.sweep_coupons(self.engine.now_secs());
        self.engine.tick()
    }

    /// Decides which offers `request.channel` should present to the customer now.
    pub fn decide(&self, request: &DecisionRequest) -> Result<Decision, DecideError> {
        self.decider.decide(&self.engine, request)
    }

    /// [`Node::decide`], noting the log record of a recorded impression in `receipt`.
    pub fn decide_with(
        &self,
        request: &DecisionRequest,
        receipt: &mut Receipt,
    ) -> Result<Decision, DecideError> {
        self.decider.decide_with(&self.engine, request, receipt)
    }

    /// Records what a customer did with an offer.
    pub fn feedback(
        &self,
        kind: FeedbackKind,
        target: &FeedbackTarget,
    ) -> Result<FeedbackResult, DecideError> {
        self.decider.feedback(&self.engine, kind, target)
    }

    /// [`Node::feedback`], noting its log record in `receipt`.
    pub fn feedback_with(
        &self,
        kind: FeedbackKind,
        target: &FeedbackTarget,
        receipt: &mut Receipt,
    ) -> Result<FeedbackResult, DecideError> {
        self.decider
            .feedback_with(&self.engine, kind, target, receipt)
    }

    /// Redeems a coupon by its code on `channel` (see `decide::Decider::redeem`).
    pub fn redeem(
        &self,
        code: &str,
        channel: &str,
        order_value: Option<f64>,
    ) -> Result<crate::model::decision::Redeemed, DecideError> {
        self.redeem_with(code, channel, order_value, &mut Receipt::default())
    }

    /// [`Node::redeem`], noting its log record in `receipt`.
    pub fn redeem_with(
        &self,
        code: &str,
        channel: &str,
        order_value: Option<f64>,
        receipt: &mut Receipt,
    ) -> Result<crate::model::decision::Redeemed, DecideError> {
        self.decider
            .redeem(&self.engine, code, channel, order_value, receipt)
    }

    /// Per offer, channel and experiment arm: decisions and feedback counted so far.
    pub fn offer_stats(&self) -> Vec<OfferStats> {
        self.decider.offer_stats(self.engine.config())
    }

    /// The report of every measured experiment, or of the one named `only`
    /// (`decide::report`).
    pub fn experiment_reports(
        &self,
        only: Option<&str>,
    ) -> Vec<crate::model::experiment::ExperimentReport> {
        crate::decide::report::experiment_reports(&self.engine, only)
    }

    /// Exposed and converted customers per arm of every measured experiment, without the
    /// report's comparisons (`decide::report::arm_counts`).
    pub fn experiment_counts(&self) -> Vec<crate::decide::report::ArmCounts> {
        crate::decide::report::arm_counts(&self.engine)
    }

    /// Replays an ACTION record (see `decide::Decider::replay_action`).
    pub fn replay_action(
        &self,
        record: &ActionRecord,
        sequence: u64,
        cuts: &[u64],
        counted_to: u64,
    ) -> Result<(), DecideError> {
        self.decider
            .replay_action(&self.engine, record, sequence, cuts, counted_to)
    }

    /// Replays a format-2 OFFER_ACTION record (see
    /// `decide::Decider::replay_offer_action`).
    pub fn replay_offer_action(
        &self,
        action: &OfferAction,
        sequence: u64,
        cuts: &[u64],
        counted_to: u64,
    ) -> Result<(), DecideError> {
        self.decider
            .replay_offer_action(&self.engine, action, sequence, cuts, counted_to)
    }

    /// Copies the node for a snapshot: every shard at its own cut, then the counters.
    pub fn image(&self) -> NodeImage {
        self.image_with(|_| {})
    }

    /// [`Node::image`], calling `between(shard)` after each shard is cut, with no lock
    /// held: tests use it to change the node in the middle of a snapshot.
    pub fn image_with(&self, between: impl FnMut(usize)) -> NodeImage {
        let engine = self.engine.image_with(between);
        NodeImage {
            engine,
            counters: self.decider.counter_values(),
        }
    }

    /// [`Node::image`], handing each shard's bytes to `sink(cut, bytes)` as soon as it
    /// is made (see `Engine::image_into`); the image returned has no shards.
    pub fn image_into(&self, sink: &mut dyn FnMut(u64, &mut Vec<u8>)) -> NodeImage {
        let engine = self.engine.image_into(|_| {}, sink);
        NodeImage {
            engine,
            counters: self.decider.counter_values(),
        }
    }

    /// Loads an image into this node, which must be new: the shards (moved from `from`'s
    /// layout when given, see `Engine::restore_with`), then the budgets from the shards'
    /// tallies and the counters. Returns each shard's cut.
    pub(crate) fn restore_with(
        &self,
        image: &NodeImage,
        from: Option<&Plan>,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Vec<u64>, RestoreError> {
        let cuts = self.engine.restore_with(&image.engine, from, progress)?;
        self.engine
            .each_extension(|offers| self.decider.restore_budget_spending(offers.budget_spent()));
        self.decider.index_coupons(&self.engine);
        if from.map_or(true, |from| {
            from.config.same_offer_indexes(self.engine.config())
        }) {
            self.decider.restore_counters(&image.counters);
        }
        Ok(cuts)
    }

    /// `Node::restore_with` of an image laid out by this node's config.
    pub fn restore(&self, image: &NodeImage) -> Result<Vec<u64>, RestoreError> {
        self.restore_with(image, None, &|_, _| {})
    }

    /// Takes over what `old` knows beyond the log: its remembered decisions and offer
    /// counters when the offer indexes mean the same in both configs, and its drift
    /// counts. Called by a reload once `old` takes no requests.
    pub fn adopt(&self, old: &Node) {
        self.decider
            .adopt(self.engine.config(), &old.decider, old.engine.config());
        self.engine.drift().take_from(old.engine.drift());
        self.engine.dedup().take_from(old.engine.dedup());
        self.engine.take_changes_recorded_from(&old.engine);
    }
}
