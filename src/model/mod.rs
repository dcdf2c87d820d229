//! The data model shared by the engine, the protocol and the client: events as sent,
//! profiles as shown, and decisions as channels ask for them. Nothing here does anything; it is what the layers talk about.

pub mod change;
pub mod decision;
pub mod event;
pub mod experiment;
pub mod export;
pub mod profile;
pub mod reload;

pub use change::{Cause, Change, ChangeKind, StreamedChange};
pub use event::{EventView, RawEvent, RawValue, ValueRef, MAX_MESSAGE_ID};
pub use profile::{CustomerId, ProfileView};
