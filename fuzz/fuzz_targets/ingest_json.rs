//! Untrusted JSON from trackers: conversion of Segment Spec events, then resolution
//! against the default config. Errors are fine; panics are bugs.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use omnia::config::Config;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| Config::embedded_default().expect("default config"))
}

fuzz_target!(|data: &[u8]| {
    let config = config();
    let mut body = data.to_vec();
    if let Ok(events) = omnia::server::cmd::ingest_json::parse(config, &mut body, 1_772_445_600_000) {
        for event in events.iter().flatten() {
            let _ = omnia::engine::event::resolve(config, &event);
        }
    }
    // No row holds what resolving interned: free it, or the harness itself grows.
    config.interner.sweep();
});
