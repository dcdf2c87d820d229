//! The coupons omnia issued, by code, and REDEEM: a till scans a code, omnia finds its
//! holder, and redeems it once.
//!
//! A coupon lives in its holder's offer state (`state::IssuedCoupon`, under the shard
//! lock, in snapshots, moved by merges and reloads); [`CouponIndex`] only says whose it
//! is: code → (holder's key, offer, expiry). Redeeming looks the holder up here, then
//! runs one action on the holder ([`Redeemed`]) that finds the coupon in the offer state
//! and decides under the shard lock, so two tills scanning one code at the same moment
//! are ordered by the lock: the first redeems it, the second finds it redeemed.
//!
//! Invariants:
//! - every coupon in an offer state is in the index, under a key of its holder (the
//!   primary key when it was issued; keys survive merges, so it still finds the
//!   survivor that holds the coupon after one). Issue, replay and restore add; FORGET
//!   removes a forgotten customer's codes with its keys; a coupon expired for longer
//!   than [`CouponIndex::KEPT_EXPIRED`] is swept (the offer state dropped it at expiry;
//!   until then a scan is told "expired", not "unknown").
//! - codes are unique: `code::Sequencer` never repeats a sequence number, and a new
//!   code is checked against the index besides ([`CouponIndex::new_code`]).
//!
//! Data flow: a decision or feedback impression that issues a coupon makes its code in
//! the action's plan, so the log record carries it (docs/storage.md, ACTION), and adds
//! it here when the action commits; replay adds the record's code. Old records (data
//! directory format 7 and before) carry none: their replay makes the code the way they
//! made it then, a hash of decision and offer ([`legacy_code`]).

use std::collections::HashMap;

use compact_str::CompactString;
use parking_lot::Mutex;
use xxhash_rust::xxh3::Xxh3;

use super::actions::Given;
use super::code::{self, CodeError, Permutation, Sequencer};
use super::state::{CustomerOffers, IssuedCoupon};
use super::{DecideError, Decider, Offers};
use crate::config::{Config, CouponDef};
use crate::engine::action::{Acted, Action, Mode};
use crate::engine::event::Event;
use crate::engine::{Customer, Engine, Receipt};
use crate::model::decision::{FeedbackKind, Redeemed as RedeemedView};

/// Whose a code is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Holder {
    pub key: CompactString,
    pub offer: u16,
    pub expires: u32,
}

#[derive(Default)]
struct Inner {
    by_code: HashMap<CompactString, Holder, ahash::RandomState>,
    by_key: HashMap<CompactString, Vec<CompactString>, ahash::RandomState>,
}

/// Every coupon omnia holds, by code (see the module doc).
#[derive(Default)]
pub(crate) struct CouponIndex {
    inner: Mutex<Inner>,
    sequencer: Sequencer,
    /// When [`CouponIndex::sweep`] last walked the codes.
    swept: std::sync::atomic::AtomicU32,
}

impl CouponIndex {
    /// How long after its expiry a code is still known (and answered "expired").
    pub const KEPT_EXPIRED: u32 = 30 * 86_400;

    /// A new code for `coupon` at `now`, under `key` (`code::key_from` the data
    /// directory's secret): unique (see `code`), and not in the index.
    pub fn new_code(
        &self,
        coupon: &CouponDef,
        now: u32,
        key: &[u8; 32],
    ) -> Result<CompactString, code::Exhausted> {
        let p = Permutation::new(key, 5 * coupon.length as u32);
        loop {
            let s = self.sequencer.next(coupon.length, now)?;
            let made = code::format(&coupon.prefix, coupon.length, p.apply(s));
            if !self.inner.lock().by_code.contains_key(&made) {
                return Ok(made);
            }
        }
    }

    /// `code` is held by `holder`.
    pub fn insert(&self, code: &str, holder: Holder) {
        let mut inner = self.inner.lock();
        let key = holder.key.clone();
        if let Some(before) = inner.by_code.insert(code.into(), holder) {
            if before.key == key {
                return;
            }
            if let Some(codes) = inner.by_key.get_mut(&before.key) {
                codes.retain(|c| c != code);
            }
        }
        inner.by_key.entry(key).or_default().push(code.into());
    }

    /// Whose `code` is.
    pub fn get(&self, code: &str) -> Option<Holder> {
        self.inner.lock().by_code.get(code).cloned()
    }

    /// Forgets every code held under one of `keys`.
    pub fn forget(&self, keys: &[String]) {
        let mut inner = self.inner.lock();
        for key in keys {
            if let Some(codes) = inner.by_key.remove(key.as_str()) {
                for c in codes {
                    inner.by_code.remove(&c);
                }
            }
        }
    }

    /// Drops codes expired for longer than [`CouponIndex::KEPT_EXPIRED`] at `now`; at
    /// most once an hour, since it walks every code.
    pub fn sweep(&self, now: u32) {
        let last = self.swept.load(std::sync::atomic::Ordering::Relaxed);
        if now < last.saturating_add(3600)
            || self
                .swept
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let mut inner = self.inner.lock();
        let before = inner.by_code.len();
        inner
            .by_code
            .retain(|_, h| h.expires.saturating_add(Self::KEPT_EXPIRED) > now);
        if inner.by_code.len() == before {
            return;
        }
        let Inner { by_code, by_key } = &mut *inner;
        by_key.retain(|_, codes| {
            codes.retain(|c| by_code.contains_key(c));
            !codes.is_empty()
        });
    }

    /// Notes a code that exists (restored or replayed), so that the sequence of its
    /// length continues after it; `key` as for [`CouponIndex::new_code`].
    pub fn saw(&self, made: &str, key: &[u8; 32]) {
        if let Ok(body) = code::parse(made) {
            if code::LENGTHS.contains(&body.length) {
                let p = Permutation::new(key, 5 * body.length as u32);
                self.sequencer.saw(body.length, p.invert(body.value));
            }
        }
    }

    /// Rebuilds the index from every shard's offer state (after a restore), each coupon
    /// under its holder's primary key.
    pub fn rebuild(&self, engine: &Engine<Offers>) {
        let key = code::key_from(&engine.suppression().secret());
        let mut found = Vec::new();
        engine.each_extension_keyed(|offers, primary_key| {
            for (local, customer) in offers.customers_by_slot() {
                if customer.coupons.is_empty() {
                    continue;
                }
                let key = CompactString::from(primary_key(local));
                for c in &customer.coupons {
                    found.push((
                        c.code.clone(),
                        Holder {
                            key: key.clone(),
                            offer: c.offer,
                            expires: c.expires,
                        },
                    ));
                }
            }
        });
        for (made, holder) in found {
            self.saw(&made, &key);
            self.insert(&made, holder);
        }
    }

    /// Continues `other`'s sequences (a reload's new decider).
    pub fn take_sequences_from(&self, other: &CouponIndex) {
        self.sequencer.take_from(&other.sequencer);
    }
}

/// The code an action logged before data directory format 8 issued: the prefix, a
/// dash and eight characters of Crockford base32 from a hash of the decision and the
/// offer (no check character; unique only by chance). Replay makes it again.
pub(super) fn legacy_code(prefix: &str, decision_id: u64, offer: usize) -> CompactString {
    let mut h = Xxh3::new();
    h.update(&decision_id.to_le_bytes());
    h.update(&(offer as u64).to_le_bytes());
    let mut bits = h.digest();
    let mut made = CompactString::from(prefix);
    made.push('-');
    for _ in 0..8 {
        made.push(code::ALPHABET[(bits & 31) as usize] as char);
        bits >>= 5;
    }
    made
}

/// Why a scanned code is not redeemed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RedeemError {
    #[error("{0}")]
    Mistyped(#[from] CodeError),
    #[error(
        "no offer issues coupon codes with prefix `{prefix}` (`{code}`); the prefixes are {known}"
    )]
    UnknownPrefix {
        code: String,
        prefix: String,
        known: String,
    },
    #[error("no coupon has code `{code}`: it was never issued, or its holder was forgotten, or it expired over 30 days ago")]
    Unknown { code: String },
    #[error("coupon `{code}` expired at {expired} (Unix seconds); it can no longer be redeemed")]
    Expired { code: String, expired: u32 },
    #[error("coupon `{code}` was already redeemed {when} on channel {channel}")]
    AlreadyRedeemed {
        code: String,
        /// Unix seconds; 0 when omnia did not keep it.
        at: u32,
        channel: String,
        when: String,
    },
    #[error("coupon `{code}` cannot be redeemed on channel `{channel}`; it is valid on {valid}")]
    WrongChannel {
        code: String,
        channel: String,
        valid: String,
    },
}

impl Decider {
    /// The codes that impressions of `shown` (in order) issue to a customer with offer
    /// state `state` at `now`: one for each offer with a coupon the customer holds no open
    /// one of, as (position in `shown`, code).
    pub(super) fn codes_for(
        &self,
        engine: &Engine<Offers>,
        state: &CustomerOffers,
        shown: impl Iterator<Item = usize>,
        now: u32,
    ) -> Result<Vec<(u8, CompactString)>, code::Exhausted> {
        let config = engine.config();
        let mut codes = Vec::new();
        let mut key = None;
        for (i, offer) in shown.enumerate() {
            let Some(coupon) = &config.decisions.offers[offer].coupon else {
                continue;
            };
            if state.open(offer, now).is_some() {
                continue;
            }
            let key = key.get_or_insert_with(|| code::key_from(&engine.suppression().secret()));
            codes.push((i as u8, self.coupons.new_code(coupon, now, key)?));
        }
        Ok(codes)
    }

    /// Redeems the coupon `code` on `channel`, once: finds its holder, checks that it is
    /// open, unexpired and valid there, and records it as an accept of its offer (caps,
    /// budgets, experiments, counters), whose profile event is `decisions.feedback_events`'
    /// `redeem` (else the accept's), with the code and `order_value`.
    pub fn redeem(
        &self,
        engine: &Engine<Offers>,
        code: &str,
        channel: &str,
        order_value: Option<f64>,
        receipt: &mut Receipt,
    ) -> Result<RedeemedView, DecideError> {
        let _strings = engine.hold_strings();
        let config = engine.config();
        let code = code::normalize(code);
        let channel = super::channel_named(config, channel)?;
        let Some(holder) = self.coupons.get(&code) else {
            return Err(not_found(config, &code).into());
        };
        let key = super::customer_key(config, &holder.key)?;
        engine.writable()?;
        let offer = holder.offer as usize;
        let now = engine.now_secs();
        let event_type = config
            .decisions
            .redeem_event
            .or(config.decisions.feedback_events[FeedbackKind::Accept.index()]);
        let act = super::Act {
            kind: FeedbackKind::Accept,
            offer,
            channel,
            now,
            decision_id: self.next_id(),
            count: true,
        };
        let mut action = Redeemed {
            code: &code,
            accept: Given {
                code: Some(CompactString::from(code.as_str())),
                order_value: order_value.filter(|v| v.is_finite()),
                ..Given::new(engine, self, act, &key, event_type)
            },
            refused: None,
        };
        match engine.act(&key, &[], None, &mut action, Mode::Live(receipt))? {
            Acted::Unknown => Err(RedeemError::Unknown { code }.into()),
            Acted::Declined { .. } => Err(match action.refused {
                Some(refused) => refused.into(),
                None => self.budget_refusal(config, action.accept.act.offer, FeedbackKind::Accept),
            }),
            Acted::Applied | Acted::Created => {
                let offer = action.accept.act.offer;
                let c = action
                    .accept
                    .coupon
                    .expect("a committed redemption has its coupon");
                Ok(RedeemedView {
                    offer: config.decisions.offers[offer].name.clone(),
                    code: c.code.to_string(),
                    key: holder.key.to_string(),
                    issued: c.issued,
                    expires: c.expires,
                    redeemed_at: now,
                    channel: config.channels[channel].clone(),
                    decision_id: action.accept.act.decision_id,
                })
            }
        }
    }
}

/// Why `code`, which the index does not hold, is not found.
fn not_found(config: &Config, code: &str) -> RedeemError {
    let body = match code::parse(code) {
        Ok(body) => body,
        Err(e) => return e.into(),
    };
    let prefixes: Vec<&str> = config
        .decisions
        .offers
        .iter()
        .filter_map(|o| Some(o.coupon.as_ref()?.prefix.as_str()))
        .collect();
    if !prefixes.contains(&body.prefix) {
        let mut known = prefixes.clone();
        known.sort_unstable();
        known.dedup();
        return RedeemError::UnknownPrefix {
            code: code.into(),
            prefix: body.prefix.into(),
            known: if known.is_empty() {
                "none: no offer has a coupon".into()
            } else {
                known.join(", ")
            },
        };
    }
    RedeemError::Unknown { code: code.into() }
}

/// A redemption as an action on the coupon's holder: the coupon checked in the plan,
/// under the shard lock, then an accept of its offer ([`Given`]) that carries the code
/// (so its commit redeems that coupon, and its record logs it) and the order value.
pub(super) struct Redeemed<'a> {
    pub code: &'a str,
    pub accept: Given<'a>,
    /// Why the plan said no, unless the budget did.
    pub refused: Option<RedeemError>,
}

impl Redeemed<'_> {
    /// Why the coupon `c` cannot be redeemed on the accept's channel now, if it cannot.
    fn refusal(&self, config: &Config, c: &IssuedCoupon) -> Option<RedeemError> {
        let code = self.code.to_string();
        let channel = self.accept.act.channel;
        if let Some(r) = c.redeemed {
            return Some(RedeemError::AlreadyRedeemed {
                code,
                at: r.at,
                channel: config
                    .channels
                    .get(r.channel as usize)
                    .map_or("(unknown)".to_string(), |n| format!("`{n}`")),
                when: if r.at == 0 {
                    "(omnia did not keep when)".into()
                } else {
                    format!("at {} (Unix seconds)", r.at)
                },
            });
        }
        if c.expires <= self.accept.act.now {
            return Some(RedeemError::Expired {
                code,
                expired: c.expires,
            });
        }
        let def = config.decisions.offers[c.offer as usize].coupon.as_ref();
        let valid = def.map_or(u32::MAX, |d| d.channels);
        (valid & (1 << channel) == 0).then(|| RedeemError::WrongChannel {
            code,
            channel: config.channels[channel].clone(),
            valid: config
                .channels
                .iter()
                .enumerate()
                .filter(|(i, _)| valid & (1 << i) != 0)
                .map(|(_, n)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

impl Action<Offers> for Redeemed<'_> {
    fn plan(&mut self, customer: Customer<'_, Offers>) -> bool {
        let config = self.accept.engine.config();
        let found = customer
            .extension
            .offers
            .coupons
            .iter()
            .find(|c| c.code == self.code);
        self.refused = match found {
            None => Some(RedeemError::Unknown {
                code: self.code.into(),
            }),
            Some(c) => {
                // The coupon's offer, as the holder's state has it (a reload may have
                // moved its index since the index noted it).
                self.accept.act.offer = c.offer as usize;
                self.refusal(config, c)
            }
        };
        self.refused.is_none() && self.accept.plan(customer)
    }

    fn events(&self) -> &[Event] {
        self.accept.events()
    }

    fn encode(&self, body: &mut Vec<u8>) {
        self.accept.encode(body)
    }

    fn commit(&mut self, customer: Customer<'_, Offers>) {
        self.accept.commit(customer)
    }
}
