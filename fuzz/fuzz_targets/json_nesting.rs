//! JSON built to be deep: the first bytes choose a nesting depth (up to 200,000) and the
//! brackets to nest with, the rest is spliced in at the bottom. Every INGEST_JSON body
//! shape (a batch, an array, one event, one NDJSON line among others) must be answered
//! with an error or events, never with a stack overflow.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use omnia::config::Config;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| Config::embedded_default().expect("default config"))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let depth = (u32::from_le_bytes([data[0], data[1], data[2], 0]) % 200_001) as usize;
    let (open, close): (&[u8], &[u8]) = match data[3] % 4 {
        0 => (b"[", b"]"),
        1 => (b"{\"p\":", b"}"),
        2 => (b"[{\"x\":", b"}]"),
        _ => (b"{\"properties\":{\"x\":[", b"]}}"),
    };
    let mut body = Vec::with_capacity(depth * (open.len() + close.len()) + data.len() + 128);
    let (shape, rest) = (data[3] / 4 % 3, &data[4..]);
    match shape {
        0 => body.extend_from_slice(b"{\"batch\":[{\"type\":\"track\",\"event\":\"page_view\",\"userId\":\"1\",\"context\":{\"channel\":\"web\"},\"properties\":"),
        1 => body.extend_from_slice(b"{\"type\":\"track\",\"event\":\"page_view\",\"userId\":\"1\",\"context\":{\"channel\":\"web\"}}\n"),
        _ => {}
    }
    for _ in 0..depth {
        body.extend_from_slice(open);
    }
    body.extend_from_slice(rest);
    for _ in 0..depth {
        body.extend_from_slice(close);
    }
    if shape == 0 {
        body.extend_from_slice(b"}]}");
    }
    if let Ok(events) = omnia::server::cmd::ingest_json::parse(config(), &mut body, 1_772_445_600_000) {
        for event in events.iter().flatten() {
            let _ = omnia::engine::event::resolve(config(), &event);
        }
    }
    // No row holds what resolving interned: free it, or the harness itself grows.
    config().interner.sweep();
});
