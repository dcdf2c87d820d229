//! Decisions against a naive reference model.
//!
//! Random streams of events, decisions (with and without recorded impressions),
//! feedback and clock moves go to the engine and to a model that keeps every fact as a
//! plain list and recomputes eligibility, caps, cooldowns, no-repeat, budgets,
//! stickiness and ranking from scratch at each decision. Every decision's offers, and
//! whether each feedback was refused for its budget, must agree.
//!
//! `PROPTEST_CASES` sets the number of streams (64 by default).

use std::collections::HashMap;
use std::sync::Arc;

use omnia::clock::{Clock, ManualClock};
use omnia::config::{Config, Source};
use omnia::decide::DecideError;
use omnia::engine::RawEvent;
use omnia::model::decision::{DecisionRequest, FeedbackKind, FeedbackTarget};
use omnia::node::Node;
use proptest::prelude::*;

const CONFIG: &str = r#"
channels = ["web", "app", "email"]
[identity]
namespaces = ["user"]
[events.view]
[events.purchase]
[events.offer_impression]
properties = { offer = "string", decision = "string" }
[events.offer_accept]
properties = { offer = "string" }
[events.offer_dismiss]
[decisions]
fallback = "fb"
feedback_events = { impression = "offer_impression", accept = "offer_accept", dismiss = "offer_dismiss" }

[offers.a]
rule = "since(view) < 10m"
value = 5
caps = [{ impressions = 2, per = "5m" }]
cooldown = { dismiss = "3m" }
sticky = "4m"

[offers.b]
rule = "ever(purchase)"
value = 8
channels = ["web", "app"]
budget = { accepts = 3 }

[offers.c]
value = 3
priority = 1
caps = [{ impressions = 1, per = "2m", channel = "email" }]
budget = { impressions = 6 }
cooldown = { accept = "5m" }
repeat = true
sticky = "2m"

[offers.d]
rule = "not ever(purchase)"
value = 4
cooldown = { dismiss = "1m", accept = "1m" }
repeat = true

[offers.fb]
value = 1
caps = [{ impressions = 3, per = "10m" }]
"#;

const CHANNELS: [&str; 3] = ["web", "app", "email"];
const START_MS: i64 = 1_772_445_600_000;

#[derive(Debug, Clone)]
enum Op {
    View(u8, u8),
    Purchase(u8),
    Decide {
        customer: u8,
        channel: u8,
        top: u8,
        record: bool,
    },
    Feedback {
        customer: u8,
        offer: u8,
        channel: u8,
        kind: u8,
    },
    Wait(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..3, 0u8..3).prop_map(|(c, ch)| Op::View(c, ch)),
        1 => (0u8..3).prop_map(Op::Purchase),
        4 => (0u8..3, 0u8..3, 1u8..4, any::<bool>()).prop_map(|(customer, channel, top, record)| Op::Decide { customer, channel, top, record }),
        2 => (0u8..3, 0u8..5, 0u8..3, 0u8..3).prop_map(|(customer, offer, channel, kind)| Op::Feedback { customer, offer, channel, kind }),
        1 => (1u16..400).prop_map(Op::Wait),
        // Exactly the lengths of the caps, cooldowns and sticky windows, so that
        // boundaries are hit on the second.
        2 => prop::sample::select(vec![1u16, 59, 60, 61, 119, 120, 180, 240, 300, 600]).prop_map(Op::Wait),
    ]
}

/// The model's view of an offer, written out again by hand.
struct OfferSpec {
    name: &'static str,
    value: f64,
    priority: i32,
    channels: &'static [usize],
    /// (impressions, per seconds, channel)
    caps: &'static [(usize, u32, Option<usize>)],
    cooldown_dismiss: u32,
    cooldown_accept: u32,
    repeat: bool,
    /// (counts accepts, limit)
    budget: Option<(bool, u64)>,
    sticky: u32,
}

const ALL: &[usize] = &[0, 1, 2];
const OFFERS: [OfferSpec; 5] = [
    OfferSpec {
        name: "a",
        value: 5.0,
        priority: 0,
        channels: ALL,
        caps: &[(2, 300, None)],
        cooldown_dismiss: 180,
        cooldown_accept: 0,
        repeat: false,
        budget: None,
        sticky: 240,
    },
    OfferSpec {
        name: "b",
        value: 8.0,
        priority: 0,
        channels: &[0, 1],
        caps: &[],
        cooldown_dismiss: 0,
        cooldown_accept: 0,
        repeat: false,
        budget: Some((true, 3)),
        sticky: 0,
    },
    OfferSpec {
        name: "c",
        value: 3.0,
        priority: 1,
        channels: ALL,
        caps: &[(1, 120, Some(2))],
        cooldown_dismiss: 0,
        cooldown_accept: 300,
        repeat: true,
        budget: Some((false, 6)),
        sticky: 120,
    },
    OfferSpec {
        name: "d",
        value: 4.0,
        priority: 0,
        channels: ALL,
        caps: &[],
        cooldown_dismiss: 60,
        cooldown_accept: 60,
        repeat: true,
        budget: None,
        sticky: 0,
    },
    OfferSpec {
        name: "fb",
        value: 1.0,
        priority: 0,
        channels: ALL,
        caps: &[(3, 600, None)],
        cooldown_dismiss: 0,
        cooldown_accept: 0,
        repeat: false,
        budget: None,
        sticky: 0,
    },
];
const FALLBACK: usize = 4;

#[derive(Default)]
struct Customer {
    last_view: Option<u32>,
    purchased: bool,
    /// (time, channel, offer)
    impressions: Vec<(u32, usize, usize)>,
    accepted: HashMap<usize, u32>,
    dismissed: HashMap<usize, u32>,
    sticky: Option<(usize, u32)>,
}

#[derive(Default)]
struct Model {
    customers: HashMap<u8, Customer>,
    /// Units spent per offer (no budget here has a period).
    spent: [u64; 5],
}

impl Model {
    fn eligible(&self, customer: Option<&Customer>, o: usize, channel: usize, now: u32) -> bool {
        let spec = &OFFERS[o];
        if !spec.channels.contains(&channel) {
            return false;
        }
        let c = customer;
        let rule = match o {
            0 => c.and_then(|c| c.last_view).is_some_and(|t| now - t < 600),
            1 => c.is_some_and(|c| c.purchased),
            3 => !c.is_some_and(|c| c.purchased),
            _ => true,
        };
        if !rule {
            return false;
        }
        if let Some(c) = c {
            if !spec.repeat && c.accepted.contains_key(&o) {
                return false;
            }
            let ends = |at: Option<&u32>, len: u32| at.filter(|_| len > 0).map(|t| t + len);
            let until = ends(c.dismissed.get(&o), spec.cooldown_dismiss)
                .max(ends(c.accepted.get(&o), spec.cooldown_accept));
            if until.is_some_and(|u| now < u) {
                return false;
            }
            for &(n, per, cap_channel) in spec.caps {
                if cap_channel.is_some_and(|cc| cc != channel) {
                    continue;
                }
                let seen = c
                    .impressions
                    .iter()
                    .filter(|(t, ch, off)| {
                        *off == o && now - t < per && cap_channel.map_or(true, |cc| cc == *ch)
                    })
                    .count();
                if seen >= n {
                    return false;
                }
            }
        }
        spec.budget.map_or(true, |(_, limit)| self.spent[o] < limit)
    }

    fn impression(&mut self, customer: u8, o: usize, channel: usize, now: u32) {
        let c = self.customers.entry(customer).or_default();
        c.impressions.push((now, channel, o));
        let sticky = OFFERS[o].sticky;
        if sticky > 0 && c.sticky.map_or(true, |(_, until)| until <= now) {
            c.sticky = Some((o, now + sticky));
        }
    }

    fn decide(
        &mut self,
        customer: u8,
        channel: usize,
        top: usize,
        record: bool,
        now: u32,
    ) -> Vec<&'static str> {
        let c = self.customers.get(&customer);
        let mut ranked: Vec<usize> = (0..OFFERS.len())
            .filter(|&o| o != FALLBACK && self.eligible(c, o, channel, now))
            .collect();
        if ranked.is_empty() && self.eligible(c, FALLBACK, channel, now) {
            ranked.push(FALLBACK);
        }
        let sticky = c
            .and_then(|c| c.sticky)
            .filter(|(_, until)| *until > now)
            .map(|(o, _)| o);
        ranked.sort_by(|&x, &y| {
            (sticky == Some(y))
                .cmp(&(sticky == Some(x)))
                .then(OFFERS[y].priority.cmp(&OFFERS[x].priority))
                .then(OFFERS[y].value.total_cmp(&OFFERS[x].value))
                .then(x.cmp(&y))
        });
        let mut chosen = Vec::new();
        for o in ranked {
            if chosen.len() == top {
                break;
            }
            if record {
                if let Some((false, limit)) = OFFERS[o].budget {
                    if self.spent[o] >= limit {
                        continue;
                    }
                    self.spent[o] += 1;
                }
            }
            chosen.push(o);
        }
        if record {
            for &o in &chosen {
                self.impression(customer, o, channel, now);
            }
        }
        chosen.iter().map(|&o| OFFERS[o].name).collect()
    }

    /// `false` when the budget refuses it.
    fn feedback(
        &mut self,
        customer: u8,
        o: usize,
        channel: usize,
        kind: FeedbackKind,
        now: u32,
    ) -> bool {
        let counted = match kind {
            FeedbackKind::Impression => Some(false),
            FeedbackKind::Accept => Some(true),
            _ => None,
        };
        if let (Some(counts_accepts), Some((budget_accepts, limit))) = (counted, OFFERS[o].budget) {
            if counts_accepts == budget_accepts {
                if self.spent[o] >= limit {
                    return false;
                }
                self.spent[o] += 1;
            }
        }
        match kind {
            FeedbackKind::Impression => self.impression(customer, o, channel, now),
            FeedbackKind::Accept | FeedbackKind::Dismiss => {
                let c = self.customers.entry(customer).or_default();
                if kind == FeedbackKind::Accept {
                    c.accepted.insert(o, now);
                } else {
                    c.dismissed.insert(o, now);
                }
                if c.sticky.is_some_and(|(s, _)| s == o) {
                    c.sticky = None;
                }
            }
            FeedbackKind::Click => {}
        }
        true
    }
}

fn ingest(engine: &Node, event: &str, channel: &str, customer: u8) -> Result<(), TestCaseError> {
    let mut e = RawEvent::new(event, channel, engine.engine().now_ms());
    e.keys.push(format!("user:{customer}"));
    engine
        .ingest(&e)
        .map(|_| ())
        .map_err(|e| TestCaseError::fail(e.to_string()))
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let clock = Arc::new(ManualClock::new(START_MS));
    let config = Config::from_source(&Source::new("model.toml", CONFIG))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let engine = Node::new(config, clock.clone());
    let mut model = Model::default();
    for (step, op) in ops.iter().enumerate() {
        let now = (clock.now_ms() / 1000) as u32;
        let key = |c: u8| format!("user:{c}");
        match *op {
            Op::View(c, ch) => {
                ingest(&engine, "view", CHANNELS[ch as usize], c)?;
                model.customers.entry(c).or_default().last_view = Some(now);
            }
            Op::Purchase(c) => {
                ingest(&engine, "purchase", "web", c)?;
                model.customers.entry(c).or_default().purchased = true;
            }
            Op::Decide {
                customer,
                channel,
                top,
                record,
            } => {
                let d = engine
                    .decide(&DecisionRequest {
                        key: key(customer),
                        channel: CHANNELS[channel as usize].into(),
                        top,
                        record_impression: record,
                        explain: false,
                        context: Vec::new(),
                    })
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let got: Vec<&str> = d.offers.iter().map(|o| o.offer.as_str()).collect();
                let want = model.decide(customer, channel as usize, top as usize, record, now);
                prop_assert_eq!(got, want, "step {}: {:?}", step, op);
            }
            Op::Feedback {
                customer,
                offer,
                channel,
                kind,
            } => {
                let kind = [
                    FeedbackKind::Impression,
                    FeedbackKind::Accept,
                    FeedbackKind::Dismiss,
                ][kind as usize];
                let result = engine.feedback(
                    kind,
                    &FeedbackTarget::Customer {
                        key: key(customer),
                        offer: OFFERS[offer as usize].name.into(),
                        channel: CHANNELS[channel as usize].into(),
                    },
                );
                let accepted =
                    model.feedback(customer, offer as usize, channel as usize, kind, now);
                match result {
                    Ok(_) => {
                        prop_assert!(accepted, "step {}: {:?} accepted, model refused", step, op)
                    }
                    Err(DecideError::BudgetSpent { .. }) => {
                        prop_assert!(!accepted, "step {}: {:?} refused, model accepted", step, op)
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("step {step}: {e}"))),
                }
            }
            Op::Wait(s) => clock.advance_secs(s as i64),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn decisions_match_the_reference_model(ops in proptest::collection::vec(op(), 1..200)) {
        run(&ops)?;
    }
}
