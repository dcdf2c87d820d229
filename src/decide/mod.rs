//! Decisions: which offers a channel should present to a customer now, and what the
//! customer did with them.
//!
//! A decision runs under the customer's shard lock, against the live profile:
//!
//! 1. experiment arms: assigned once per customer and experiment by hashing (experiment,
//!    primary key) into the arms' weights, then remembered, so neither a channel switch
//!    nor a later login moves a customer between arms;
//! 2. every offer in config order goes through the same gate, and the first constraint
//!    that fails is its outcome: control arm, experiment arm, channel, eligibility rule,
//!    already accepted, cooldown, frequency cap, budget;
//! 3. the survivors are ranked: priority tier first, then the ranking score (by default
//!    `propensity * value * weight`, times the arm's boost), ties to config order; the
//!    offer the customer was last shown within its sticky window goes first while it
//!    stays eligible, which is what keeps every channel showing the same offer;
//! 4. the fallback offer is considered only when nothing else survived;
//! 5. with `record_impression`, the impressions of the returned offers are recorded in
//!    the same critical section: impression budgets are spent exactly (an offer whose
//!    budget runs out in a race is skipped, never over-spent), and one action
//!    (`engine::action`, one log record) applies the impression events to the profile
//!    and the impressions to the offer state (caps, sticky window, coupons).
//!
//! A customer omnia has never seen is decided against a blank profile first seen now on
//! the asking channel, so new visitors get the offers that new visitors qualify for; a
//! decision that records impressions creates that profile in the same critical section.
//!
//! Feedback (impression, click, accept, dismiss) refers to a remembered decision or to
//! (customer, offer, channel). It is one action too: it spends budgets, updates caps,
//! cooldowns, stickiness and coupons, counts per offer, channel and arm, and is applied
//! to the profile as the event type `decisions.feedback_events` maps it to, so rules can
//! read it. The actions themselves are in `actions.rs`, their log records in `record.rs`.
//!
//! Coupons: an impression of an offer with `coupon` issues a code made in the action's
//! plan (`code`: unique, with a check character) and logged with it; `coupons` keeps
//! every code's holder, so REDEEM finds the customer by the code and redeems it once,
//! as one more action under the holder's lock.

mod actions;
pub mod analysis;
mod budget;
pub mod code;
mod content;
mod coupons;
pub use coupons::RedeemError;
mod counters;
mod log;
mod offers;
pub mod record;
pub mod report;
pub(crate) mod state;

use std::sync::atomic::{AtomicU64, Ordering};

use compact_str::CompactString;
use xxhash_rust::xxh3::Xxh3;

use crate::config::{BudgetCounts, Config, OfferDef, ValueType};
use crate::engine::action::{Acted, Action, Create, Mode};
use crate::engine::eval::Eval;
use crate::engine::event::{parse_key, EventError, Key};
use crate::engine::{Customer, Engine, Receipt};
use crate::model::decision::{
    ArmAssignment, Considered, Coupon, Decision, DecisionRequest, FeedbackKind, FeedbackResult,
    FeedbackTarget, OfferStats, Outcome, RankedOffer,
};
use crate::model::event::RawValue;

use actions::{profile_event, Decided, Given, Replayed};
use record::{ActionRecord, OfferAction};

use budget::Budget;
use counters::{Counters, DECISIONS};
use log::{DecisionLog, LoggedDecision};
pub use offers::Offers;
pub(crate) use state::CustomerOffers;

/// Why a decision or a feedback could not be made. Each names what and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecideError {
    #[error("unknown channel `{name}`; declared channels: {declared}")]
    UnknownChannel { name: String, declared: String },
    #[error("bad customer key `{key}`: {reason}")]
    BadKey { key: String, reason: String },
    #[error("unknown offer `{name}`; declared offers: {declared}")]
    UnknownOffer { name: String, declared: String },
    #[error("unknown context field `{name}`; declared in [decisions.context]: {declared}")]
    UnknownContext { name: String, declared: String },
    #[error("context field `{name}` must be a {expected}, found a {found}")]
    ContextType {
        name: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("`top` is 0; ask for at least one offer")]
    ZeroTop,
    #[error("decision {decision_id} is unknown: it was never made or is older than the last {remembered} decisions (decisions.remember_decisions); send the feedback with the customer key, offer and channel instead")]
    UnknownDecision { decision_id: u64, remembered: usize },
    #[error("offer `{offer}` was not returned by decision {decision_id}; feedback must name an offer the decision returned")]
    OfferNotInDecision { offer: String, decision_id: u64 },
    #[error("the budget of offer `{offer}` is spent: {limit} {counts}{period}; this {kind} is not recorded")]
    BudgetSpent {
        offer: String,
        counts: &'static str,
        limit: u64,
        period: String,
        kind: FeedbackKind,
    },
    #[error("customer `{key}` is unknown, and {kind} feedback has no event type to create a profile with; map it in [decisions.feedback_events]")]
    UnknownCustomer { key: String, kind: FeedbackKind },
    #[error("{0}")]
    Event(#[from] EventError),
    #[error("{0}")]
    Redeem(#[from] RedeemError),
    #[error("{0}")]
    CodesExhausted(#[from] code::Exhausted),
}

/// Decision state shared by every customer: budgets, counters, remembered decisions.
pub struct Decider {
    budgets: Vec<Option<Budget>>,
    counters: Counters,
    log: DecisionLog,
    next_id: AtomicU64,
    /// Every coupon held, by code.
    coupons: coupons::CouponIndex,
}

impl Decider {
    pub fn new(config: &Config, now_ms: i64) -> Decider {
        let d = &config.decisions;
        Decider {
            budgets: d
                .offers
                .iter()
                .map(|o| o.budget.clone().map(Budget::new))
                .collect(),
            counters: Counters::new(config),
            log: DecisionLog::new(d.remember_decisions),
            // Ids start at the clock in the high bits, so they keep growing across
            // restarts as long as fewer than 65,536 decisions are made per millisecond.
            next_id: AtomicU64::new((now_ms.max(1) as u64) << 16),
            coupons: Default::default(),
        }
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the offer's budget of `counts` is spent at `now`.
    fn budget_spent(&self, offer: usize, now: u32) -> bool {
        self.budgets[offer]
            .as_ref()
            .is_some_and(|b| b.exhausted(now))
    }

    /// Spends one unit of the offer's budget if it counts `kind`; `Ok(true)` if spent.
    fn spend(&self, offer: usize, kind: FeedbackKind, now: u32) -> Result<bool, ()> {
        match &self.budgets[offer] {
            Some(b) if counts(b.def().counts) == kind => {
                if b.try_spend(now) {
                    Ok(true)
                } else {
                    Err(())
                }
            }
            _ => Ok(false),
        }
    }

    /// The budget period a `kind` action on `offer` at `now` spends in, if the offer's
    /// budget counts that kind.
    fn budget_period(&self, offer: usize, kind: FeedbackKind, now: u32) -> Option<u32> {
        match &self.budgets[offer] {
            Some(b) if counts(b.def().counts) == kind => Some(b.period(now) as u32),
            _ => None,
        }
    }

    /// Adds a shard's tally of spent budget units (from a snapshot) to the budgets.
    pub fn restore_budget_spending(&self, tally: &[(u32, u32)]) {
        for (budget, &(period, units)) in self.budgets.iter().zip(tally) {
            if let (Some(b), true) = (budget, units > 0) {
                b.add_restored(period as u64, units as u64);
            }
        }
    }

    pub fn counter_values(&self) -> Vec<u64> {
        self.counters.values()
    }

    pub fn restore_counters(&self, values: &[u64]) {
        self.counters.restore(values);
    }
}

fn counts(c: BudgetCounts) -> FeedbackKind {
    match c {
        BudgetCounts::Impressions => FeedbackKind::Impression,
        BudgetCounts::Accepts => FeedbackKind::Accept,
    }
}

/// The arm of `key` in an experiment: the xxh3 hash of `experiment:key`, modulo the
/// total weight, falls into one arm's share. Documented in docs/decisioning.md so that
/// other systems can reproduce it.
pub fn assign_arm(experiment: &crate::config::ExperimentDef, key: &str) -> usize {
    let mut h = Xxh3::new();
    h.update(experiment.name.as_bytes());
    h.update(b":");
    h.update(key.as_bytes());
    let mut point = h.digest() % experiment.total_weight.max(1);
    for (i, arm) in experiment.arms.iter().enumerate() {
        if point < arm.weight as u64 {
            return i;
        }
        point -= arm.weight as u64;
    }
    experiment.arms.len().saturating_sub(1)
}

/// One thing a customer did with an offer, as [`Engine::change_offer_state`] applies it.
#[derive(Debug, Clone, Copy)]
struct Act {
    kind: FeedbackKind,
    offer: usize,
    channel: usize,
    now: u32,
    decision_id: u64,
    /// Whether the offer counters count it (replay counts only what a snapshot's
    /// counters do not hold).
    count: bool,
}

/// An offer that passed every constraint.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    offer: usize,
    score: f64,
    priority: i32,
    sticky: bool,
}

/// What arbitration found, before impressions are recorded.
struct Arbitration {
    /// Ranked best first.
    ranked: Vec<Candidate>,
    /// Per offer: outcome, score, detail (filled when explaining).
    considered: Vec<(Outcome, f64, String)>,
    /// Per offer asked about (`exposing`): whether it passed the gate, as if no
    /// experiment restricted it; empty when none was asked about.
    eligible: Vec<bool>,
}

/// Ranks the offers for one customer. Pure: reads the profile and offer history only.
/// For the offers `exposing` marks, it also says whether each passed the gate as if no
/// experiment arm restricted it (whether it was shown or not), which is what exposes a
/// customer in an experiment the same way in every arm.
#[allow(clippy::too_many_arguments)]
fn arbitrate(
    decider: &Decider,
    config: &Config,
    eval: &Eval<'_>,
    history: Option<&CustomerOffers>,
    arms: &[u8],
    channel: usize,
    explain: bool,
    exposing: &[bool],
) -> Arbitration {
    let d = &config.decisions;
    let now = eval.now;
    let scores: Vec<f64> = (0..config.scores.len()).map(|s| eval.score(s)).collect();
    let eval = &eval.with_scores(&scores);
    let arm_defs: Vec<&crate::config::ArmDef> = arms
        .iter()
        .enumerate()
        .filter(|(_, &a)| a > 0)
        .map(|(e, &a)| &d.experiments[e].arms[a as usize - 1])
        .collect();
    let control = arm_defs.iter().any(|a| a.control);
    let mut considered = Vec::with_capacity(if explain { d.offers.len() } else { 0 });
    let mut ranked: Vec<Candidate> = Vec::new();

    let gate = |o: usize, def: &OfferDef| -> Result<f64, (Outcome, String)> {
        if !def.on_channel(channel) {
            return Err((Outcome::Channel, String::new()));
        }
        if let Some((_, rule)) = &def.rule {
            if !eval.truth(rule) {
                return Err((Outcome::Rule, String::new()));
            }
        }
        if let Some(h) = history {
            if h.accepted_for_good(o, def) {
                return Err((Outcome::Accepted, String::new()));
            }
            if let Some(until) = h.cooling_until(o, def, now) {
                return Err((Outcome::Cooldown, format!("until {until}")));
            }
            if let Some(cap) = h.capped(o, def, channel, now) {
                let cap = &def.caps[cap];
                let on = cap
                    .channel
                    .map(|c| format!(" on {}", config.channels[c]))
                    .unwrap_or_default();
                return Err((
                    Outcome::Capped,
                    format!(
                        "{} impression{} per {}{on}",
                        cap.impressions,
                        if cap.impressions == 1 { "" } else { "s" },
                        crate::config::duration::format_duration(cap.per as u64)
                    ),
                ));
            }
        }
        if decider.budget_spent(o, now) {
            return Err((Outcome::Budget, String::new()));
        }
        let base = match &def.rank {
            Some((_, rank)) => eval.number(rank),
            None => {
                let propensity = def.propensity.map_or(1.0, |p| eval.score(p));
                propensity * def.value * def.weight
            }
        };
        let boost: f64 = arm_defs.iter().map(|a| a.boosts[o]).product();
        Ok(base * boost)
    };
    let mut eligible = vec![
        false;
        if exposing.is_empty() {
            0
        } else {
            d.offers.len()
        }
    ];
    let fallback_allowed = arm_defs.iter().all(|a| !a.control || a.fallback);

    for (o, def) in d.offers.iter().enumerate() {
        let verdict = if Some(o) == d.fallback {
            Err((Outcome::Fallback, String::new()))
        } else if control {
            Err((Outcome::Control, String::new()))
        } else if arm_defs
            .iter()
            .any(|a| a.offers.as_ref().is_some_and(|allowed| !allowed[o]))
        {
            Err((Outcome::Experiment, String::new()))
        } else {
            gate(o, def)
        };
        if exposing.get(o).copied().unwrap_or(false) {
            eligible[o] = match &verdict {
                Ok(_) => true,
                Err((Outcome::Control | Outcome::Experiment | Outcome::Fallback, _)) => {
                    gate(o, def).is_ok()
                }
                Err(_) => false,
            };
        }
        match verdict {
            Ok(score) => {
                ranked.push(Candidate {
                    offer: o,
                    score,
                    priority: def.priority,
                    sticky: false,
                });
                if explain {
                    considered.push((Outcome::Outranked, score, String::new()));
                }
            }
            Err((outcome, detail)) => {
                if explain {
                    considered.push((outcome, f64::NAN, detail));
                }
            }
        }
    }
    if ranked.is_empty() && !fallback_allowed && explain {
        if let Some(f) = d.fallback {
            considered[f] = (Outcome::Control, f64::NAN, "holdout: no fallback".into());
        }
    }
    if ranked.is_empty() && fallback_allowed {
        if let Some(f) = d.fallback {
            match gate(f, &d.offers[f]) {
                Ok(score) => {
                    ranked.push(Candidate {
                        offer: f,
                        score,
                        priority: d.offers[f].priority,
                        sticky: false,
                    });
                    if explain {
                        considered[f] = (Outcome::Outranked, score, "fallback".into());
                    }
                }
                Err((outcome, detail)) => {
                    if explain {
                        considered[f] = (outcome, f64::NAN, detail);
                    }
                }
            }
        }
    }
    if let Some(sticky) = history.and_then(|h| h.sticky).filter(|s| s.until > now) {
        if let Some(c) = ranked.iter_mut().find(|c| c.offer == sticky.offer as usize) {
            c.sticky = true;
        }
    }
    // NaN scores (a rank reading an unset attribute) sort last.
    let key = |s: f64| if s.is_nan() { f64::NEG_INFINITY } else { s };
    ranked.sort_by(|a, b| {
        b.sticky
            .cmp(&a.sticky)
            .then(b.priority.cmp(&a.priority))
            .then(key(b.score).total_cmp(&key(a.score)))
            .then(a.offer.cmp(&b.offer))
    });
    Arbitration {
        ranked,
        considered,
        eligible,
    }
}

impl Decider {
    /// Decides which offers `request.channel` should present to the customer now.
    pub fn decide(
        &self,
        engine: &Engine<Offers>,
        request: &DecisionRequest,
    ) -> Result<Decision, DecideError> {
        self.decide_with(engine, request, &mut Receipt::default())
    }

    /// [`Decider::decide`], noting the log record of a recorded impression in `receipt`.
    ///
    /// A decision that records its impressions is one action (`engine::action`): under
    /// the customer's one shard lock it is arbitrated, its impression budgets spent, and
    /// then, as one log record, its impression events applied to the profile and its
    /// offer state changed. A new visitor gets its profile in the same critical section.
    pub fn decide_with(
        &self,
        engine: &Engine<Offers>,
        request: &DecisionRequest,
        receipt: &mut Receipt,
    ) -> Result<Decision, DecideError> {
        let _strings = engine.hold_strings();
        let config = engine.config();
        let d = &config.decisions;
        if request.top == 0 {
            return Err(DecideError::ZeroTop);
        }
        let channel = channel_named(engine.config(), &request.channel)?;
        let key = customer_key(engine.config(), &request.key)?;
        let context = request_context(engine.config(), &request.context)?;
        let now = engine.now_secs();
        if request.record_impression {
            // Before anything is spent or changed: a refusal changes nothing.
            engine.writable()?;
        }
        // A decision exposes customers in the experiments it measures; one that records
        // nothing else logs the exposure alone, which it cannot while the log refuses
        // writes (then it decides without measuring).
        let measured = d.experiments.iter().any(|e| !e.goals.is_empty());
        let expose = measured && (request.record_impression || engine.writable().is_ok());
        let mut decided = Decided {
            engine,
            decider: self,
            request,
            channel,
            now,
            timestamp_ms: engine.now_ms(),
            decision_id: self.next_id(),
            key: &key,
            event_type: d.feedback_events[FeedbackKind::Impression.index()],
            chosen: Vec::new(),
            explanation: Vec::new(),
            arms: Vec::new(),
            coupons: Vec::new(),
            logged_key: CompactString::from(request.key.as_str()),
            events: Vec::new(),
            expose,
            exposed: Vec::new(),
            codes: Vec::new(),
            failed: None,
            contents: Vec::new(),
        };
        let known = if request.record_impression || expose {
            let create = decided
                .event_type
                .filter(|_| request.record_impression)
                .map(|_| Create { time: now, channel });
            match engine.act(&key, &context, create, &mut decided, Mode::Live(receipt))? {
                Acted::Unknown if !request.record_impression => {
                    decided.new_visitor(&context);
                    false
                }
                Acted::Unknown => {
                    return Err(DecideError::UnknownCustomer {
                        key: request.key.clone(),
                        kind: FeedbackKind::Impression,
                    })
                }
                // A profile made for a declined decision was removed again.
                Acted::Created | Acted::Declined { created: true } => false,
                Acted::Applied | Acted::Declined { created: false } => true,
            }
        } else {
            let known = engine.with_customer(&key.text, now, &context, |customer| {
                let Some(customer) = customer else {
                    return false;
                };
                decided.plan(customer);
                true
            });
            if !known {
                decided.new_visitor(&context);
            }
            known
        };
        if let Some(failed) = decided.failed.take() {
            return Err(failed);
        }
        let Decided {
            decision_id,
            chosen,
            contents,
            explanation,
            arms,
            coupons,
            logged_key,
            ..
        } = decided;

        for c in &chosen {
            self.counters.add(c.offer, channel, &arms, DECISIONS);
        }
        if !chosen.is_empty() {
            self.log.insert(
                decision_id,
                LoggedDecision {
                    key: logged_key,
                    channel: channel as u8,
                    offers: chosen.iter().map(|c| c.offer as u16).collect(),
                },
            );
        }
        let name_of = |o: usize| d.offers[o].name.clone();
        Ok(Decision {
            decision_id,
            offers: chosen
                .iter()
                .enumerate()
                .map(|(i, c)| RankedOffer {
                    offer: name_of(c.offer),
                    score: c.score,
                    priority: c.priority,
                    sticky: c.sticky,
                    content: contents.get(i).cloned().flatten(),
                })
                .collect(),
            arms: arms
                .iter()
                .enumerate()
                .filter(|(_, &a)| a > 0)
                .map(|(e, &a)| ArmAssignment {
                    experiment: d.experiments[e].name.clone(),
                    arm: d.experiments[e].arms[a as usize - 1].name.clone(),
                })
                .collect(),
            coupons,
            known_customer: known,
            explanation: explanation
                .into_iter()
                .enumerate()
                .map(|(o, (outcome, score, detail))| Considered {
                    offer: name_of(o),
                    outcome,
                    score,
                    detail,
                })
                .collect(),
        })
    }

    /// The first `top` candidates; with `record_impression`, impression budgets are spent
    /// here, and a candidate whose budget runs out in a race makes room for the next.
    fn take_top(
        &self,
        ranked: Vec<Candidate>,
        request: &DecisionRequest,
        now: u32,
        explanation: &mut [(Outcome, f64, String)],
    ) -> Vec<Candidate> {
        let mut chosen = Vec::with_capacity(request.top as usize);
        for c in ranked {
            if chosen.len() == request.top as usize {
                break;
            }
            if request.record_impression
                && self.spend(c.offer, FeedbackKind::Impression, now).is_err()
            {
                if let Some(e) = explanation.get_mut(c.offer) {
                    *e = (
                        Outcome::Budget,
                        f64::NAN,
                        "spent by a concurrent decision".into(),
                    );
                }
                continue;
            }
            if let Some(e) = explanation.get_mut(c.offer) {
                e.0 = Outcome::Chosen;
                if c.sticky {
                    e.2 = "sticky".into();
                }
            }
            chosen.push(c);
        }
        chosen
    }

    /// Applies what a customer did with an offer to its offer state, under its shard's
    /// lock, as the second half of an action whose record is logged already: tallies the
    /// budget unit the shard spent, and changes caps, sticky window, cooldowns and
    /// coupons. Returns, for an impression, the customer's open coupon for the offer
    /// (issued by this impression when the customer held none, with `code`: the one the
    /// plan made and the log holds; without, an old record's, see
    /// [`coupons::legacy_code`]), and for an acceptance the coupon it redeemed (`code`,
    /// else the customer's oldest open one for the offer).
    fn change_offer_state(
        &self,
        config: &Config,
        customer: &mut Customer<'_, Offers>,
        action: Act,
        code: Option<&str>,
    ) -> Option<state::IssuedCoupon> {
        let Act {
            kind,
            offer,
            channel,
            now,
            decision_id,
            count,
        } = action;
        if count {
            // Under the shard lock with the log record, so a snapshot's counters and
            // its shards agree on which actions they hold.
            self.counters.add(
                offer,
                channel,
                &customer.extension.offers.arms,
                Counters::feedback_measure(kind),
            );
        }
        if let Some(period) = self.budget_period(offer, kind, now) {
            let tally = &mut customer.extension.budget_spent[offer];
            *tally = match *tally {
                (p, units) if p == period => (p, units + 1),
                (p, units) if p > period => (p, units),
                _ => (period, 1),
            };
        }
        let offers = &mut *customer.extension.offers;
        let def = &config.decisions.offers[offer];
        match kind {
            FeedbackKind::Impression => {
                offers.record_impression(offer, def, channel, now);
                let coupon = def.coupon.as_ref()?;
                // The customer's open coupon for the offer, so the channel that shows it
                // again can show the same code.
                if let Some(open) = offers.open_coupon(offer, now) {
                    return Some(open.clone());
                }
                let issued = state::IssuedCoupon {
                    offer: offer as u16,
                    code: code.map_or_else(
                        || coupons::legacy_code(&coupon.prefix, decision_id, offer),
                        CompactString::from,
                    ),
                    issued: now,
                    expires: now.saturating_add(coupon.valid),
                    redeemed: None,
                };
                offers.coupons.push(issued.clone());
                self.coupons.insert(
                    &issued.code,
                    coupons::Holder {
                        key: crate::engine::view::primary_key(customer.keys).into(),
                        offer: issued.offer,
                        expires: issued.expires,
                    },
                );
                Some(issued)
            }
            FeedbackKind::Click => None,
            FeedbackKind::Accept => {
                offers.memory_mut(offer).accepted_at = now;
                offers.release_sticky(offer);
                let c = match code {
                    Some(code) => offers.coupons.iter_mut().find(|c| c.code == code)?,
                    None => offers.open_coupon(offer, now)?,
                };
                c.redeemed = Some(state::Redemption::at(now, channel));
                Some(c.clone())
            }
            FeedbackKind::Dismiss => {
                offers.memory_mut(offer).dismissed_at = now;
                offers.release_sticky(offer);
                None
            }
        }
    }

    /// Applies an action read back from the log at `sequence` (journal kind `ACTION`),
    /// both halves, unless the snapshot image of the customer's shard holds it already
    /// (`cuts`); counters count it if it came after the snapshot copied them
    /// (`counted_to`). Offers the config no longer has are left out (their state is gone
    /// with them); an event type or channel it no longer has is an error, as for an
    /// event record.
    pub fn replay_action(
        &self,
        engine: &Engine<Offers>,
        record: &ActionRecord,
        sequence: u64,
        cuts: &[u64],
        counted_to: u64,
    ) -> Result<(), DecideError> {
        let config = engine.config();
        let key = customer_key(engine.config(), &record.key)?;
        let channel = config.channel_id(&record.channel);
        let event_type = match record.event.as_str() {
            "" => None,
            name => Some(crate::engine::event::event_type_id(config, name)?),
        };
        let Some(channel) = channel else {
            if event_type.is_none() {
                tracing::debug!(channel = %record.channel, sequence, "skipped an offer action for a channel the config dropped");
                return Ok(());
            }
            return Err(channel_named(engine.config(), &record.channel).unwrap_err());
        };
        let code_at = |position: usize| {
            record
                .codes
                .iter()
                .find(|(p, _)| *p as usize == position)
                .map(|(_, c)| c.as_str())
        };
        if !record.codes.is_empty() {
            let key = code::key_from(&engine.suppression().secret());
            for (_, c) in &record.codes {
                self.coupons.saw(c, &key);
            }
        }
        let offers: Vec<(usize, Option<&str>)> = record
            .offers
            .iter()
            .enumerate()
            .filter_map(|(i, name)| Some((config.decisions.offer_id(name)?, code_at(i))))
            .collect();
        let events = match event_type {
            Some(e) => record
                .offers
                .iter()
                .enumerate()
                .map(|(i, offer)| {
                    let filled = actions::Filled {
                        offer,
                        decision_id: record.decision_id,
                        coupon: code_at(i),
                        order_value: record.order_value,
                    };
                    profile_event(config, e, channel, filled, record.timestamp_ms)
                })
                .collect(),
            None => Vec::new(),
        };
        let exposures: Vec<usize> = record
            .exposures
            .iter()
            .filter_map(|name| {
                config
                    .decisions
                    .experiments
                    .iter()
                    .position(|e| e.name == *name)
            })
            .collect();
        if offers.is_empty() && exposures.is_empty() && events.is_empty() {
            return Ok(());
        }
        let mut replayed = Replayed {
            engine,
            decider: self,
            record,
            channel,
            offers,
            exposures,
            events,
            sequence,
            cuts,
            counted_to,
        };
        let create = event_type.map(|_| Create {
            time: record.time,
            channel,
        });
        engine.act(&key, &[], create, &mut replayed, Mode::Replay)?;
        Ok(())
    }

    /// Applies an offer action of data directory format 2 (journal kind `OFFER_ACTION`,
    /// which logged the profile event apart as an EVENT record) read back from the log
    /// at `sequence`, unless the snapshot image of the customer's shard holds it already
    /// (`cuts`); counters count it if it came after the snapshot copied them
    /// (`counted_to`).
    pub fn replay_offer_action(
        &self,
        engine: &Engine<Offers>,
        action: &OfferAction,
        sequence: u64,
        cuts: &[u64],
        counted_to: u64,
    ) -> Result<(), DecideError> {
        // An offer or channel the config no longer has: its state is gone with it (as
        // when a snapshot is moved into the new layout), so its history is too.
        let (Ok(offer), Ok(channel)) = (
            offer_named(engine.config(), &action.offer),
            channel_named(engine.config(), &action.channel),
        ) else {
            tracing::debug!(offer = %action.offer, channel = %action.channel, sequence, "skipped an offer action for an offer or channel the config dropped");
            return Ok(());
        };
        let config = engine.config();
        let now = engine.now_secs();
        engine.with_customer(&action.key, now, &[], |customer| {
            let Some(mut customer) = customer else {
                return;
            };
            if cuts.get(customer.shard).is_some_and(|&cut| sequence <= cut) {
                return;
            }
            let primary = crate::engine::view::primary_key(customer.keys);
            assign_arms(config, customer.extension.offers, &primary);
            let _ = self.spend(offer, action.kind, action.time);
            self.change_offer_state(
                engine.config(),
                &mut customer,
                Act {
                    kind: action.kind,
                    offer,
                    channel,
                    now: action.time,
                    decision_id: action.decision_id,
                    count: sequence > counted_to,
                },
                None,
            );
        });
        Ok(())
    }

    /// A customer's offer history and remembered decisions, named by the config (for
    /// an export); `None` for an unknown key.
    pub fn export(
        &self,
        engine: &Engine<Offers>,
        key: &str,
        keys: &[String],
    ) -> Option<(
        crate::model::export::OfferHistory,
        Vec<crate::model::export::RememberedDecision>,
    )> {
        use crate::model::export as x;
        let config = engine.config();
        let d = &config.decisions;
        let offer = |i: u16| {
            d.offers
                .get(i as usize)
                .map_or_else(|| format!("#{i}"), |o| o.name.clone())
        };
        let channel = |i: u8| {
            config
                .channels
                .get(i as usize)
                .cloned()
                .unwrap_or_else(|| format!("#{i}"))
        };
        let history = engine.with_customer(key, engine.now_secs(), &[], |customer| {
            let state = &*customer?.extension.offers;
            Some(x::OfferHistory {
                offers: state
                    .memories
                    .iter()
                    .map(|m| x::OfferEntry {
                        offer: offer(m.offer),
                        impressions: m
                            .impressions
                            .iter()
                            .map(|&(at, ch)| x::Impression {
                                at,
                                channel: channel(ch),
                            })
                            .collect(),
                        accepted_at: (m.accepted_at > 0).then_some(m.accepted_at),
                        dismissed_at: (m.dismissed_at > 0).then_some(m.dismissed_at),
                    })
                    .collect(),
                sticky: state.sticky.map(|s| x::StickyOffer {
                    offer: offer(s.offer),
                    until: s.until,
                }),
                experiments: state
                    .arms
                    .iter()
                    .enumerate()
                    .filter(|(_, &arm)| arm > 0)
                    .filter_map(|(e, &arm)| {
                        let experiment = d.experiments.get(e)?;
                        Some(x::ExperimentArm {
                            experiment: experiment.name.clone(),
                            arm: experiment.arms.get(arm as usize - 1)?.name.clone(),
                        })
                    })
                    .collect(),
                coupons: state
                    .coupons
                    .iter()
                    .map(|c| x::IssuedCoupon {
                        offer: offer(c.offer),
                        code: c.code.to_string(),
                        issued: c.issued,
                        expires: c.expires,
                        redeemed: c.redeemed.is_some(),
                        redeemed_at: c.redeemed.map(|r| r.at).filter(|&at| at > 0),
                        redeemed_on: c
                            .redeemed
                            .and_then(|r| config.channels.get(r.channel as usize).cloned()),
                    })
                    .collect(),
            })
        })?;
        let decisions = self
            .log
            .of(keys)
            .into_iter()
            .map(|(id, logged)| x::RememberedDecision {
                decision_id: id.to_string(),
                channel: channel(logged.channel),
                offers: logged.offers.iter().map(|&o| offer(o)).collect(),
            })
            .collect();
        Some((history, decisions))
    }

    /// Forgets the decisions remembered for a customer known by `keys` (FORGET), so no
    /// feedback can name them, and its coupons' codes (its offer state, which holds the
    /// coupons, went with the profile).
    pub fn forget(&self, keys: &[String]) {
        self.log.forget(keys);
        self.coupons.forget(keys);
    }

    /// Indexes the coupons of every customer (after a restore; see `coupons`).
    pub fn index_coupons(&self, engine: &Engine<Offers>) {
        self.coupons.rebuild(engine);
    }

    /// Drops codes expired long enough ago (the node's tick).
    pub fn sweep_coupons(&self, now: u32) {
        self.coupons.sweep(now);
    }

    /// Takes over `old`'s remembered decisions and offer counters, if offers, channels
    /// and experiments are the same in both configs (their indexes mean the same);
    /// otherwise they start empty. Called by a reload once `old` takes no requests.
    pub fn adopt(&self, config: &Config, old: &Decider, old_config: &Config) {
        self.coupons.take_sequences_from(&old.coupons);
        if !config.same_offer_indexes(old_config) {
            return;
        }
        self.log.take_from(&old.log);
        self.restore_counters(&old.counter_values());
    }

    /// Records what a customer did with an offer.
    pub fn feedback(
        &self,
        engine: &Engine<Offers>,
        kind: FeedbackKind,
        target: &FeedbackTarget,
    ) -> Result<FeedbackResult, DecideError> {
        self.feedback_with(engine, kind, target, &mut Receipt::default())
    }

    /// [`Decider::feedback`], noting its log record in `receipt`.
    ///
    /// One action (`engine::action`): under the customer's shard lock the budget is
    /// spent, and then, as one log record, the feedback event is applied to the profile
    /// and the offer state changed. A customer the feedback event creates gets its
    /// profile in the same critical section.
    pub fn feedback_with(
        &self,
        engine: &Engine<Offers>,
        kind: FeedbackKind,
        target: &FeedbackTarget,
        receipt: &mut Receipt,
    ) -> Result<FeedbackResult, DecideError> {
        let _strings = engine.hold_strings();
        let config = engine.config();
        let d = &config.decisions;
        let (key, offer, channel, decision_id) = match target {
            FeedbackTarget::Decision { decision_id, offer } => {
                let logged = self
                    .log
                    .get(*decision_id)
                    .ok_or(DecideError::UnknownDecision {
                        decision_id: *decision_id,
                        remembered: self.log.capacity(),
                    })?;
                let o = offer_named(engine.config(), offer)?;
                if !logged.offers.contains(&(o as u16)) {
                    return Err(DecideError::OfferNotInDecision {
                        offer: offer.clone(),
                        decision_id: *decision_id,
                    });
                }
                (
                    customer_key(engine.config(), &logged.key)?,
                    o,
                    logged.channel as usize,
                    *decision_id,
                )
            }
            FeedbackTarget::Customer {
                key,
                offer,
                channel,
            } => {
                let channel = channel_named(engine.config(), channel)?;
                let key = customer_key(engine.config(), key)?;
                let o = offer_named(engine.config(), offer)?;
                (key, o, channel, self.next_id())
            }
        };
        let now = engine.now_secs();
        // Before the budget is spent: a refusal changes nothing.
        engine.writable()?;
        let event_type = d.feedback_events[kind.index()];
        let act = Act {
            kind,
            offer,
            channel,
            now,
            decision_id,
            count: true,
        };
        let mut given = Given::new(engine, self, act, &key, event_type);
        let create = event_type.map(|_| Create { time: now, channel });
        match engine.act(&key, &[], create, &mut given, Mode::Live(receipt))? {
            Acted::Unknown => Err(DecideError::UnknownCustomer {
                key: key.text.to_string(),
                kind,
            }),
            Acted::Declined { .. } => Err(given
                .failed
                .take()
                .unwrap_or_else(|| self.budget_refusal(config, offer, kind))),
            Acted::Applied | Acted::Created => Ok(FeedbackResult {
                decision_id,
                coupon: given.coupon.map(|c| coupon_view(config, &c)),
            }),
        }
    }

    /// The error of a `kind` action on `offer` refused because its budget is spent.
    fn budget_refusal(&self, config: &Config, offer: usize, kind: FeedbackKind) -> DecideError {
        let def = &config.decisions.offers[offer];
        DecideError::BudgetSpent {
            offer: def.name.clone(),
            counts: def.budget.as_ref().map_or("", |b| b.counts.name()),
            limit: def.budget.as_ref().map_or(0, |b| b.limit),
            period: def
                .budget
                .as_ref()
                .and_then(|b| b.per)
                .map(|p| {
                    format!(
                        " per {}",
                        crate::config::duration::format_duration(p as u64)
                    )
                })
                .unwrap_or_default(),
            kind,
        }
    }

    /// Per offer, channel and experiment arm: decisions and feedback counted so far.
    pub fn offer_stats(&self, config: &Config) -> Vec<OfferStats> {
        self.counters.snapshot(config)
    }
}

/// The channel named `name`.
fn channel_named(config: &Config, name: &str) -> Result<usize, DecideError> {
    config
        .channel_id(name)
        .ok_or_else(|| DecideError::UnknownChannel {
            name: name.to_string(),
            declared: config.channels.join(", "),
        })
}

/// The offer named `name`.
fn offer_named(config: &Config, name: &str) -> Result<usize, DecideError> {
    let d = &config.decisions;
    d.offer_id(name).ok_or_else(|| DecideError::UnknownOffer {
        name: name.to_string(),
        declared: d
            .offers
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// A customer key as a request names it.
fn customer_key(config: &Config, key: &str) -> Result<Key, DecideError> {
    parse_key(config, "", key).map_err(|e| match e {
        EventError::BadKey { key, reason, .. } => DecideError::BadKey { key, reason },
        other => DecideError::Event(other),
    })
}

/// Request context as [`Eval::context`] carries it.
fn request_context(
    config: &Config,
    fields: &[(String, RawValue)],
) -> Result<Vec<f64>, DecideError> {
    let declared = &config.decisions.context;
    let mut out: Vec<f64> = declared
        .iter()
        .map(|c| {
            if c.ty == ValueType::Number {
                f64::NAN
            } else {
                0.0
            }
        })
        .collect();
    for (name, value) in fields {
        let Some(i) = config.decisions.context_id(name) else {
            return Err(DecideError::UnknownContext {
                name: name.clone(),
                declared: if declared.is_empty() {
                    "(none)".to_string()
                } else {
                    declared
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            });
        };
        out[i] = match (declared[i].ty, value) {
            (ValueType::Number, RawValue::Num(v)) if v.is_finite() => *v,
            (ValueType::String, RawValue::Str(s)) => {
                config.interner.lookup(s).unwrap_or(u32::MAX) as f64
            }
            (ValueType::Bool, RawValue::Bool(b)) => *b as u8 as f64,
            (expected, found) => {
                return Err(DecideError::ContextType {
                    name: name.clone(),
                    expected: expected.name(),
                    found: match found {
                        RawValue::Num(_) if expected == ValueType::Number => "non-finite number",
                        other => other.as_ref().type_name(),
                    },
                })
            }
        };
    }
    Ok(out)
}

/// Assigns the customer's arm in every experiment it has none in yet.
/// Per offer: whether it would expose the customer in an experiment that is measured
/// (has goals), in which the customer has an arm and is not exposed yet; empty when
/// no experiment waits for an exposure.
fn exposing_needed(config: &Config, offers: &CustomerOffers) -> Vec<bool> {
    let mut needed = Vec::new();
    for (e, experiment) in config.decisions.experiments.iter().enumerate() {
        if !awaits_exposure(experiment, offers, e) {
            continue;
        }
        needed.resize(experiment.exposing.len(), false);
        for (n, &x) in needed.iter_mut().zip(&experiment.exposing) {
            *n |= x;
        }
    }
    needed
}

/// The experiments a decision exposes the customer in: measured ones, with an arm,
/// not exposed yet, one of whose exposing offers passed the gate (`eligible`).
fn newly_exposed(config: &Config, offers: &CustomerOffers, eligible: &[bool]) -> Vec<u8> {
    if eligible.is_empty() {
        return Vec::new();
    }
    config
        .decisions
        .experiments
        .iter()
        .enumerate()
        .filter(|&(e, experiment)| {
            awaits_exposure(experiment, offers, e)
                && experiment
                    .exposing
                    .iter()
                    .zip(eligible)
                    .any(|(&x, &ok)| x && ok)
        })
        .map(|(e, _)| e as u8)
        .collect()
}

/// Whether experiment `e` is measured (has goals), the customer has an arm in it and is
/// not exposed in it yet.
fn awaits_exposure(
    experiment: &crate::config::ExperimentDef,
    offers: &CustomerOffers,
    e: usize,
) -> bool {
    !experiment.goals.is_empty()
        && offers.arms.get(e).copied().unwrap_or(0) != 0
        && offers.exposure(e).is_none()
}

fn assign_arms(config: &Config, offers: &mut CustomerOffers, key: &str) {
    let experiments = &config.decisions.experiments;
    if offers.arms.len() < experiments.len() {
        offers.arms.resize(experiments.len(), 0);
    }
    for (e, experiment) in experiments.iter().enumerate() {
        if offers.arms[e] == 0 {
            offers.arms[e] = assign_arm(experiment, key) as u8 + 1;
        }
    }
}

fn open_coupons(config: &Config, offers: &CustomerOffers, now: u32) -> Vec<Coupon> {
    offers
        .coupons
        .iter()
        .filter(|c| c.is_open(now))
        .map(|c| coupon_view(config, c))
        .collect()
}

fn coupon_view(config: &Config, c: &state::IssuedCoupon) -> Coupon {
    Coupon {
        offer: config.decisions.offers[c.offer as usize].name.clone(),
        code: c.code.to_string(),
        issued: c.issued,
        expires: c.expires,
    }
}
