//! Coupon codes: how one is made unique, how a typed or scanned one is checked.
//!
//! A code is the offer's prefix, a dash, `length` characters of body and one check
//! character, all from Crockford's base32 alphabet (the digits and the capitals without
//! I, L, O and U, so that nothing is misread at a till, and every character is in Code 39
//! and Code 128 barcodes): `THANKS-7K2M9QXRT4C` for the default length of 10.
//!
//! **Unique by construction.** The body is `P(s)`, where `s` is a sequence number and `P`
//! a keyed permutation of the numbers of `5 × length` bits ([`Permutation`]: a
//! four-round Feistel network whose rounds are XXH3 under secret seeds, cycle-walking
//! when the width is odd; the seeds come from the data directory's secret by a BLAKE2b
//! MAC, [`key_from`]). A permutation maps distinct numbers to distinct numbers, so codes are
//! unique as long as `s` never repeats for a length, and they do not look like a
//! sequence: without the key, one code says nothing about the next. `s` is the seconds
//! since 2026-01-01 in its top 30 bits and a counter below them ([`Sequencer`]): it only
//! grows within a process, and a restarted one starts at its clock's second and above
//! every code it still holds, so an earlier code is never made again (a clock set back
//! across a restart by more than a coupon's validity is the one way to repeat; 30 bits
//! of seconds last until 2060). The index of issued codes (`coupons`) checks each new
//! code besides.
//!
//! **The check character** `c` makes `Σ vᵢ·αⁿ⁻ⁱ = 0` over the body and `c`, computed in
//! GF(32) (polynomial x⁵ + x² + 1, α = x, which generates the field's 31 non-zero
//! elements). Every weight is non-zero, so a single changed character changes the sum;
//! neighbours have weights that differ by a factor α ≠ 1, so swapping two different
//! neighbouring characters changes it too. Both mistakes are caught always, not most of
//! the time (Luhn mod N misses one swap, of the first and last characters of the
//! alphabet).
//!
//! Nothing here knows customers or offers: [`parse`] checks the form of a code and
//! [`Body`] reads it back, for the index and the errors a till sees.

use blake2::digest::{KeyInit, Mac};
use compact_str::CompactString;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The 32 characters of a code, in value order.
pub const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

pub use crate::config::{COUPON_LENGTHS as LENGTHS, DEFAULT_COUPON_LENGTH as DEFAULT_LENGTH};

/// 2026-01-01 00:00 UTC, in Unix seconds: where a sequence's seconds count from.
const EPOCH: u32 = 1_767_225_600;
const SECOND_BITS: u32 = 30;

/// The value of a code character, if it is one.
fn value(ch: u8) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == ch).map(|v| v as u8)
}

/// `x · α` in GF(32) with x⁵ = x² + 1.
fn times_alpha(x: u8) -> u8 {
    let y = x << 1;
    if y & 0x20 != 0 {
        y ^ 0x25
    } else {
        y
    }
}

/// The weighted sum of `values` (Horner's rule: each step multiplies by α and adds).
fn fold(values: impl IntoIterator<Item = u8>) -> u8 {
    values.into_iter().fold(0, |f, v| times_alpha(f) ^ v)
}

/// The check character of a body's values: the one that makes the fold zero.
fn check_of(values: impl IntoIterator<Item = u8>) -> u8 {
    times_alpha(fold(values))
}

/// A keyed permutation of the numbers below `2^width`.
pub struct Permutation {
    /// One seed per Feistel round, from the key.
    seeds: [u64; 4],
    /// Bits of each Feistel half: `width` rounded up to even, halved.
    half: u32,
    width: u32,
}

impl Permutation {
    /// The permutation of `width`-bit numbers (2 to 62) under `key`.
    pub fn new(key: &[u8; 32], width: u32) -> Permutation {
        debug_assert!((2..=62).contains(&width));
        let seed = |i: usize| u64::from_le_bytes(key[8 * i..8 * i + 8].try_into().unwrap());
        Permutation {
            seeds: [seed(0), seed(1), seed(2), seed(3)],
            half: width.div_ceil(2),
            width,
        }
    }

    fn round(&self, round: usize, x: u64) -> u64 {
        xxh3_64_with_seed(&x.to_le_bytes(), self.seeds[round]) & ((1 << self.half) - 1)
    }

    fn forward(&self, x: u64) -> u64 {
        let mask = (1 << self.half) - 1;
        let (mut l, mut r) = (x >> self.half, x & mask);
        for i in 0..4 {
            (l, r) = (r, l ^ self.round(i, r));
        }
        (l << self.half) | r
    }

    fn backward(&self, y: u64) -> u64 {
        let mask = (1 << self.half) - 1;
        let (mut l, mut r) = (y >> self.half, y & mask);
        for i in (0..4).rev() {
            (l, r) = (r ^ self.round(i, l), l);
        }
        (l << self.half) | r
    }

    /// The image of `x` (below `2^width`). With an odd width the network permutes one
    /// bit more, and is applied again while the result is out of range (cycle-walking):
    /// still a permutation of the range, about two rounds on average.
    pub fn apply(&self, x: u64) -> u64 {
        let mut y = self.forward(x);
        while y >> self.width != 0 {
            y = self.forward(y);
        }
        y
    }

    /// The `x` whose image is `y`.
    pub fn invert(&self, y: u64) -> u64 {
        let mut x = self.backward(y);
        while x >> self.width != 0 {
            x = self.backward(x);
        }
        x
    }
}

/// The code of body value `body` (below `2^(5 × length)`) with `prefix`.
pub fn format(prefix: &str, length: u8, body: u64) -> CompactString {
    let values: Vec<u8> = (0..length)
        .rev()
        .map(|i| ((body >> (5 * i as u32)) & 31) as u8)
        .collect();
    let mut code = CompactString::with_capacity(prefix.len() + length as usize + 2);
    code.push_str(prefix);
    code.push('-');
    for &v in &values {
        code.push(ALPHABET[v as usize] as char);
    }
    code.push(ALPHABET[check_of(values) as usize] as char);
    code
}

/// What is wrong with the form of a code, before anything looks it up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodeError {
    #[error("`{0}` is not a coupon code: a code is a prefix, a dash and its characters, like THANKS-7K2M9QXRT4C")]
    NoDash(String),
    #[error("`{code}` has `{found}` at character {position} after the dash, which no code holds (codes use 0-9 and A-Z without I, L, O and U); read it again")]
    Character {
        code: String,
        found: char,
        position: usize,
    },
    #[error("`{code}` is mistyped: its check character does not match (a character is wrong, or two neighbours are swapped); read it again")]
    Check { code: String },
}

/// A code in normal form: trimmed, capitals.
pub fn normalize(code: &str) -> String {
    code.trim().to_ascii_uppercase()
}

/// A code in normal form split into prefix and body, its characters and check
/// character verified. The body is returned as text and value (without the check).
pub fn parse(code: &str) -> Result<Body<'_>, CodeError> {
    let Some((prefix, rest)) = code.rsplit_once('-') else {
        return Err(CodeError::NoDash(code.into()));
    };
    let (mut sum, mut body) = (0u8, 0u64);
    for (i, ch) in rest.bytes().enumerate() {
        let Some(v) = value(ch) else {
            return Err(CodeError::Character {
                code: code.into(),
                found: rest[i..].chars().next().unwrap_or('?'),
                position: i + 1,
            });
        };
        sum = times_alpha(sum) ^ v;
        if i + 1 < rest.len() {
            body = (body << 5) | v as u64;
        }
    }
    if rest.len() < 2 || rest.len() > 13 || sum != 0 {
        return Err(CodeError::Check { code: code.into() });
    }
    Ok(Body {
        prefix,
        length: (rest.len() - 1) as u8,
        value: body,
    })
}

/// A well-formed code, read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Body<'a> {
    pub prefix: &'a str,
    /// Characters before the check character.
    pub length: u8,
    pub value: u64,
}

/// The sequence numbers codes are made from, one per length: each only grows, and
/// starts at the clock's second.
pub struct Sequencer {
    next: [std::sync::atomic::AtomicU64; 5],
}

/// Every sequence number of a length is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "every coupon code of length {0} is issued; choose a longer `length` for the offer's coupon"
)]
pub struct Exhausted(pub u8);

impl Default for Sequencer {
    fn default() -> Self {
        Sequencer::new()
    }
}

impl Sequencer {
    pub fn new() -> Sequencer {
        Sequencer {
            next: Default::default(),
        }
    }

    fn slot(&self, length: u8) -> &std::sync::atomic::AtomicU64 {
        &self.next[(length - LENGTHS.start()) as usize]
    }

    /// The next sequence number for codes of `length`, at `now` (Unix seconds).
    pub fn next(&self, length: u8, now: u32) -> Result<u64, Exhausted> {
        let width = 5 * length as u32;
        let base = (now.saturating_sub(EPOCH) as u64) << (width - SECOND_BITS);
        let prior = self
            .slot(length)
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |n| Some(n.max(base) + 1),
            )
            .unwrap_or_else(|n| n);
        let s = prior.max(base);
        if s >> width != 0 {
            return Err(Exhausted(length));
        }
        Ok(s)
    }

    /// A code of `length` made from `sequence` exists: later ones come after it.
    pub fn saw(&self, length: u8, sequence: u64) {
        self.slot(length).fetch_max(
            sequence.saturating_add(1),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The next sequence numbers, per length (for a reload's new decider).
    pub fn take_from(&self, other: &Sequencer) {
        for (mine, theirs) in self.next.iter().zip(&other.next) {
            mine.fetch_max(
                theirs.load(std::sync::atomic::Ordering::Relaxed),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}

/// The key codes are permuted under, from the data directory's secret: a BLAKE2b MAC of
/// a fixed label, so that the secret's other use (the suppression list) and this one
/// never share a value.
pub fn key_from(secret: &[u8; 32]) -> [u8; 32] {
    let mut mac =
        <blake2::Blake2bMac<blake2::digest::consts::U32> as KeyInit>::new_from_slice(secret)
            .expect("a 32-byte key fits");
    mac.update(b"omnia coupon codes v1");
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn code(length: u8, body: u64) -> String {
        format("THANKS", length, body).to_string()
    }

    #[test]
    fn a_code_reads_back_as_its_prefix_length_and_body() {
        let c = code(10, 0x3_1234_5678);
        assert_eq!(c.len(), "THANKS-".len() + 11);
        let b = parse(&c).unwrap();
        assert_eq!((b.prefix, b.length, b.value), ("THANKS", 10, 0x3_1234_5678));
        // Zero is a body like any other.
        assert_eq!(parse(&code(8, 0)).unwrap().value, 0);
    }

    #[test]
    fn forms_that_are_not_codes_say_what_is_wrong() {
        assert_eq!(
            parse("THANKS7K2M").unwrap_err().to_string(),
            "`THANKS7K2M` is not a coupon code: a code is a prefix, a dash and its characters, like THANKS-7K2M9QXRT4C"
        );
        let c = code(10, 99).replace('-', "-I");
        assert!(matches!(
            parse(&c),
            Err(CodeError::Character {
                found: 'I',
                position: 1,
                ..
            })
        ));
        assert!(matches!(parse("THANKS-"), Err(CodeError::Check { .. })));
    }

    #[test]
    fn the_permutation_is_undone_by_its_inverse_at_every_width() {
        for width in [40, 45, 50, 55, 60] {
            let p = Permutation::new(&KEY, width);
            for x in (0..2000u64).chain([(1 << width) - 1]) {
                let y = p.apply(x);
                assert!(
                    y >> width == 0,
                    "width {width}: {x} maps to {y}, out of range"
                );
                assert_eq!(p.invert(y), x, "width {width}");
            }
        }
    }

    #[test]
    fn another_key_makes_other_codes() {
        let a = Permutation::new(&KEY, 50);
        let b = Permutation::new(&[8; 32], 50);
        assert!((0..100).filter(|&x| a.apply(x) == b.apply(x)).count() < 2);
    }

    #[test]
    fn ten_million_codes_have_no_duplicate() {
        let p = Permutation::new(&KEY, 50);
        let sequencer = Sequencer::new();
        // One second: every code from the counter below the seconds.
        let now = EPOCH + 86_400;
        let mut bodies: Vec<u64> = (0..10_000_000)
            .map(|_| p.apply(sequencer.next(10, now).unwrap()))
            .collect();
        bodies.sort_unstable();
        let before = bodies.len();
        bodies.dedup();
        assert_eq!(bodies.len(), before);
    }

    #[test]
    fn the_sequence_grows_and_starts_above_every_code_seen() {
        let s = Sequencer::new();
        let now = EPOCH + 10;
        let first = s.next(10, now).unwrap();
        assert_eq!(first, 10 << 20);
        assert_eq!(s.next(10, now).unwrap(), first + 1);
        // A clock that went back does not take the sequence back.
        assert_eq!(s.next(10, now - 5).unwrap(), first + 2);
        let restarted = Sequencer::new();
        restarted.saw(10, first + 2);
        assert_eq!(restarted.next(10, now - 5).unwrap(), first + 3);
        // Lengths count apart; a full one says so.
        assert_eq!(s.next(8, now).unwrap(), 10 << 10);
        let full = Sequencer::new();
        full.saw(8, (1 << 40) - 1);
        assert_eq!(full.next(8, now), Err(Exhausted(8)));
    }

    proptest::proptest! {
        /// What the `coupon_code` fuzz target checks, on arbitrary text here too: no
        /// panic, and a well-formed code is what its parts format to.
        #[test]
        fn any_text_reads_back_or_is_refused(text in "\\PC{0,24}", dash in proptest::bool::ANY) {
            let text = if dash { format!("T-{text}") } else { text };
            let normal = normalize(&text);
            if let Ok(body) = parse(&normal) {
                proptest::prop_assert_eq!(format(body.prefix, body.length, body.value), normal);
            }
        }

        #[test]
        fn every_made_code_reads_back(body in 0u64..(1 << 60), length in 8u8..=12) {
            let body = body & ((1 << (5 * length as u32)) - 1);
            let made = format("WELCOME", length, body);
            let read = parse(&made).unwrap();
            proptest::prop_assert_eq!((read.prefix, read.length, read.value), ("WELCOME", length, body));
        }
    }

    /// Every single-character substitution and every swap of two different
    /// neighbours, the check character included, of 10,000 issued codes is caught.
    #[test]
    fn every_substitution_and_neighbour_swap_of_issued_codes_is_caught() {
        let p = Permutation::new(&KEY, 50);
        let sequencer = Sequencer::new();
        let start = "THANKS-".len();
        for _ in 0..10_000 {
            let c = code(10, p.apply(sequencer.next(10, EPOCH).unwrap()));
            assert!(parse(&c).is_ok());
            let mut chars: Vec<u8> = c.into_bytes();
            for i in start..chars.len() {
                let was = chars[i];
                for &a in ALPHABET.iter().filter(|&&a| a != was) {
                    chars[i] = a;
                    let typo = std::str::from_utf8(&chars).unwrap();
                    assert!(
                        matches!(parse(typo), Err(CodeError::Check { .. })),
                        "{typo}"
                    );
                }
                chars[i] = was;
                if i + 1 < chars.len() && chars[i] != chars[i + 1] {
                    chars.swap(i, i + 1);
                    let swap = std::str::from_utf8(&chars).unwrap();
                    assert!(
                        matches!(parse(swap), Err(CodeError::Check { .. })),
                        "{swap}"
                    );
                    chars.swap(i, i + 1);
                }
            }
        }
    }
}
