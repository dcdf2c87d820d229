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
//! Image layout, at the end of the shard's image (little-endian; snapshot format 4 and
//! before ended after the budget tallies, format 5 adds the exposures):
//!
//! ```text
//! u32 customers with offer state, sorted by slot, each: u32 slot + offer state
//!     (see `CustomerOffers::encode`)
//! u32 offers, each: u32 budget period, u32 units spent in it
//! u32 customers with exposures, sorted by slot, each: u32 slot, u8 exposures, each
//!     (u8 experiment, u32 exposed at, u8 goals, goals × (u32 conversions, f64 value))
//! ```
//!
//! The exposures are apart from the rest of a customer's offer state so that the bytes
//! before them are exactly what earlier formats wrote: an image that ends after the
//! budget tallies (format 4 and before) has no exposures.

use bytes::BufMut;

use super::state::{ArmTally, CustomerOffers, OfferRemap};
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
    /// The exposed and converted customers per experiment and arm, kept as customers
    /// change (the invariant is [`ArmTally`]'s).
    tally: ArmTally,
}

/// One customer's offer state lent to an action, with the shard's budget tallies.
pub struct OfferPart<'a> {
    pub(crate) offers: &'a mut CustomerOffers,
    pub(crate) budget_spent: &'a mut [(u32, u32)],
    tally: &'a mut ArmTally,
}

impl OfferPart<'_> {
    /// The customer's first exposure in `experiment` (see [`CustomerOffers::expose`]),
    /// counted in the shard's tally.
    pub(crate) fn expose(&mut self, experiment: usize, at: u32, goals: usize) {
        self.tally.add(self.offers, -1);
        self.offers.expose(experiment, at, goals);
        self.tally.add(self.offers, 1);
    }
}

/// A shard's offer state as a snapshot copied it.
pub struct OffersCut {
    customers: Vec<(u32, CustomerOffers)>,
    budget_spent: Vec<(u32, u32)>,
}

impl Offers {
    /// The offer state of every customer of the shard that has one, in no order.
    pub(crate) fn customers(&self) -> impl Iterator<Item = &CustomerOffers> {
        self.customers.values()
    }

    /// The offer state of every customer of the shard that has one, with its slot.
    pub(crate) fn customers_by_slot(&self) -> impl Iterator<Item = (u32, &CustomerOffers)> {
        self.customers.iter().map(|(&local, c)| (local, c))
    }

    /// Per offer: `(period, units)` of its budget spent by this shard's customers.
    pub fn budget_spent(&self) -> &[(u32, u32)] {
        &self.budget_spent
    }

    pub(crate) fn tally(&self) -> &ArmTally {
        &self.tally
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
            tally: ArmTally::new(config),
        }
    }

    fn part(&mut self, local: u32) -> OfferPart<'_> {
        OfferPart {
            offers: self.customers.entry(local).or_default(),
            budget_spent: &mut self.budget_spent,
            tally: &mut self.tally,
        }
    }

    fn settle(&mut self, local: u32) {
        if self.customers.get(&local).is_some_and(|o| o.is_empty()) {
            self.customers.remove(&local);
        }
    }

    fn take(&mut self, local: u32) -> Option<CustomerOffers> {
        let taken = self.customers.remove(&local)?;
        self.tally.add(&taken, -1);
        Some(taken)
    }

    /// `from` was taken from its shard (and its tally) before.
    fn absorb(&mut self, local: u32, from: CustomerOffers) {
        let survivor = self.customers.entry(local).or_default();
        self.tally.add(survivor, -1);
        survivor.absorb(from);
        self.tally.add(survivor, 1);
    }

    fn goal(&mut self, config: &Config, local: u32, goal: usize, at: u32, value: f64) {
        // Only a customer with offer state can have been exposed.
        if let Some(customer) = self.customers.get_mut(&local) {
            if customer.exposures.is_empty() {
                return;
            }
            self.tally.add(customer, -1);
            customer.goal_reached(config, goal, at, value);
            self.tally.add(customer, 1);
        }
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
        let exposed = cut
            .customers
            .iter()
            .filter(|(_, o)| !o.exposures.is_empty());
        out.put_u32_le(exposed.clone().count() as u32);
        for (local, offers) in exposed {
            out.put_u32_le(*local);
            // At most one per experiment, and experiments are at most 255.
            out.push(offers.exposures.len() as u8);
            for x in &offers.exposures {
                out.push(x.experiment);
                out.put_u32_le(x.at);
                out.push(x.goals.len() as u8);
                for tally in x.goals.iter() {
                    out.put_u32_le(tally.conversions);
                    out.put_f64_le(tally.value);
                }
            }
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
        if r.remaining() > 0 {
            decode_exposures(r, config, slots, &mut offers)?;
        }
        offers.tally = ArmTally::recount(config, offers.customers.values());
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
        new.tally = ArmTally::recount(to, new.customers.values());
        new
    }
}

/// The exposures section of an image (snapshot format 5 on), every index checked.
fn decode_exposures(
    r: &mut Reader<'_>,
    config: &Config,
    slots: usize,
    offers: &mut Offers,
) -> Result<(), DecodeError> {
    let experiments = &config.decisions.experiments;
    for _ in 0..r.u32(&named("customers with exposures"))? {
        let local = r.u32(&named("slot"))?;
        if local as usize >= slots {
            return Err(r.invalid("slot", format!("slot {local} of {slots}")));
        }
        let customer = offers.customers.entry(local).or_default();
        for _ in 0..r.u8(&named("exposures"))? {
            let experiment = r.u8(&named("experiment"))?;
            let Some(def) = experiments.get(experiment as usize) else {
                return Err(r.invalid(
                    "experiment",
                    format!("experiment {experiment} of {}", experiments.len()),
                ));
            };
            let at = r.u32(&named("exposed at"))?;
            let goals = r.u8(&named("goals"))? as usize;
            if goals != def.goals.len() {
                return Err(r.invalid(
                    "goals",
                    format!(
                        "{goals} goals, experiment `{}` has {}",
                        def.name,
                        def.goals.len()
                    ),
                ));
            }
            let mut tallies = Vec::with_capacity(goals);
            for _ in 0..goals {
                tallies.push(super::state::GoalTally {
                    conversions: r.u32(&named("conversions"))?,
                    value: r.f64(&named("goal value"))?,
                });
            }
            if customer.exposure(experiment as usize).is_some() {
                return Err(r.invalid(
                    "experiment",
                    format!("two exposures in experiment `{}`", def.name),
                ));
            }
            customer.exposures.push(super::state::Exposure {
                experiment,
                at,
                goals: tallies.into_boxed_slice(),
            });
            customer.exposures.sort_by_key(|x| x.experiment);
        }
    }
    Ok(())
}
