//! Untrusted text from a till or a checkout: a coupon code as REDEEM receives it. Reading
//! it back must never panic, and a code that reads as well formed is exactly what
//! `code::format` makes of its parts (so nothing is lost or invented in between).
#![no_main]

use libfuzzer_sys::fuzz_target;
use omnia::decide::code;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let normal = code::normalize(text);
    if let Ok(body) = code::parse(&normal) {
        assert_eq!(code::format(body.prefix, body.length, body.value), normal);
    }
});
