//! omnia: a real-time omnichannel decision engine.
//!
//! The library is the engine, usable in-process; the `omnia` binary wraps it in a
//! command line (and, later, a TCP server). Layers import downward:
//!
//! - [`config`]: the config file and the rule language, validated and compiled up front;
//! - [`engine`]: identity, sharded profiles, aggregates, segments as roaring bitmaps,
//!   scores, timers and queries;
//! - [`clock`]: the time source, injected so tests control time exactly;
//! - [`model`]: events as sent and profiles as shown, shared by every layer;
//! - [`protocol`]: the binary wire format (frames, codec, messages, error codes).

pub mod client;
pub mod clock;
pub mod config;
pub mod decide;
pub mod engine;
pub mod model;
pub mod protocol;
pub mod server;
pub mod store;
