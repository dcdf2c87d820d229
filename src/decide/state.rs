//! What omnia remembers about one customer and the offers: impressions (for frequency
//! caps), acceptances and dismissals (for cooldowns and no-repeat), the sticky offer
//! (for cross-channel consistency), experiment arms, and coupons.
//!
//! It lives in the customer's shard beside the profile row, under the same lock, so a
//! decision reads eligibility and constraints and records its impressions atomically:
//! two channels asking at once cannot both spend the customer's last capped impression.
//! Only customers with offer history (impressions, feedback, coupons, experiment arms)
//! keep an entry, so a million profiles that never saw an offer cost nothing here.
//!
//! The shard holds each customer's state without looking inside: how it is encoded in a
//! snapshot's shard image ([`CustomerOffers::encode`], [`CustomerOffers::decode`]) and
//! moved into another config's indexes at a reload ([`CustomerOffers::remap`]) is
//! decided here.
//!
//! Experiment measurements live here too: per experiment the customer was exposed in,
//! when ([`Exposure::at`]) and, per goal of the experiment, the conversions counted
//! inside the goal's window after it and the sum of their values ([`GoalTally`]). That
//! is 24 bytes per exposure plus 16 per goal (5 + 12 per goal in a snapshot), at most
//! one exposure per experiment: bounded whatever the customer does.
//!
//! Invariants: `memories` is sorted by offer id with at most one entry per offer; an
//! offer's impressions are in time order and none is older than its longest cap window
//! (older ones can never count again); `arms` has one entry per experiment once any is
//! assigned; `exposures` is sorted by experiment, at most one each, only for experiments
//! with an arm, each with one tally per goal of its experiment.

use bytes::BufMut;
use compact_str::CompactString;

use crate::codec::{named, DecodeError, Reader, Write};
use crate::config::{Config, OfferDef};

/// At most this many impressions are kept per customer and offer; caps allow at most 255
/// per window, so a cap never undercounts unless a customer saw one offer more than this
/// many times within its longest window.
const MAX_IMPRESSIONS: usize = 256;

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct OfferMemory {
    pub offer: u16,
    /// `(time, channel)` of recent impressions, oldest first.
    pub impressions: Vec<(u32, u8)>,
    /// Time of the last acceptance; 0 for never.
    pub accepted_at: u32,
    /// Time of the last dismissal; 0 for never.
    pub dismissed_at: u32,
}

/// The offer every channel shows first until `until` (seconds), while it stays eligible.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sticky {
    pub offer: u16,
    pub until: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IssuedCoupon {
    pub offer: u16,
    pub code: CompactString,
    pub issued: u32,
    pub expires: u32,
    pub redeemed: Option<Redemption>,
}

/// When and where a coupon was redeemed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Redemption {
    /// Seconds; 0 when unknown (redeemed before omnia kept it: snapshot format 5 and
    /// before).
    pub at: u32,
    /// The channel's index; [`Redemption::UNKNOWN_CHANNEL`] when unknown, or when a
    /// reload removed the channel.
    pub channel: u8,
}

impl Redemption {
    pub const UNKNOWN_CHANNEL: u8 = u8::MAX;

    /// A redemption now on `channel`.
    pub(crate) fn at(now: u32, channel: usize) -> Redemption {
        Redemption {
            at: now,
            channel: channel as u8,
        }
    }
}

impl IssuedCoupon {
    pub(crate) fn is_open(&self, now: u32) -> bool {
        self.redeemed.is_none() && self.expires > now
    }
}

/// A customer's first exposure in one experiment and what it converted on since.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Exposure {
    pub experiment: u8,
    /// When the customer was first exposed, seconds.
    pub at: u32,
    /// Per goal of the experiment, in its config order.
    pub goals: Box<[GoalTally]>,
}

/// Per experiment and arm, the customers exposed, and per goal of the experiment those
/// converted: a shard's running totals, which `/metrics` reads every tick instead of
/// walking every customer (`report::arm_counts`).
///
/// Invariant: equal to [`ArmTally::recount`] over the shard's customers. Every change of
/// a customer's exposures (or of its arms while exposed) subtracts the customer's
/// contribution first and adds it again after ([`ArmTally::add`]); what replaces the
/// whole state (an image read, a reload's conversion) recounts. The counters are signed
/// so that a bug shows as a wrong number in a test, never as an overflow.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ArmTally {
    /// `[experiment][arm]`
    pub exposed: Vec<Vec<i64>>,
    /// `[experiment][goal][arm]`
    pub converted: Vec<Vec<Vec<i64>>>,
}

impl ArmTally {
    pub(crate) fn new(config: &Config) -> ArmTally {
        let experiments = &config.decisions.experiments;
        ArmTally {
            exposed: experiments.iter().map(|e| vec![0; e.arms.len()]).collect(),
            converted: experiments
                .iter()
                .map(|e| vec![vec![0; e.arms.len()]; e.goals.len()])
                .collect(),
        }
    }

    pub(crate) fn recount<'a>(
        config: &Config,
        customers: impl Iterator<Item = &'a CustomerOffers>,
    ) -> ArmTally {
        let mut tally = ArmTally::new(config);
        for customer in customers {
            tally.add(customer, 1);
        }
        tally
    }

    /// Adds (`sign` 1) or takes away (-1) what `customer` counts: one exposed customer
    /// per exposure in the arm it has, and one converted per goal it converted on.
    pub(crate) fn add(&mut self, customer: &CustomerOffers, sign: i64) {
        for x in &customer.exposures {
            let e = x.experiment as usize;
            let Some(arm) = customer.arms.get(e).and_then(|a| a.checked_sub(1)) else {
                continue;
            };
            let arm = arm as usize;
            let Some(exposed) = self.exposed.get_mut(e).and_then(|arms| arms.get_mut(arm)) else {
                continue;
            };
            *exposed += sign;
            for (g, goal) in x.goals.iter().enumerate() {
                if goal.conversions > 0 {
                    if let Some(n) = self.converted[e].get_mut(g).and_then(|a| a.get_mut(arm)) {
                        *n += sign;
                    }
                }
            }
        }
    }

    /// Adds another shard's totals (of the same config) to these.
    pub(crate) fn merge(&mut self, other: &ArmTally) {
        for (mine, theirs) in self.exposed.iter_mut().zip(&other.exposed) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        for (mine, theirs) in self.converted.iter_mut().zip(&other.converted) {
            for (goal, other_goal) in mine.iter_mut().zip(theirs) {
                for (a, b) in goal.iter_mut().zip(other_goal) {
                    *a += b;
                }
            }
        }
    }
}

/// The goal events counted for one exposure, inside the goal's window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct GoalTally {
    pub conversions: u32,
    /// The sum of their values (0 for a goal without a value).
    pub value: f64,
}

/// One customer's offer state (see the module doc).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerOffers {
    pub(crate) memories: Vec<OfferMemory>,
    pub(crate) sticky: Option<Sticky>,
    /// Per experiment: the arm index + 1; 0 while unassigned.
    pub(crate) arms: Vec<u8>,
    pub(crate) coupons: Vec<IssuedCoupon>,
    pub(crate) exposures: Vec<Exposure>,
}

impl CustomerOffers {
    /// Nothing remembered: the entry can go.
    pub(crate) fn is_empty(&self) -> bool {
        self.memories.is_empty()
            && self.sticky.is_none()
            && self.arms.is_empty()
            && self.coupons.is_empty()
            && self.exposures.is_empty()
    }

    pub(crate) fn exposure(&self, experiment: usize) -> Option<&Exposure> {
        self.exposures
            .binary_search_by_key(&(experiment as u8), |x| x.experiment)
            .ok()
            .map(|i| &self.exposures[i])
    }

    /// Records the customer's first exposure in `experiment` at `at`, with `goals` empty
    /// tallies; a later one changes nothing. Actions call it through
    /// [`super::offers::OfferPart::expose`], which keeps the shard's [`ArmTally`].
    pub(crate) fn expose(&mut self, experiment: usize, at: u32, goals: usize) {
        let experiment = experiment as u8;
        if let Err(i) = self
            .exposures
            .binary_search_by_key(&experiment, |x| x.experiment)
        {
            self.exposures.insert(
                i,
                Exposure {
                    experiment,
                    at,
                    goals: vec![GoalTally::default(); goals].into_boxed_slice(),
                },
            );
        }
    }

    /// Counts a goal event at `at` for every experiment the customer was exposed in
    /// that measures the goal, if it falls inside the goal's window after the exposure.
    pub(crate) fn goal_reached(&mut self, config: &Config, goal: usize, at: u32, value: f64) {
        let window = config.goals[goal].window;
        for exposure in &mut self.exposures {
            let experiment = &config.decisions.experiments[exposure.experiment as usize];
            let Some(j) = experiment.goals.iter().position(|&g| g == goal) else {
                continue;
            };
            if at >= exposure.at && at - exposure.at <= window {
                let tally = &mut exposure.goals[j];
                tally.conversions = tally.conversions.saturating_add(1);
                tally.value += value;
            }
        }
    }

    pub(crate) fn memory(&self, offer: usize) -> Option<&OfferMemory> {
        self.memories
            .binary_search_by_key(&(offer as u16), |m| m.offer)
            .ok()
            .map(|i| &self.memories[i])
    }

    pub(crate) fn memory_mut(&mut self, offer: usize) -> &mut OfferMemory {
        let offer = offer as u16;
        let i = match self.memories.binary_search_by_key(&offer, |m| m.offer) {
            Ok(i) => i,
            Err(i) => {
                self.memories.insert(
                    i,
                    OfferMemory {
                        offer,
                        ..OfferMemory::default()
                    },
                );
                debug_assert!(
                    self.memories.windows(2).all(|w| w[0].offer < w[1].offer),
                    "offer memories stay sorted, one per offer"
                );
                i
            }
        };
        &mut self.memories[i]
    }

    /// The first cap of `def` that forbids showing it on `channel` at `now`, by index.
    pub(crate) fn capped(
        &self,
        offer: usize,
        def: &OfferDef,
        channel: usize,
        now: u32,
    ) -> Option<usize> {
        let memory = self.memory(offer)?;
        def.caps.iter().position(|cap| {
            if cap.channel.is_some_and(|c| c != channel) {
                return false;
            }
            let seen = memory
                .impressions
                .iter()
                .filter(|(t, ch)| {
                    now.saturating_sub(*t) < cap.per
                        && cap.channel.map_or(true, |c| c == *ch as usize)
                })
                .count();
            seen >= cap.impressions as usize
        })
    }

    /// When the offer's cooldown ends, if it is cooling down at `now`.
    pub(crate) fn cooling_until(&self, offer: usize, def: &OfferDef, now: u32) -> Option<u32> {
        let memory = self.memory(offer)?;
        let end =
            |at: u32, length: u32| (at != 0 && length != 0).then(|| at.saturating_add(length));
        let until = end(memory.dismissed_at, def.cooldown_dismiss)
            .max(end(memory.accepted_at, def.cooldown_accept))?;
        (now < until).then_some(until)
    }

    /// Whether the customer accepted the offer and it does not repeat.
    pub(crate) fn accepted_for_good(&self, offer: usize, def: &OfferDef) -> bool {
        !def.repeat && self.memory(offer).is_some_and(|m| m.accepted_at != 0)
    }

    pub(crate) fn record_impression(
        &mut self,
        offer: usize,
        def: &OfferDef,
        channel: usize,
        now: u32,
    ) {
        let longest = def.caps.iter().map(|c| c.per).max().unwrap_or(0);
        let memory = self.memory_mut(offer);
        memory
            .impressions
            .retain(|(t, _)| now.saturating_sub(*t) < longest);
        if longest > 0 {
            if memory.impressions.len() == MAX_IMPRESSIONS {
                memory.impressions.remove(0);
            }
            memory.impressions.push((now, channel as u8));
        }
        if def.sticky > 0 && self.sticky.map_or(true, |s| s.until <= now) {
            self.sticky = Some(Sticky {
                offer: offer as u16,
                until: now.saturating_add(def.sticky),
            });
        }
    }

    /// An acceptance or a dismissal ends the offer's sticky window.
    pub(crate) fn release_sticky(&mut self, offer: usize) {
        if self.sticky.is_some_and(|s| s.offer as usize == offer) {
            self.sticky = None;
        }
    }

    /// The customer's open coupon for an offer, to read.
    pub(crate) fn open(&self, offer: usize, now: u32) -> Option<&IssuedCoupon> {
        self.coupons
            .iter()
            .find(|c| c.offer as usize == offer && c.is_open(now))
    }

    /// The customer's open coupon for an offer.
    pub(crate) fn open_coupon(&mut self, offer: usize, now: u32) -> Option<&mut IssuedCoupon> {
        self.coupons
            .iter_mut()
            .find(|c| c.offer as usize == offer && c.is_open(now))
    }

    /// Forgets what can never matter again: expired coupons.
    pub(crate) fn prune(&mut self, now: u32) {
        self.coupons.retain(|c| c.expires > now);
    }

    /// Folds the offer history of a customer merged into this one. Both histories are
    /// kept (caps count every impression either profile saw); this customer's sticky offer
    /// and experiment arms win, so a merge never moves a customer between arms it has
    /// been decided under.
    pub(crate) fn absorb(&mut self, other: CustomerOffers) {
        for theirs in other.memories {
            let mine = self.memory_mut(theirs.offer as usize);
            mine.impressions.extend(theirs.impressions);
            mine.impressions.sort_unstable();
            let excess = mine.impressions.len().saturating_sub(MAX_IMPRESSIONS);
            mine.impressions.drain(..excess);
            mine.accepted_at = mine.accepted_at.max(theirs.accepted_at);
            mine.dismissed_at = mine.dismissed_at.max(theirs.dismissed_at);
        }
        if self.sticky.is_none() {
            self.sticky = other.sticky;
        }
        let their_arms = other.arms.clone();
        if self.arms.is_empty() {
            self.arms = other.arms;
        } else {
            for (mine, theirs) in self.arms.iter_mut().zip(other.arms) {
                if *mine == 0 {
                    *mine = theirs;
                }
            }
        }
        self.coupons.extend(other.coupons);
        // A merged customer counts once, in the survivor's arm: an exposure of the other
        // profile in another arm is dropped; in the same arm the earlier exposure stays
        // and both profiles' conversions add up.
        for theirs in other.exposures {
            let e = theirs.experiment as usize;
            if self.arms.get(e) != their_arms.get(e) {
                continue;
            }
            match self
                .exposures
                .binary_search_by_key(&theirs.experiment, |x| x.experiment)
            {
                Ok(i) => {
                    let mine = &mut self.exposures[i];
                    mine.at = mine.at.min(theirs.at);
                    for (m, t) in mine.goals.iter_mut().zip(theirs.goals.iter()) {
                        m.conversions = m.conversions.saturating_add(t.conversions);
                        m.value += t.value;
                    }
                }
                Err(i) => self.exposures.insert(i, theirs),
            }
        }
    }
}

/// The offer state's bytes in a shard image (docs/storage.md, section 5.6): decide owns
/// them, the engine's image only places them.
impl CustomerOffers {
    /// One customer's offer state:
    /// `u16 memories, each (u16 offer, u16 impressions, each (u32 time, u8 channel), u32
    /// accepted at, u32 dismissed at); u8 sticky (0/1), then u16 offer + u32 until; u8
    /// arms + arm bytes; u16 coupons, each (u16 offer, str code, u32 issued, u32 expires, u8
    /// redeemed: 0 open, 1 redeemed when and where unknown (format 5 and before), 2
    /// followed by u32 at and u8 channel)`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let o = self;
        out.extend_from_slice(&(o.memories.len() as u16).to_le_bytes());
        for m in &o.memories {
            out.extend_from_slice(&m.offer.to_le_bytes());
            out.extend_from_slice(&(m.impressions.len() as u16).to_le_bytes());
            for &(time, channel) in &m.impressions {
                out.put_u32_le(time);
                out.push(channel);
            }
            out.put_u32_le(m.accepted_at);
            out.put_u32_le(m.dismissed_at);
        }
        match o.sticky {
            Some(s) => {
                out.push(1);
                out.extend_from_slice(&s.offer.to_le_bytes());
                out.put_u32_le(s.until);
            }
            None => out.push(0),
        }
        out.push(o.arms.len() as u8);
        out.extend_from_slice(&o.arms);
        out.extend_from_slice(&(o.coupons.len() as u16).to_le_bytes());
        for c in &o.coupons {
            out.extend_from_slice(&c.offer.to_le_bytes());
            out.str(&c.code);
            out.put_u32_le(c.issued);
            out.put_u32_le(c.expires);
            match c.redeemed {
                None => out.push(0),
                Some(r) => {
                    out.push(2);
                    out.put_u32_le(r.at);
                    out.push(r.channel);
                }
            }
        }
    }

    /// The inverse of [`CustomerOffers::encode`], every index checked against `config`.
    pub(crate) fn decode(
        r: &mut Reader<'_>,
        config: &Config,
    ) -> Result<CustomerOffers, DecodeError> {
        let offers = config.decisions.offers.len();
        let offer = |r: &mut Reader<'_>| -> Result<u16, DecodeError> {
            let o = r.u16(&named("offer"))?;
            if o as usize >= offers {
                return Err(r.invalid("offer", format!("offer {o} of {offers}")));
            }
            Ok(o)
        };
        let channels = config.channels.len();
        let experiments = &config.decisions.experiments;
        let mut state = CustomerOffers::default();
        for _ in 0..r.u16(&named("offer memories"))? {
            let offer = offer(r)?;
            let n = r.u16(&named("impressions"))?;
            let mut impressions = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let time = r.u32(&named("impression time"))?;
                let channel = r.u8(&named("channel"))?;
                if channel as usize >= channels {
                    return Err(r.invalid("channel", format!("channel {channel} of {channels}")));
                }
                impressions.push((time, channel));
            }
            state.memories.push(OfferMemory {
                offer,
                impressions,
                accepted_at: r.u32(&named("accepted at"))?,
                dismissed_at: r.u32(&named("dismissed at"))?,
            });
        }
        if r.u8(&named("sticky"))? != 0 {
            state.sticky = Some(Sticky {
                offer: offer(r)?,
                until: r.u32(&named("sticky until"))?,
            });
        }
        let arms = r.u8(&named("arms"))? as usize;
        if arms > experiments.len() {
            return Err(r.invalid(
                "arms",
                format!("{arms} arms, {} experiments", experiments.len()),
            ));
        }
        for e in experiments.iter().take(arms) {
            let arm = r.u8(&named("arm"))?;
            if arm as usize > e.arms.len() {
                return Err(r.invalid("arm", format!("arm {arm} of {}", e.arms.len())));
            }
            state.arms.push(arm);
        }
        for _ in 0..r.u16(&named("coupons"))? {
            state.coupons.push(IssuedCoupon {
                offer: offer(r)?,
                code: r.str(&named("coupon code"))?.into(),
                issued: r.u32(&named("coupon issued"))?,
                expires: r.u32(&named("coupon expires"))?,
                redeemed: match r.u8(&named("coupon redeemed"))? {
                    0 => None,
                    2 => {
                        let at = r.u32(&named("coupon redeemed at"))?;
                        let channel = r.u8(&named("coupon redeemed on"))?;
                        if channel != Redemption::UNKNOWN_CHANNEL
                            && channel as usize >= config.channels.len()
                        {
                            return Err(r.invalid(
                                "coupon redeemed on",
                                format!("channel {channel} of {}", config.channels.len()),
                            ));
                        }
                        Some(Redemption { at, channel })
                    }
                    // Format 5 and before wrote 0 or 1, and read any other byte as 1.
                    _ => Some(Redemption {
                        at: 0,
                        channel: Redemption::UNKNOWN_CHANNEL,
                    }),
                },
            });
        }
        Ok(state)
    }
}

/// How offer, channel and experiment indexes of one config map into another's, by name
/// (`None`: gone), for a relayout.
pub struct OfferRemap {
    pub(crate) offers: Vec<Option<u16>>,
    pub(crate) channels: Vec<Option<usize>>,
    /// Per experiment of the new config: the old one with the same name and arms.
    pub(crate) experiments: Vec<Option<usize>>,
    /// Per experiment of the new config, per goal of it: the old experiment's goal
    /// with the same name.
    pub(crate) goals: Vec<Vec<Option<usize>>>,
}

impl OfferRemap {
    /// Matches `from`'s offers, channels and experiments with `to`'s by name; an
    /// experiment matches only if its arms are unchanged.
    pub(crate) fn new(from: &Config, to: &Config) -> OfferRemap {
        let (a, b) = (from, to);
        let position = |names: &[String], name: &str| names.iter().position(|n| n == name);
        OfferRemap {
            offers: a
                .decisions
                .offers
                .iter()
                .map(|o| {
                    b.decisions
                        .offers
                        .iter()
                        .position(|x| x.name == o.name)
                        .map(|j| j as u16)
                })
                .collect(),
            channels: a
                .channels
                .iter()
                .map(|c| position(&b.channels, c))
                .collect(),
            experiments: b
                .decisions
                .experiments
                .iter()
                .map(|e| {
                    a.decisions.experiments.iter().position(|x| {
                        x.name == e.name
                            && x.arms.len() == e.arms.len()
                            && x.arms.iter().zip(&e.arms).all(|(p, q)| p.name == q.name)
                    })
                })
                .collect(),
            goals: b
                .decisions
                .experiments
                .iter()
                .map(|e| {
                    let old = a.decisions.experiments.iter().find(|x| x.name == e.name);
                    e.goals
                        .iter()
                        .map(|&g| {
                            old?.goals
                                .iter()
                                .position(|&o| a.goals[o].name == b.goals[g].name)
                        })
                        .collect()
                })
                .collect(),
        }
    }
}

impl CustomerOffers {
    /// This state in another config's indexes: what refers to an offer or channel the
    /// new config lacks is dropped, experiment arms follow their experiment by name.
    pub(crate) fn remap(self, map: &OfferRemap) -> CustomerOffers {
        let old = self;
        let mut new = CustomerOffers::default();
        for mut memory in old.memories {
            let Some(offer) = map.offers[memory.offer as usize] else {
                continue;
            };
            memory.offer = offer;
            memory.impressions = memory
                .impressions
                .into_iter()
                .filter_map(|(t, ch)| Some((t, map.channels[ch as usize]? as u8)))
                .collect();
            new.memories.push(memory);
        }
        new.memories.sort_by_key(|m| m.offer);
        new.sticky = old.sticky.and_then(|mut s| {
            s.offer = map.offers[s.offer as usize]?;
            Some(s)
        });
        if old.arms.iter().any(|&a| a > 0) {
            new.arms = map
                .experiments
                .iter()
                .map(|e| e.and_then(|i| old.arms.get(i).copied()).unwrap_or(0))
                .collect();
        }
        new.coupons = old
            .coupons
            .into_iter()
            .filter_map(|mut c| {
                c.offer = map.offers[c.offer as usize]?;
                if let Some(r) = &mut c.redeemed {
                    r.channel = map
                        .channels
                        .get(r.channel as usize)
                        .copied()
                        .flatten()
                        .map_or(Redemption::UNKNOWN_CHANNEL, |c| c as u8);
                }
                Some(c)
            })
            .collect();
        // An exposure follows its experiment (same name, same arms); a goal of it that
        // is new counts from the reload on.
        for (e, from) in map.experiments.iter().enumerate() {
            let found =
                from.and_then(|from| old.exposures.iter().find(|x| x.experiment as usize == from));
            let Some(exposure) = found else {
                continue;
            };
            new.exposures.push(Exposure {
                experiment: e as u8,
                at: exposure.at,
                goals: map.goals[e]
                    .iter()
                    .map(|g| g.map_or_else(GoalTally::default, |g| exposure.goals[g]))
                    .collect(),
            });
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CustomerOffers {
        let mut s = CustomerOffers::default();
        s.memory_mut(2).impressions.push((100, 1));
        s.memory_mut(2).accepted_at = 150;
        s.memory_mut(0).dismissed_at = 90;
        s.sticky = Some(Sticky {
            offer: 2,
            until: 400,
        });
        s.coupons.push(IssuedCoupon {
            offer: 2,
            code: "WELCOME-7Q".into(),
            issued: 100,
            expires: 900,
            redeemed: None,
        });
        s.coupons.push(IssuedCoupon {
            offer: 0,
            code: "CART10-7K2M9QXRT4C".into(),
            issued: 100,
            expires: 900,
            redeemed: Some(Redemption {
                at: 120,
                channel: 1,
            }),
        });
        s
    }

    #[test]
    fn the_image_bytes_round_trip_and_cuts_are_refused() {
        let config = crate::config::Config::embedded_default().unwrap();
        let mut bytes = Vec::new();
        sample().encode(&mut bytes);
        let mut r = Reader::new(&bytes);
        assert_eq!(CustomerOffers::decode(&mut r, &config).unwrap(), sample());
        r.finish().unwrap();
        for len in 0..bytes.len() {
            let mut r = Reader::new(&bytes[..len]);
            assert!(
                CustomerOffers::decode(&mut r, &config).is_err(),
                "cut at {len}"
            );
        }
    }

    #[test]
    fn a_remap_follows_offers_by_index_and_drops_what_is_gone() {
        // Offer 0 is gone, offer 2 becomes 0; channel 1 becomes 0.
        let map = OfferRemap {
            offers: vec![None, None, Some(0)],
            channels: vec![None, Some(0)],
            experiments: vec![],
            goals: vec![],
        };
        let new = sample().remap(&map);
        assert_eq!(new.memories.len(), 1);
        assert_eq!(new.memory(0).unwrap().impressions, vec![(100, 0)]);
        assert_eq!(new.memory(0).unwrap().accepted_at, 150);
        assert_eq!(new.sticky.map(|s| s.offer), Some(0));
        assert_eq!(new.coupons[0].offer, 0);
    }
    use crate::config::Cap;

    fn offer(caps: Vec<Cap>) -> OfferDef {
        OfferDef {
            name: "o".into(),
            description: None,
            rule: None,
            channels: u32::MAX,
            value: 1.0,
            weight: 1.0,
            propensity: None,
            rank: None,
            priority: 0,
            caps,
            cooldown_dismiss: 100,
            cooldown_accept: 0,
            repeat: false,
            budget: None,
            sticky: 50,
            coupon: None,
            content: None,
        }
    }

    #[test]
    fn caps_count_only_their_window_and_channel() {
        let def = offer(vec![
            Cap {
                impressions: 2,
                per: 60,
                channel: None,
            },
            Cap {
                impressions: 1,
                per: 600,
                channel: Some(1),
            },
        ]);
        let mut s = CustomerOffers::default();
        s.record_impression(0, &def, 0, 1000);
        assert_eq!(s.capped(0, &def, 0, 1000), None);
        s.record_impression(0, &def, 0, 1010);
        assert_eq!(s.capped(0, &def, 0, 1010), Some(0));
        // 60 s after the first impression it no longer counts.
        assert_eq!(s.capped(0, &def, 0, 1059), Some(0));
        assert_eq!(s.capped(0, &def, 0, 1060), None);
        s.record_impression(0, &def, 1, 1100);
        assert_eq!(s.capped(0, &def, 1, 1101), Some(1));
        assert_eq!(
            s.capped(0, &def, 0, 1101),
            None,
            "the channel cap is for channel 1"
        );
        assert_eq!(s.capped(0, &def, 1, 1700), None);
    }

    #[test]
    fn cooldown_and_sticky_and_merge() {
        let def = offer(Vec::new());
        let mut s = CustomerOffers::default();
        s.record_impression(3, &def, 0, 10);
        assert_eq!(
            s.sticky,
            Some(Sticky {
                offer: 3,
                until: 60
            })
        );
        s.memory_mut(3).dismissed_at = 20;
        s.release_sticky(3);
        assert_eq!(s.sticky, None);
        assert_eq!(s.cooling_until(3, &def, 119), Some(120));
        assert_eq!(s.cooling_until(3, &def, 120), None);
        let mut other = CustomerOffers::default();
        other.memory_mut(3).accepted_at = 30;
        other.arms = vec![2, 1];
        s.arms = vec![1, 0];
        s.absorb(other);
        assert!(s.accepted_for_good(3, &def));
        assert_eq!(s.arms, vec![1, 1]);
    }
}
