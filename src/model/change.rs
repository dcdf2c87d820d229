//! A segment membership change: a customer entered or left a segment, when and why.
//!
//! The engine records one for every flip of a segment the config puts on the change
//! stream (`[triggers] stream`, see `config::TriggerSettings`); the store keeps them in
//! order with a position each, and subscribers (SUBSCRIBE) read them from a position
//! on. A subscriber that applies every change of a segment, in position order, to an
//! empty set holds the segment's members: [`ChangeKind::Reset`] empties the set first
//! when a segment's stream starts over (it was not recorded for a while).
//!
//! A change names its customer by id and slot generation, not by key, so the stream
//! holds no key in clear; the keys are looked up when a change is delivered, and a
//! customer merged away or forgotten since has none.

use super::CustomerId;

/// What happened to the membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// The customer became a member.
    Enter,
    /// The customer stopped being a member.
    Exit,
    /// The segment's stream starts over: forget every member, the enters that follow
    /// name the members (customer 0, generation 0).
    Reset,
}

impl ChangeKind {
    pub fn code(self) -> u8 {
        match self {
            ChangeKind::Enter => 1,
            ChangeKind::Exit => 2,
            ChangeKind::Reset => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<ChangeKind> {
        Some(match code {
            1 => ChangeKind::Enter,
            2 => ChangeKind::Exit,
            3 => ChangeKind::Reset,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::Enter => "enter",
            ChangeKind::Exit => "exit",
            ChangeKind::Reset => "reset",
        }
    }
}

/// Why a membership changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// An event applied to the customer (its type is in [`Change::event`]); an
    /// impression or a feedback a decision recorded is an event too.
    Event,
    /// Time alone: a window moved on, a `since` grew.
    Time,
    /// Two profiles merged: the one merged away leaves its segments, the survivor's
    /// segments are evaluated again.
    Merge,
    /// The customer was forgotten (FORGET, or `[privacy] retention`).
    Forget,
    /// The stream was brought back in line with the segments after a start or a
    /// reload: a change the log did not hold (lost in a crash, made by a new rule or a
    /// segment newly on the stream).
    Recovery,
}

impl Cause {
    pub fn code(self) -> u8 {
        match self {
            Cause::Event => 1,
            Cause::Time => 2,
            Cause::Merge => 3,
            Cause::Forget => 4,
            Cause::Recovery => 5,
        }
    }

    pub fn from_code(code: u8) -> Option<Cause> {
        Some(match code {
            1 => Cause::Event,
            2 => Cause::Time,
            3 => Cause::Merge,
            4 => Cause::Forget,
            5 => Cause::Recovery,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Cause::Event => "event",
            Cause::Time => "time",
            Cause::Merge => "merge",
            Cause::Forget => "forget",
            Cause::Recovery => "recovery",
        }
    }
}

/// One membership change, as the change stream records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// When it happened: the engine's time, in seconds since the Unix epoch.
    pub time: u32,
    pub customer: CustomerId,
    /// The generation of the customer's slot: a later customer in the same slot has
    /// another.
    pub generation: u32,
    pub segment: String,
    pub kind: ChangeKind,
    pub cause: Cause,
    /// The event type, when the cause is an event; else empty.
    pub event: String,
}

/// A change as a subscriber receives it: its position in the stream and the keys the
/// customer is known by when it is sent (none once the customer was forgotten or
/// merged into another: the change still counts, the person is not named).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamedChange {
    pub position: u64,
    pub time: u32,
    pub customer: CustomerId,
    pub segment: String,
    pub kind: ChangeKind,
    pub cause: Cause,
    pub event: String,
    pub keys: Vec<String>,
}
