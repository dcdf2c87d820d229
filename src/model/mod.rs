//! The data model shared by the engine, the protocol and the client: events as sent and
//! profiles as shown. Nothing here does anything; it is what the layers talk about.

pub mod event;
pub mod profile;

pub use event::{EventView, RawEvent, RawValue, ValueRef};
pub use profile::{CustomerId, ProfileView};
