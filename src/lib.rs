//! omnia: a real-time omnichannel decision engine.
//!
//! The library is the engine, usable in-process, with the server, the client and the
//! storage around it; the `omnia` binary wires them into `omnia serve`, `omnia ctl` and
//! `omnia check-config`. The modules, lowest first:
//!
//! - [`model`]: events as sent, profiles as shown, decisions as channels ask for them:
//!   what the layers talk about;
//! - [`clock`]: the time source, injected so tests control time exactly;
//! - [`codec`]: the byte codec every format is written with (protocol, log, snapshots),
//!   the event layout they share, and canonical fingerprints;
//! - [`config`]: the config file and the rule language, validated and compiled up front;
//! - [`protocol`]: the binary wire format (frames, messages, error codes) and the
//!   bounds on JSON bodies; it knows nothing of the engine;
//! - [`engine`]: identity, sharded profiles, aggregates, segments as roaring bitmaps,
//!   scores, timers and queries;
//! - [`decide`]: offers, constraints, arbitration, budgets, experiments, and the offer
//!   state each shard keeps per customer as the engine's extension;
//! - [`node`]: the engine with the decider beside it, what requests run on;
//! - [`store`]: the data directory, the write-ahead log, snapshots, recovery and reload;
//! - [`server`] and [`client`]: the TCP server that joins the protocol to the engine,
//!   and the async client;
//! - [`http`]: the HTTP edge beside the server: the Segment HTTP Tracking API and
//!   health probes, on the same node.
//!
//! Layers import downward only. The engine holds per customer an `engine::Extension`
//! it does not look inside (decide's offer state), so it never imports decide; its log
//! is its own `engine::Journal` trait, which the store's `Wal` implements; it writes
//! bytes with `codec`, never the protocol.

pub mod client;
pub mod clock;
pub mod codec;
pub mod config;
pub mod decide;
pub mod engine;
pub mod http;
pub mod model;
pub mod node;
pub mod protocol;
pub mod security;
pub mod server;
pub mod store;
pub mod tls;
