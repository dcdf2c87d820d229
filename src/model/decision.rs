//! Decisions as channels see them: what a channel asks ("which offers for this customer,
//! on this channel, now?"), what it gets back, and the feedback it sends afterwards.
//!
//! The decisioning module produces these, the protocol carries them, the client and the
//! command line hand them to people. Names are the config's names, so a decision reads
//! the same in every layer.

use std::fmt;

use super::event::RawValue;

/// What a customer did with an offer a channel presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum FeedbackKind {
    /// The offer was shown.
    Impression = 1,
    Click = 2,
    /// The customer took the offer (and redeemed its coupon, if it has one).
    Accept = 3,
    Dismiss = 4,
}

impl FeedbackKind {
    pub const ALL: [FeedbackKind; 4] = [
        FeedbackKind::Impression,
        FeedbackKind::Click,
        FeedbackKind::Accept,
        FeedbackKind::Dismiss,
    ];

    pub fn from_u8(v: u8) -> Option<FeedbackKind> {
        FeedbackKind::ALL.get((v as usize).wrapping_sub(1)).copied()
    }

    /// The name used in config (`feedback_events`), the command line and metrics.
    pub fn name(self) -> &'static str {
        match self {
            FeedbackKind::Impression => "impression",
            FeedbackKind::Click => "click",
            FeedbackKind::Accept => "accept",
            FeedbackKind::Dismiss => "dismiss",
        }
    }

    pub fn from_name(name: &str) -> Option<FeedbackKind> {
        FeedbackKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Index into per-kind tables.
    pub fn index(self) -> usize {
        self as usize - 1
    }
}

impl fmt::Display for FeedbackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A channel's question.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRequest {
    /// Any key of the customer (`namespace:value`); unknown keys are new visitors.
    pub key: String,
    pub channel: String,
    /// How many offers to return, best first (at least 1).
    pub top: u8,
    /// Record an impression of every returned offer, as if FEEDBACK impression had been
    /// sent for each: saves a round trip when the channel shows what it is given.
    pub record_impression: bool,
    /// Explain every offer, chosen or not.
    pub explain: bool,
    /// Context fields declared in `[decisions.context]`, such as the page or the store.
    pub context: Vec<(String, RawValue)>,
}

/// Why an offer was or was not chosen. The codes are part of the protocol; the names
/// (see [`Outcome::name`]) are what JSON, the command line and the docs show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Outcome {
    /// Returned to the channel.
    Chosen = 0,
    /// Eligible, but ranked below the requested number of offers.
    Outranked = 1,
    /// The offer is not shown on this channel.
    Channel = 2,
    /// Its eligibility rule is false for this customer.
    Rule = 3,
    /// The customer accepted it before and it does not repeat.
    Accepted = 4,
    /// In its cooldown after a dismissal or an acceptance.
    Cooldown = 5,
    /// A frequency cap is reached.
    Capped = 6,
    /// Its budget is spent.
    Budget = 7,
    /// The customer's experiment arm does not include it.
    Experiment = 8,
    /// The customer is in a control arm, which receives only the fallback.
    Control = 9,
    /// The fallback offer: considered only when no other offer is eligible.
    Fallback = 10,
}

impl Outcome {
    pub const ALL: [Outcome; 11] = [
        Outcome::Chosen,
        Outcome::Outranked,
        Outcome::Channel,
        Outcome::Rule,
        Outcome::Accepted,
        Outcome::Cooldown,
        Outcome::Capped,
        Outcome::Budget,
        Outcome::Experiment,
        Outcome::Control,
        Outcome::Fallback,
    ];

    pub fn from_u8(v: u8) -> Option<Outcome> {
        Outcome::ALL.get(v as usize).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Chosen => "chosen",
            Outcome::Outranked => "outranked",
            Outcome::Channel => "not_on_channel",
            Outcome::Rule => "rule_false",
            Outcome::Accepted => "already_accepted",
            Outcome::Cooldown => "cooldown",
            Outcome::Capped => "capped",
            Outcome::Budget => "budget_spent",
            Outcome::Experiment => "not_in_arm",
            Outcome::Control => "control_arm",
            Outcome::Fallback => "fallback_unused",
        }
    }
}

impl serde::Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// One offer in a decision.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RankedOffer {
    pub offer: String,
    /// The ranking score (higher is better; within a priority tier).
    pub score: f64,
    pub priority: i32,
    /// Shown because the customer saw it on some channel within its sticky window.
    pub sticky: bool,
    /// The offer's content filled for this customer, when the offer has content.
    pub content: Option<Content>,
}

/// What a channel shows of an offer, its placeholders filled for the customer
/// (`[offers.NAME] content`); fields the offer does not define are `None`.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Content {
    pub title: Option<String>,
    pub text: Option<String>,
    pub url: Option<String>,
    pub image: Option<String>,
}

impl Content {
    /// The fields in order: title, text, url, image.
    pub fn fields(&self) -> [&Option<String>; 4] {
        [&self.title, &self.text, &self.url, &self.image]
    }

    pub fn fields_mut(&mut self) -> [&mut Option<String>; 4] {
        [
            &mut self.title,
            &mut self.text,
            &mut self.url,
            &mut self.image,
        ]
    }
}

/// One offer's fate in a decision, for explanations.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Considered {
    pub offer: String,
    pub outcome: Outcome,
    /// The ranking score, for offers that passed every constraint; NaN otherwise.
    pub score: f64,
    /// Details of the outcome, for people: which cap, until when.
    pub detail: String,
}

/// A coupon issued to a customer, visible on every channel until accepted or expired.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Coupon {
    pub offer: String,
    pub code: String,
    /// Seconds since the Unix epoch.
    pub issued: u32,
    pub expires: u32,
}

/// A customer's arm in one experiment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArmAssignment {
    pub experiment: String,
    pub arm: String,
}

/// The answer to a decision request.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Decision {
    /// Unique for the server's life; FEEDBACK can refer to it.
    pub decision_id: u64,
    /// Best first; empty when nothing (not even the fallback) is eligible.
    pub offers: Vec<RankedOffer>,
    pub arms: Vec<ArmAssignment>,
    /// The customer's open coupons, whichever channel issued them.
    pub coupons: Vec<Coupon>,
    /// Whether the customer was known before this request.
    pub known_customer: bool,
    /// Every offer in config order; empty unless requested.
    pub explanation: Vec<Considered>,
}

/// What feedback refers to.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedbackTarget {
    /// An offer of an earlier decision (the server remembers recent decisions).
    Decision { decision_id: u64, offer: String },
    /// An offer shown to a customer on a channel, without a decision id (for example an
    /// acceptance in a store days later).
    Customer {
        key: String,
        offer: String,
        channel: String,
    },
}

/// What recording feedback did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FeedbackResult {
    /// The decision the feedback was counted against (a fresh id for the customer form).
    pub decision_id: u64,
    /// A coupon issued by this impression, or redeemed by this acceptance.
    pub coupon: Option<Coupon>,
}

/// A coupon redeemed by its code (REDEEM).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Redeemed {
    /// The offer whose coupon it is; the redemption counts as an accept of it.
    pub offer: String,
    pub code: String,
    /// The holder's key (its primary key when the coupon was issued).
    pub key: String,
    /// Unix seconds.
    pub issued: u32,
    pub expires: u32,
    pub redeemed_at: u32,
    pub channel: String,
    /// The id the redemption is logged and counted under, like a feedback's.
    pub decision_id: u64,
}

/// Counters of one offer on one channel in one experiment arm.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OfferStats {
    pub offer: String,
    pub channel: String,
    /// `None` for totals over every customer, experiment or not.
    pub experiment: Option<String>,
    pub arm: Option<String>,
    pub decisions: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub accepts: u64,
    pub dismisses: u64,
}

impl OfferStats {
    /// Clicks per impression; `None` before the first impression.
    pub fn click_rate(&self) -> Option<f64> {
        (self.impressions > 0).then(|| self.clicks as f64 / self.impressions as f64)
    }

    /// Acceptances per impression; `None` before the first impression.
    pub fn accept_rate(&self) -> Option<f64> {
        (self.impressions > 0).then(|| self.accepts as f64 / self.impressions as f64)
    }
}
