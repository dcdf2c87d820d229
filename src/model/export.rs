//! Everything omnia holds on one person, as one document (GDPR Art. 15 and 20): what
//! `omnia ctl export KEY` prints and `GET /v1/profiles/{key}/export` answers. Fields are
//! documented for the person reading them in docs/privacy.md.
//!
//! Written as JSON only: an aggregate that has no value (`since` an event that never
//! happened) is `null` there, as in every JSON view of a profile, so clients read the
//! document as JSON rather than back into these types.

use serde::Serialize;

use super::ProfileView;

/// One customer's export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Export {
    /// Keys, first and last seen, channels, aggregates by rule text, attributes,
    /// scores, segments: the PROFILE view.
    pub profile: ProfileView,
    /// What was offered and how the person responded.
    pub offers: OfferHistory,
    /// Decisions remembered for feedback by decision id.
    pub decisions: Vec<RememberedDecision>,
}

/// A customer's offer history.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OfferHistory {
    pub offers: Vec<OfferEntry>,
    /// The offer every channel shows first until `until` (seconds since the epoch).
    pub sticky: Option<StickyOffer>,
    /// The arm of each experiment the person was assigned to.
    pub experiments: Vec<ExperimentArm>,
    pub coupons: Vec<IssuedCoupon>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OfferEntry {
    pub offer: String,
    /// Recent impressions (those caps still count), oldest first.
    pub impressions: Vec<Impression>,
    /// Seconds since the epoch of the last acceptance, if any.
    pub accepted_at: Option<u32>,
    pub dismissed_at: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Impression {
    pub at: u32,
    pub channel: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StickyOffer {
    pub offer: String,
    pub until: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentArm {
    pub experiment: String,
    pub arm: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IssuedCoupon {
    pub offer: String,
    pub code: String,
    pub issued: u32,
    pub expires: u32,
    pub redeemed: bool,
    /// When it was redeemed (Unix seconds), when omnia kept it.
    pub redeemed_at: Option<u32>,
    /// Where it was redeemed, when omnia kept it.
    pub redeemed_on: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RememberedDecision {
    /// As a string: decision ids exceed 2^53.
    pub decision_id: String,
    pub channel: String,
    /// The offers it returned, best first.
    pub offers: Vec<String>,
}
