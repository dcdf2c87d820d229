//! The three offer actions, as `engine::action` runs them under one shard lock: a
//! decision ([`Decided`]), a feedback ([`Given`]) and either read back from the log
//! ([`Replayed`]). Each is one log record ([`ActionRecord`]) and changes the profile
//! (one feedback event per offer, when the kind maps to an event type) and the offer
//! state together.
//!
//! Invariant: a plan that says yes has spent every budget unit the action needs, so
//! nothing after it can fail and nothing is refunded. A plan that says no has spent
//! nothing (a decision's budgets are spent only for the offers it returns).

use compact_str::CompactString;

use super::record::ActionRecord;
use super::{
    arbitrate, assign_arms, exposing_needed, newly_exposed, open_coupons, state, Act, Candidate,
    CustomerOffers, Outcome,
};
use super::{Decider, Offers};
use crate::config::Config;
use crate::engine::action::Action;
use crate::engine::eval::Eval;
use crate::engine::event::{string_property, Event, Key, PropValue};
use crate::engine::{Customer, Engine};
use crate::model::decision::{Coupon, DecisionRequest, FeedbackKind};

/// What a feedback event's properties are filled from.
pub(super) struct Filled<'a> {
    pub offer: &'a str,
    pub decision_id: u64,
    /// The code the action issued or redeemed for the offer.
    pub coupon: Option<&'a str>,
    /// A redemption's order value.
    pub order_value: Option<f64>,
}

/// The feedback event of an offer as the profile gets it: `event_type` on `channel` at
/// `timestamp_ms`, with the `offer`, `decision`, `coupon` and `order_value` properties
/// the type declares (the last two when the action has them). Its keys are left empty:
/// an action applies it to the customer it runs on.
pub(super) fn profile_event(
    config: &Config,
    event_type: usize,
    channel: usize,
    filled: Filled<'_>,
    timestamp_ms: i64,
) -> Event {
    let properties = config.events[event_type]
        .properties
        .iter()
        .map(|p| match p.name.as_str() {
            "offer" => string_property(&config.interner, p, filled.offer),
            "decision" => string_property(&config.interner, p, &filled.decision_id.to_string()),
            "coupon" => filled.coupon.map_or(PropValue::Missing, |c| {
                string_property(&config.interner, p, c)
            }),
            "order_value" => filled
                .order_value
                .map_or(PropValue::Missing, PropValue::Num),
            _ => PropValue::Missing,
        })
        .collect();
    Event {
        keys: Vec::new(),
        event_type,
        channel,
        timestamp_ms,
        properties,
        attributes: Vec::new(),
    }
}

/// A decision: arbitrated under the lock; with `record_impression`, its impressions are
/// the action. Holds what the reply needs once the lock is released.
pub(super) struct Decided<'a> {
    pub engine: &'a Engine<Offers>,
    pub decider: &'a Decider,
    pub request: &'a DecisionRequest,
    pub channel: usize,
    pub now: u32,
    pub timestamp_ms: i64,
    pub decision_id: u64,
    pub key: &'a Key,
    /// The event type impressions enter the profile as, if any.
    pub event_type: Option<usize>,
    pub chosen: Vec<Candidate>,
    pub explanation: Vec<(Outcome, f64, String)>,
    pub arms: Vec<u8>,
    pub coupons: Vec<Coupon>,
    /// The key FEEDBACK by decision id finds the customer by: its primary key.
    pub logged_key: CompactString,
    pub events: Vec<Event>,
    /// Whether the decision exposes the customer in measured experiments.
    pub expose: bool,
    /// The experiments it exposed the customer in, by index.
    pub exposed: Vec<u8>,
    /// The coupon codes its impressions issue: (position in `chosen`, code).
    pub codes: Vec<(u8, CompactString)>,
    /// Why it cannot be recorded, when the plan says no for a reason of its own.
    pub failed: Option<super::DecideError>,
    /// Per offer of `chosen`: its content filled for the customer.
    pub contents: Vec<Option<crate::model::decision::Content>>,
}

impl Decided<'_> {
    /// Fills the content of each chosen offer for the customer `eval` reads, `{coupon}`
    /// with the code this decision issues or the customer's open one (`state`).
    fn fill_contents(&mut self, eval: &Eval<'_>, state: Option<&CustomerOffers>) {
        let config = self.engine.config();
        self.contents = self
            .chosen
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let def = config.decisions.offers[c.offer].content.as_ref()?;
                let open = state
                    .and_then(|s| s.open(c.offer, self.now))
                    .map(|k| k.code.as_str());
                let coupon = code_at(&self.codes, i).or(open);
                Some(super::content::render(config, def, eval, coupon))
            })
            .collect();
    }

    /// Decides for a customer omnia has never seen and that this decision does not
    /// create: against a blank profile first seen now on the asking channel, with no
    /// lock and no change.
    pub fn new_visitor(&mut self, context: &[f64]) {
        let engine = self.engine;
        let plan = engine.plan();
        let row = crate::engine::shard::blank_row(plan, self.now, self.channel, self.key.namespace);
        let eval = Eval::of(plan, &row, self.now).with_context(context);
        let mut fresh = CustomerOffers::default();
        assign_arms(engine.config(), &mut fresh, &self.key.text);
        self.arms = fresh.arms;
        let a = arbitrate(
            self.decider,
            engine.config(),
            &eval,
            None,
            &self.arms,
            self.channel,
            self.request.explain,
            &[],
        );
        self.explanation = a.considered;
        self.chosen =
            self.decider
                .take_top(a.ranked, self.request, self.now, &mut self.explanation);
        self.fill_contents(&eval, None);
    }
}

/// The code `codes` holds for position `i`.
fn code_at(codes: &[(u8, CompactString)], i: usize) -> Option<&str> {
    codes
        .iter()
        .find(|(p, _)| *p as usize == i)
        .map(|(_, c)| c.as_str())
}

impl Action<Offers> for Decided<'_> {
    fn plan(&mut self, customer: Customer<'_, Offers>) -> bool {
        let engine = self.engine;
        let config = engine.config();
        let primary = crate::engine::view::primary_key(customer.keys);
        assign_arms(config, customer.extension.offers, &primary);
        self.arms.clone_from(&customer.extension.offers.arms);
        let exposing = if self.expose {
            exposing_needed(config, customer.extension.offers)
        } else {
            Vec::new()
        };
        let a = arbitrate(
            self.decider,
            engine.config(),
            &customer.eval,
            Some(customer.extension.offers),
            &self.arms,
            self.channel,
            self.request.explain,
            &exposing,
        );
        self.exposed = newly_exposed(config, customer.extension.offers, &a.eligible);
        self.explanation = a.considered;
        self.chosen =
            self.decider
                .take_top(a.ranked, self.request, self.now, &mut self.explanation);
        customer.extension.offers.prune(self.now);
        self.coupons = open_coupons(config, customer.extension.offers, self.now);
        self.logged_key = primary.into();
        let impressions = self.request.record_impression && !self.chosen.is_empty();
        if !impressions {
            self.fill_contents(&customer.eval, Some(customer.extension.offers));
            return !self.exposed.is_empty();
        }
        match self.decider.codes_for(
            engine,
            customer.extension.offers,
            self.chosen.iter().map(|c| c.offer),
            self.now,
        ) {
            Ok(codes) => self.codes = codes,
            Err(e) => {
                self.failed = Some(e.into());
                return false;
            }
        }
        self.fill_contents(&customer.eval, Some(customer.extension.offers));
        if let Some(event_type) = self.event_type {
            let codes = &self.codes;
            self.events = self
                .chosen
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let filled = Filled {
                        offer: &config.decisions.offers[c.offer].name,
                        decision_id: self.decision_id,
                        coupon: code_at(codes, i),
                        order_value: None,
                    };
                    profile_event(config, event_type, self.channel, filled, self.timestamp_ms)
                })
                .collect();
        }
        true
    }

    fn events(&self) -> &[Event] {
        &self.events
    }

    fn encode(&self, body: &mut Vec<u8>) {
        let config = self.engine.config();
        // A decision that records no impression logs only its exposures: no offers, and
        // no event type, so that its replay creates no profile.
        let record = self.request.record_impression;
        let shown = if record { &self.chosen[..] } else { &[] };
        ActionRecord::encode_parts(
            body,
            FeedbackKind::Impression,
            self.now,
            self.timestamp_ms,
            self.decision_id,
            &self.key.text,
            &config.channels[self.channel],
            self.event_type
                .filter(|_| record)
                .map_or("", |e| config.events[e].name.as_str()),
            shown
                .iter()
                .map(|c| config.decisions.offers[c.offer].name.as_str()),
            self.exposed
                .iter()
                .map(|&e| config.decisions.experiments[e as usize].name.as_str()),
            &self
                .codes
                .iter()
                .map(|(i, c)| (*i, c.as_str()))
                .collect::<Vec<_>>(),
            None,
        );
    }

    fn commit(&mut self, mut customer: Customer<'_, Offers>) {
        let config = self.engine.config();
        for &e in &self.exposed {
            let goals = config.decisions.experiments[e as usize].goals.len();
            customer.extension.expose(e as usize, self.now, goals);
        }
        let shown = if self.request.record_impression {
            &self.chosen[..]
        } else {
            &[]
        };
        for (i, c) in shown.iter().enumerate() {
            let act = Act {
                kind: FeedbackKind::Impression,
                offer: c.offer,
                channel: self.channel,
                now: self.now,
                decision_id: self.decision_id,
                count: true,
            };
            let code = code_at(&self.codes, i);
            self.decider
                .change_offer_state(self.engine.config(), &mut customer, act, code);
        }
        customer.extension.offers.prune(self.now);
        self.coupons = open_coupons(self.engine.config(), customer.extension.offers, self.now);
    }
}

/// A feedback: its budget unit spent under the lock, then its event and offer state.
pub(super) struct Given<'a> {
    pub engine: &'a Engine<Offers>,
    pub decider: &'a Decider,
    pub act: Act,
    pub key: &'a Key,
    pub timestamp_ms: i64,
    /// The event type this kind of feedback enters the profile as, if any.
    pub event_type: Option<usize>,
    pub events: Vec<Event>,
    /// The coupon an impression issued or showed, or an acceptance redeemed.
    pub coupon: Option<state::IssuedCoupon>,
    /// The code an impression issues, or an accept redeems (REDEEM).
    pub code: Option<CompactString>,
    /// A redemption's order value.
    pub order_value: Option<f64>,
    /// Why the plan said no, when the budget did not.
    pub failed: Option<super::DecideError>,
}

impl<'a> Given<'a> {
    /// A live feedback `act` on the customer `key`, its profile event `event_type`,
    /// stamped now; no code and no order value (a redemption sets them).
    pub fn new(
        engine: &'a Engine<Offers>,
        decider: &'a Decider,
        act: Act,
        key: &'a Key,
        event_type: Option<usize>,
    ) -> Given<'a> {
        Given {
            engine,
            decider,
            act,
            key,
            timestamp_ms: engine.now_ms(),
            event_type,
            events: Vec::new(),
            coupon: None,
            code: None,
            order_value: None,
            failed: None,
        }
    }
}

impl Action<Offers> for Given<'_> {
    fn plan(&mut self, customer: Customer<'_, Offers>) -> bool {
        let engine = self.engine;
        let config = engine.config();
        let primary = crate::engine::view::primary_key(customer.keys);
        assign_arms(config, customer.extension.offers, &primary);
        let Act { kind, offer, .. } = self.act;
        if kind == FeedbackKind::Impression {
            let made = self.decider.codes_for(
                engine,
                customer.extension.offers,
                std::iter::once(offer),
                self.act.now,
            );
            match made {
                Ok(mut codes) => self.code = codes.pop().map(|(_, c)| c),
                Err(e) => {
                    self.failed = Some(e.into());
                    return false;
                }
            }
        }
        if self.decider.spend(offer, kind, self.act.now).is_err() {
            return false;
        }
        if let Some(event_type) = self.event_type {
            let filled = Filled {
                offer: &config.decisions.offers[offer].name,
                decision_id: self.act.decision_id,
                coupon: self.code.as_deref(),
                order_value: self.order_value,
            };
            self.events = vec![profile_event(
                config,
                event_type,
                self.act.channel,
                filled,
                self.timestamp_ms,
            )];
        }
        true
    }

    fn events(&self) -> &[Event] {
        &self.events
    }

    fn encode(&self, body: &mut Vec<u8>) {
        let config = self.engine.config();
        ActionRecord::encode_parts(
            body,
            self.act.kind,
            self.act.now,
            self.timestamp_ms,
            self.act.decision_id,
            &self.key.text,
            &config.channels[self.act.channel],
            self.event_type
                .map_or("", |e| config.events[e].name.as_str()),
            std::iter::once(config.decisions.offers[self.act.offer].name.as_str()),
            std::iter::empty(),
            &self
                .code
                .iter()
                .map(|c| (0, c.as_str()))
                .collect::<Vec<_>>(),
            self.order_value,
        );
    }

    fn commit(&mut self, mut customer: Customer<'_, Offers>) {
        self.coupon = self.decider.change_offer_state(
            self.engine.config(),
            &mut customer,
            self.act,
            self.code.as_deref(),
        );
    }
}

/// An action read back from the log: both halves again, unless the snapshot's image of
/// the customer's shard holds them.
pub(super) struct Replayed<'a> {
    pub engine: &'a Engine<Offers>,
    pub decider: &'a Decider,
    pub record: &'a ActionRecord,
    pub channel: usize,
    /// The record's offers the config still has, each with the code the record issued or
    /// redeemed for it.
    pub offers: Vec<(usize, Option<&'a str>)>,
    /// The record's exposures in experiments the config still has.
    pub exposures: Vec<usize>,
    pub events: Vec<Event>,
    pub sequence: u64,
    pub cuts: &'a [u64],
    pub counted_to: u64,
}

impl Action<Offers> for Replayed<'_> {
    fn plan(&mut self, customer: Customer<'_, Offers>) -> bool {
        if self
            .cuts
            .get(customer.shard)
            .is_some_and(|&cut| self.sequence <= cut)
        {
            return false;
        }
        let primary = crate::engine::view::primary_key(customer.keys);
        assign_arms(self.engine.config(), customer.extension.offers, &primary);
        for &(offer, _) in &self.offers {
            // Spent when it was logged. The budget restored from the snapshot holds only
            // the shards' tallies up to their cuts, and this record is after its shard's
            // cut, so it is spent again here; never refused: what was accepted stays.
            let _ = self
                .decider
                .spend(offer, self.record.kind, self.record.time);
        }
        true
    }

    fn events(&self) -> &[Event] {
        &self.events
    }

    fn encode(&self, body: &mut Vec<u8>) {
        self.record.encode(body)
    }

    fn commit(&mut self, mut customer: Customer<'_, Offers>) {
        let config = self.engine.config();
        for &e in &self.exposures {
            let goals = config.decisions.experiments[e].goals.len();
            customer.extension.expose(e, self.record.time, goals);
        }
        for &(offer, code) in &self.offers {
            let act = Act {
                kind: self.record.kind,
                offer,
                channel: self.channel,
                now: self.record.time,
                decision_id: self.record.decision_id,
                count: self.sequence > self.counted_to,
            };
            self.decider
                .change_offer_state(self.engine.config(), &mut customer, act, code);
        }
    }
}
