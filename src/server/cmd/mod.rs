//! One file per command: each turns a decoded request into a response against the
//! shared state. Adding an operation is one new file and one match arm in the handler.

pub mod decide;
pub mod export;
pub mod forget;
pub mod hello;
pub mod ingest;
pub mod ingest_json;
pub mod profile;
pub mod redeem;
pub mod reload;
pub mod segment;
pub mod stats;
pub mod subscribe;
