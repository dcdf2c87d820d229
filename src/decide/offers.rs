//! [`Offers`]: decide's extension of a shard (see `engine::extension`), the offer state
//! of the shard's customers and the budget units they spent.
//!
//! The engine holds one `Offers` per shard under the shard's lock and never looks
//! inside; this module says what it is, how it is written in the shard's snapshot image
//! and how it moves into another config at a reload.
//!
//! Invariants: only customers with offer history (see `state`) keep an entry in
//! `customers` once an action has settled; `budget_spent` has one entry per offer of the
//! config the shard was built or converted for.
//!
//! Image layout, at the end of the shard's image (little-endian, data directory format
//! 3; the same bytes formats 1 and 2 wrote):
//!
//! ```text
//! u32 customers with offer state, sorted by slot, each: u32 slot + offer state
//!     (see `CustomerOffers::encode`)
//! u32 offers, each: u32 budget period, u32 units spent in it
//! ```

use bytes::BufMut;

use super::state::{CustomerOffers, OfferRemap};
use crate::codec::{named, DecodeError, Reader};
use crate::config::Config;
use crate::engine::Extension;

/// Offer state of one shard's customers.
pub struct Offers {
    /// Offer history of the customers that have one, by slot.
    customers: std::collections::HashMap<u32, CustomerOffers, ahash::RandomState>,
    /// Per offer: `(period, units)` of its budget spent by this shard's customers, so a
    /// snapshot of the shard carries exactly the spending of the changes it holds (the
    /// budget itself is global, see `budget`).
    budget_spent: Vec<(u32, u32)>,
}

/// One customer's offer state lent to an action, with the shard's budget tallies.
pub struct OfferPart<'a> {
    pub(crate) offers: &'a mut CustomerOffers,
    pub(crate) budget_spent: &'a mut [(u32, u32)],
}

/// A shard's offer state as a snapshot copied it.
pub struct OffersCut {
    customers: Vec<(u32, CustomerOffers)>,
    budget_spent: Vec<(u32, u32)>,
}

impl Offers {
    /// Per offer: `(period, units)` of its budget spent by this shard's customers.
    pub fn budget_spent(&self) -> &[(u32, u32)] {
        &self.budget_spent
    }
}

impl Extension for Offers {
    type Customer = CustomerOffers;
    type Part<'a> = OfferPart<'a>;
    type Cut = OffersCut;
    type Remap = OfferRemap;

    fn new(config: &Config) -> Offers {
        Offers {
            customers: Default::default(),
            budget_spent: vec![(0, 0); config.decisions.offers.len()],
        }
    }

    fn part(&mut self, local: u32) -> OfferPart<'_> {
        OfferPart {
            offers: self.customers.entry(local).or_default(),
            budget_spent: &mut self.budget_spent,
        }
    }

    fn settle(&mut self, local: u32) {
        if self.customers.get(&local).is_some_and(|o| o.is_empty()) {
            self.customers.remove(&local);
        }
    }

    fn take(&mut self, local: u32) -> Option<CustomerOffers> {
        self.customers.remove(&local)
    }

    fn absorb(&mut self, local: u32, from: CustomerOffers) {
        self.customers.entry(local).or_default().absorb(from);
    }

    fn cut(&self) -> OffersCut {
        let mut customers: Vec<(u32, CustomerOffers)> = self
            .customers
            .iter()
            .filter(|(_, o)| !o.is_empty())
            .map(|(l, o)| (*l, o.clone()))
            .collect();
        customers.sort_by_key(|(l, _)| *l);
        OffersCut {
            customers,
            budget_spent: self.budget_spent.clone(),
        }
    }

    fn encode(cut: &OffersCut, out: &mut Vec<u8>) {
        out.put_u32_le(cut.customers.len() as u32);
        for (local, offers) in &cut.customers {
            out.put_u32_le(*local);
            offers.encode(out);
        }
        out.put_u32_le(cut.budget_spent.len() as u32);
        for &(period, units) in &cut.budget_spent {
            out.put_u32_le(period);
            out.put_u32_le(units);
        }
    }

    fn decode(r: &mut Reader<'_>, config: &Config, slots: usize) -> Result<Offers, DecodeError> {
        let mut offers = Offers::new(config);
        for _ in 0..r.u32(&named("customers with offer state"))? {
            let local = r.u32(&named("slot"))?;
            if local as usize >= slots {
                return Err(r.invalid("slot", format!("slot {local} of {slots}")));
            }
            offers
                .customers
                .insert(local, CustomerOffers::decode(r, config)?);
        }
        let n = r.u32(&named("budget offers"))? as usize;
        if n != offers.budget_spent.len() {
            return Err(r.invalid(
                "budget offers",
                format!("{n} offers, this config has {}", offers.budget_spent.len()),
            ));
        }
        for spent in &mut offers.budget_spent {
            *spent = (
                r.u32(&named("budget period"))?,
                r.u32(&named("budget units"))?,
            );
        }
        Ok(offers)
    }

    fn remap(from: &Config, to: &Config) -> OfferRemap {
        OfferRemap::new(from, to)
    }

    fn convert(self, map: &OfferRemap, to: &Config) -> Offers {
        let mut new = Offers::new(to);
        for (o, spent) in self.budget_spent.iter().enumerate() {
            if let Some(n) = map.offers[o] {
                new.budget_spent[n as usize] = *spent;
            }
        }
        for (local, state) in self.customers {
            let converted = state.remap(map);
            if !converted.is_empty() {
                new.customers.insert(local, converted);
            }
        }
        new
    }
}
