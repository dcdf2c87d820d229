//! Actions: a change to one customer that is logged as one record and applied under one
//! shard lock, all of it or none of it.
//!
//! A decision that records impressions, and every feedback, changes two things: the
//! profile (the offer events rules read, such as `offer_impression`) and the customer's
//! offer state (caps, stickiness, cooldowns, coupons, budget tallies). Applied and
//! logged apart, a crash between the two halves would replay half an action. As an
//! [`Action`] both halves are one log record, appended under the customer's shard lock
//! just before the change, so a snapshot's cut of the shard holds both halves or
//! neither, and recovery replays both from the one record.
//!
//! Steps of [`Engine::act`], all under the customer's shard lock:
//!
//! 1. find the customer by its key; a customer omnia does not know yet is created, when
//!    the action asks for it, as a profile first seen at the action's time on its channel
//!    (under the identity mutex, so two actions cannot create two profiles for one key);
//! 2. [`Action::plan`]: read the profile and the extension's part (offer state), spend what must be spent
//!    (a budget unit), and say whether anything happens. `false` changes nothing: a
//!    profile created for it is removed again before anyone can see it;
//! 3. append [`Action::encode`]'s record to the journal (live only; replay appends
//!    nothing);
//! 4. apply [`Action::events`] to the profile, by ids (they were resolved once);
//! 5. [`Action::commit`]: the rest of the change, such as the offer state.
//!
//! Invariant: nothing observable changes before step 2 says yes, and nothing can fail
//! after it, so there is nothing to undo (no refunds).

use super::event::{Event, EventError, Key};
use super::profile::{FIRST_SEEN, LAST_SEEN};
use super::{journal, Customer, CustomerRef, Engine, Extension, Receipt, ShardState};

/// A change to one customer, applied by [`Engine::act`].
pub(crate) trait Action<X: Extension> {
    /// Under the lock, before anything changes: whether the action happens to this
    /// customer. May spend (a budget unit) and update state nothing reads outside the
    /// lock yet; must leave everything as it was when it says `false`.
    fn plan(&mut self, customer: Customer<'_, X>) -> bool;
    /// Profile events to apply to the customer after a yes; their keys are not read.
    fn events(&self) -> &[Event];
    /// The log record (its body) that replays the whole action.
    fn encode(&self, body: &mut Vec<u8>);
    /// Applies the rest of the change, after the events.
    fn commit(&mut self, customer: Customer<'_, X>);
}

/// Where an action runs: live (it is logged) or replayed from the log.
pub(crate) enum Mode<'a> {
    Live(&'a mut Receipt),
    Replay,
}

/// What [`Engine::act`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acted {
    /// The action was applied to a customer that existed.
    Applied,
    /// The action was applied to a profile created for it.
    Created,
    /// The plan said no: nothing changed. `created`: a profile was made for the action
    /// and removed again, so the customer is still unknown.
    Declined { created: bool },
    /// No customer has the key, and the action did not ask for one to be created.
    Unknown,
}

/// A new profile for an action: created at `time` (seconds) on `channel`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Create {
    pub time: u32,
    pub channel: usize,
}

impl<X: Extension> Engine<X> {
    /// Runs `action` on the customer `key` belongs to (see the module doc). With
    /// `create`, a key no customer has gets a new profile; without, it is
    /// [`Acted::Unknown`]. `context` is what the plan's rules read as `context.NAME`.
    pub(crate) fn act(
        &self,
        key: &Key,
        context: &[f64],
        create: Option<Create>,
        action: &mut dyn Action<X>,
        mut mode: Mode<'_>,
    ) -> Result<Acted, EventError> {
        let now = self.now_secs();
        if let Some((mut state, local)) = self.locate(&key.text, now) {
            return Ok(self.act_on(&mut state, local, context, action, &mut mode, false));
        }
        let Some(create) = create else {
            return Ok(Acted::Unknown);
        };
        let _identity = self.identity_writes.lock();
        // Under the identity mutex nobody else creates or merges: the key stays unknown,
        // or it became known just before we took the mutex.
        if self.identity.contains_key(&key.text) {
            return match self.locate_under_identity(&key.text, now) {
                Some((mut state, local)) => {
                    Ok(self.act_on(&mut state, local, context, action, &mut mode, false))
                }
                None => Ok(Acted::Unknown),
            };
        }
        let shard = self.home_shard(&key.text);
        let mut state = self.lock_at(shard, now);
        let Some(local) = state.allocate(&self.plan) else {
            let first = action.events().first();
            return Err(EventError::Full {
                event: first
                    .map_or("(an offer action)", |e| {
                        self.plan.config.events[e.event_type].name.as_str()
                    })
                    .to_string(),
                shard,
                capacity: state.capacity(),
            });
        };
        state.add_keys(&self.plan, local, [key.clone()]);
        let row = state.row_mut(&self.plan, local);
        row[FIRST_SEEN] = create.time;
        row[LAST_SEEN] = create.time;
        row[self.plan.layout.channel_last_seen(create.channel)] = create.time;
        let noted = state.changes_noted();
        state.set_why(match action.events().first() {
            Some(e) => super::changes::Why::Event(e.event_type as u32),
            None => super::changes::Why::Time,
        });
        state.evaluate_all(&self.plan, local);
        let acted = self.act_on(&mut state, local, context, action, &mut mode, true);
        if let Acted::Declined { .. } = acted {
            // Nobody saw it: the identity map never pointed at it, and the stream
            // never hears of it.
            debug_assert!(!self.identity.contains_key(&key.text));
            state.take(&self.plan, local, super::changes::Why::Forget);
            state.discard_changes(noted);
        } else {
            let generation = state.generation(local).unwrap_or(0);
            let id = state.id_base() + local;
            self.identity
                .insert(key.text.clone(), CustomerRef { id, generation }.pack());
        }
        Ok(acted)
    }

    /// Steps 2 to 5 of [`Engine::act`] on a customer whose shard is locked.
    fn act_on(
        &self,
        state: &mut ShardState<X>,
        local: u32,
        context: &[f64],
        action: &mut dyn Action<X>,
        mode: &mut Mode<'_>,
        created: bool,
    ) -> Acted {
        let shard = self.split(state.id_base()).0;
        let yes = action.plan(state.customer(&self.plan, local, context, shard));
        if !yes {
            state.settle(local);
            return Acted::Declined { created };
        }
        if let (Mode::Live(receipt), Some(journal)) = (mode, self.journal.get()) {
            receipt.logged(journal.append(journal::kind::ACTION, &mut |body| action.encode(body)));
        }
        for event in action.events() {
            state.apply(&self.plan, local, event, false);
        }
        self.events_applied.fetch_add(
            action.events().len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        action.commit(state.customer(&self.plan, local, context, shard));
        state.settle(local);
        if created {
            Acted::Created
        } else {
            Acted::Applied
        }
    }
}
