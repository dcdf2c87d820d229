//! Extensions: state a layer above the engine keeps per customer inside each shard.
//!
//! Why inside the shard: a decision reads a customer's offer history and changes it in
//! the same critical section as the profile (see `action`), a snapshot's cut of a shard
//! must hold the offer state of exactly the changes it holds, and a merge must move a
//! customer's offer history with its profile. All of that is the shard's lock and the
//! shard's life cycle, so the state lives in the shard. But what it *is* belongs to the
//! layer that uses it (`decide::Offers`): the engine holds an [`Extension`] it does not
//! look inside, and calls it at each point of a shard's life:
//!
//! - an action runs: [`Extension::part`] lends the customer's part to the action, and
//!   [`Extension::settle`] follows, so an extension can drop what is empty;
//! - an event that is one of the config's goals is applied to a customer:
//!   [`Extension::goal`] hears of it (decide counts it for experiments);
//! - a customer is merged into another: [`Extension::take`] from the one that goes,
//!   [`Extension::absorb`] into the survivor; a freed slot is [`Extension::take`]n too;
//! - a snapshot cuts the shard: [`Extension::cut`] copies the part under the lock,
//!   [`Extension::encode`] writes it at the end of the shard's image later;
//! - a snapshot is loaded: [`Extension::decode`] reads it back, checked against the config;
//! - a reload moves the shard into a new config: [`Extension::remap`] says how the old
//!   config's indexes map into the new one's, [`Extension::convert`] moves the part.
//!
//! Invariant the engine keeps: every call on a shard's extension is made with that
//! shard's lock held, and a slot's part is taken before the slot is reused.
//!
//! `()` is the extension of an engine that keeps nothing beside its profiles.

use crate::codec::{DecodeError, Reader};
use crate::config::Config;

/// State kept per customer in each shard by a layer above the engine (see the module doc).
pub trait Extension: Send + Sized + 'static {
    /// One customer's part, on its way from a merged-away customer to the survivor.
    type Customer: Send;
    /// One customer's part lent to an action, with whatever shard-wide state it updates.
    type Part<'a>;
    /// The shard's part as a snapshot's cut copied it.
    type Cut: Send;
    /// How one config's indexes map into another's.
    type Remap;

    /// An empty extension for a new shard under `config`.
    fn new(config: &Config) -> Self;
    /// The part of the customer in slot `local`, for an action to read and change.
    fn part(&mut self, local: u32) -> Self::Part<'_>;
    /// Called after every [`Extension::part`]: the action is done with slot `local`.
    fn settle(&mut self, local: u32);
    /// Removes the part of the customer in slot `local`, which is leaving the shard.
    fn take(&mut self, local: u32) -> Option<Self::Customer>;
    /// Folds `from`, taken from a customer merged into the one in slot `local`, into it.
    fn absorb(&mut self, local: u32, from: Self::Customer);
    /// An event that counts for goal `goal` of `config` (`Config::goals`, matched by
    /// type and filter) was applied to the customer in slot `local`, at `at` (seconds),
    /// with `value` (the goal's value property, 0 without one or when it is missing).
    fn goal(&mut self, config: &Config, local: u32, goal: usize, at: u32, value: f64) {
        let _ = (config, local, goal, at, value);
    }
    /// A copy of the shard's part for a snapshot.
    fn cut(&self) -> Self::Cut;
    /// Writes a cut at the end of the shard's image.
    fn encode(cut: &Self::Cut, out: &mut Vec<u8>);
    /// Reads what [`Extension::encode`] wrote, every index checked against `config`;
    /// `slots` is the number of slots the shard has.
    fn decode(r: &mut Reader<'_>, config: &Config, slots: usize) -> Result<Self, DecodeError>;
    /// How `from`'s indexes map into `to`'s.
    fn remap(from: &Config, to: &Config) -> Self::Remap;
    /// This part, written under `from`'s config, in `map`'s target config.
    fn convert(self, map: &Self::Remap, to: &Config) -> Self;
}

/// No extension: an engine of profiles alone.
impl Extension for () {
    type Customer = ();
    type Part<'a> = ();
    type Cut = ();
    type Remap = ();

    fn new(_: &Config) -> Self {}
    fn part(&mut self, _: u32) -> Self::Part<'_> {}
    fn settle(&mut self, _: u32) {}
    fn take(&mut self, _: u32) -> Option<()> {
        None
    }
    fn absorb(&mut self, _: u32, _: ()) {}
    fn cut(&self) {}
    fn encode(_: &(), _: &mut Vec<u8>) {}
    fn decode(_: &mut Reader<'_>, _: &Config, _: usize) -> Result<(), DecodeError> {
        Ok(())
    }
    fn remap(_: &Config, _: &Config) {}
    fn convert(self, _: &(), _: &Config) -> Self {}
}
