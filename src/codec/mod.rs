//! The byte codec every format of omnia is made of: the protocol's frame bodies, the
//! write-ahead log's records, snapshots and shard images. One reader, one writer, one
//! rule for what does not fit, so the formats cannot disagree on a primitive.
//!
//! | type   | bytes |
//! |--------|-------|
//! | `u8`, `u16`, `u32`, `u64`, `i64` | 1, 2, 4, 8, 8, little-endian |
//! | `f64`  | 8, IEEE 754 binary64, little-endian |
//! | `str`  | `u16` byte length, then that many bytes of UTF-8 |
//! | `lstr` | `u32` byte length, then that many bytes of UTF-8 |
//! | `value`| `u8` tag: 1 number (`f64`), 2 string (`str`), 3 bool (`u8` 0 or 1) |
//!
//! [`Reader`] reads them and says, on failure, which field was being read and at what
//! offset, so an error can tell a client author (or an operator with a damaged file)
//! exactly what is wrong. [`Write`] writes them into any `BufMut` (a frame's `BytesMut`,
//! a record's `Vec<u8>`). A string longer than its prefix allows is cut at the last
//! character boundary that fits ([`fit`]): what is written is always valid UTF-8, so a
//! reader never refuses what a writer produced. Every caller bounds its strings well
//! below the limit; the cut is the last line of defence, not a feature.
//!
//! [`events`] is the event layouts (1, and 2 with a message id) that INGEST bodies and
//! the log's EVENT records share; [`Fingerprint`] hashes a canonical encoding, never `Debug` output.
//!
//! This module knows only `model` (the values it encodes): protocol, engine, decide and
//! store all build on it.

pub mod events;

pub use events::{EventRef, IngestBatch, IngestWriter};

use bytes::BufMut;

use crate::model::{RawValue, ValueRef};

/// Why a body does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("body ends at byte {offset} while reading {field} ({needed} more bytes needed)")]
    Truncated {
        field: String,
        offset: usize,
        needed: usize,
    },
    #[error("{field} at byte {offset} is not valid UTF-8")]
    Utf8 { field: String, offset: usize },
    #[error("{field} at byte {offset}: {message}")]
    Invalid {
        field: String,
        offset: usize,
        message: String,
    },
    #[error("{extra} unexpected bytes after the body, from byte {offset}")]
    Trailing { offset: usize, extra: usize },
}

/// Reads primitives from a body, tracking the offset.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn offset(&self) -> usize {
        self.pos
    }

    fn take(&mut self, n: usize, field: &dyn Fn() -> String) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() - self.pos < n {
            return Err(DecodeError::Truncated {
                field: field(),
                offset: self.buf.len(),
                needed: n - (self.buf.len() - self.pos),
            });
        }
        let slice = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes, as they are.
    pub fn bytes(&mut self, n: usize, field: &dyn Fn() -> String) -> Result<&'a [u8], DecodeError> {
        self.take(n, field)
    }

    pub fn u8(&mut self, field: &dyn Fn() -> String) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    pub fn u16(&mut self, field: &dyn Fn() -> String) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, field: &dyn Fn() -> String) -> Result<u64, DecodeError> {
        let b = self.take(8, field)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }

    pub fn i64(&mut self, field: &dyn Fn() -> String) -> Result<i64, DecodeError> {
        Ok(self.u64(field)? as i64)
    }

    pub fn f64(&mut self, field: &dyn Fn() -> String) -> Result<f64, DecodeError> {
        Ok(f64::from_bits(self.u64(field)?))
    }

    pub fn str(&mut self, field: &dyn Fn() -> String) -> Result<&'a str, DecodeError> {
        let len = self.u16(field)? as usize;
        let at = self.pos;
        let bytes = self.take(len, field)?;
        // Branch-free for the short strings of this wire: OR every byte, test the top bit.
        if bytes.iter().fold(0u8, |all, b| all | b) < 0x80 {
            // SAFETY: every ASCII byte sequence is valid UTF-8. Keys, names and most
            // values on this wire are ASCII; this skips the general validator for them.
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).map_err(|_| DecodeError::Utf8 {
            field: field(),
            offset: at,
        })
    }

    /// An `lstr`: a `u32` length, then UTF-8.
    pub fn lstr(&mut self, field: &dyn Fn() -> String) -> Result<&'a str, DecodeError> {
        let len = self.u32(field)? as usize;
        let at = self.pos;
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::Utf8 {
            field: field(),
            offset: at,
        })
    }

    pub fn value(&mut self, field: &dyn Fn() -> String) -> Result<RawValue, DecodeError> {
        Ok(self.value_ref(field)?.to_owned())
    }

    /// A value borrowed from the body: strings are not copied.
    pub fn value_ref(&mut self, field: &dyn Fn() -> String) -> Result<ValueRef<'a>, DecodeError> {
        let at = self.pos;
        match self.u8(field)? {
            1 => Ok(ValueRef::Num(self.f64(field)?)),
            2 => Ok(ValueRef::Str(self.str(field)?)),
            3 => match self.u8(field)? {
                0 => Ok(ValueRef::Bool(false)),
                1 => Ok(ValueRef::Bool(true)),
                other => Err(DecodeError::Invalid {
                    field: field(),
                    offset: at + 1,
                    message: format!("bool must be 0 or 1, found {other}"),
                }),
            },
            tag => Err(DecodeError::Invalid {
                field: field(),
                offset: at,
                message: format!(
                    "unknown value tag {tag}: expected 1 (number), 2 (string) or 3 (bool)"
                ),
            }),
        }
    }

    /// An [`DecodeError::Invalid`] of field `name` at the current offset.
    pub fn invalid(&self, name: &str, message: String) -> DecodeError {
        DecodeError::Invalid {
            field: name.to_string(),
            offset: self.pos,
            message,
        }
    }

    /// The bytes read since `start` (an earlier [`offset`](Self::offset)).
    pub fn since(&self, start: usize) -> &'a [u8] {
        &self.buf[start.min(self.pos)..self.pos]
    }

    /// The rest of the body.
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.pos..];
        self.pos = self.buf.len();
        rest
    }

    /// Fails if bytes remain: a body must be exactly its layout.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.pos < self.buf.len() {
            return Err(DecodeError::Trailing {
                offset: self.pos,
                extra: self.buf.len() - self.pos,
            });
        }
        Ok(())
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
pub fn fit(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Writes the composite primitives; the integers are `BufMut`'s `put_*_le`.
pub trait Write: BufMut {
    /// A `str`: cut to 65,535 bytes at a character boundary ([`fit`]).
    fn str(&mut self, s: &str) {
        let s = fit(s, u16::MAX as usize);
        self.put_u16_le(s.len() as u16);
        self.put_slice(s.as_bytes());
    }

    /// An `lstr`: cut to 4 GiB - 1 at a character boundary ([`fit`]).
    fn lstr(&mut self, s: &str) {
        let s = fit(s, u32::MAX as usize);
        self.put_u32_le(s.len() as u32);
        self.put_slice(s.as_bytes());
    }

    fn value(&mut self, v: &RawValue) {
        self.value_ref(v.as_ref());
    }

    fn value_ref(&mut self, v: ValueRef<'_>) {
        match v {
            ValueRef::Num(n) => {
                self.put_u8(1);
                self.put_f64_le(n);
            }
            ValueRef::Str(s) => {
                self.put_u8(2);
                Write::str(self, s);
            }
            ValueRef::Bool(b) => {
                self.put_u8(3);
                self.put_u8(b as u8);
            }
        }
    }
}

impl<T: BufMut + ?Sized> Write for T {}

/// A 64-bit fingerprint of a canonical encoding: each part written by [`Write`] (a
/// `str` or `lstr` with its length, integers little-endian), so two different sequences
/// of parts never encode alike and a change to a derive or a `Debug` format changes
/// nothing. xxh3 of the bytes; stable across builds and platforms.
#[derive(Debug, Default)]
pub struct Fingerprint {
    bytes: Vec<u8>,
}

impl Fingerprint {
    pub fn new() -> Fingerprint {
        Fingerprint::default()
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes.put_u8(v);
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.put_u32_le(v);
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes.put_u64_le(v);
        self
    }

    /// A string, with its length (an `lstr`, so nothing is cut).
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes.lstr(s);
        self
    }

    /// A list of strings, with its length.
    pub fn strs<'a>(&mut self, list: impl ExactSizeIterator<Item = &'a str>) -> &mut Self {
        self.u32(list.len() as u32);
        for s in list {
            self.str(s);
        }
        self
    }

    pub fn finish(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.bytes)
    }
}

/// A field name for a [`Reader`] call, for names known when the code is written.
pub fn named(name: &'static str) -> impl Fn() -> String {
    move || name.to_string()
}

/// A field name for error messages, built only when an error happens.
#[macro_export]
#[doc(hidden)]
macro_rules! field {
    ($($arg:tt)*) => {
        &|| format!($($arg)*)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_too_long_is_cut_at_a_character_boundary() {
        // 65,534 ASCII bytes and a two-byte character: 65,536 bytes in all.
        let long = format!("{}é", "a".repeat(65_534));
        let mut out = Vec::new();
        out.str(&long);
        let mut r = Reader::new(&out);
        assert_eq!(r.str(&|| "s".into()).unwrap(), &long[..65_534]);
        r.finish().unwrap();
        assert_eq!(fit("né", 2), "n");
        assert_eq!(fit("né", 3), "né");
    }

    #[test]
    fn every_primitive_round_trips_through_a_vec_and_bytes_mut() {
        fn write(out: &mut impl Write) {
            out.put_u8(7);
            out.put_u16_le(513);
            out.put_u32_le(70_000);
            out.put_u64_le(1 << 40);
            out.put_i64_le(-5);
            out.put_f64_le(2.5);
            out.str("ü");
            out.lstr("long");
            out.value(&RawValue::Bool(true));
            out.value(&RawValue::Str("x".into()));
            out.value(&RawValue::Num(-1.0));
        }
        let mut vec = Vec::new();
        write(&mut vec);
        let mut frame = bytes::BytesMut::new();
        write(&mut frame);
        assert_eq!(vec, frame.to_vec());
        let f = &|| "f".to_string();
        let mut r = Reader::new(&vec);
        assert_eq!(r.u8(f).unwrap(), 7);
        assert_eq!(r.u16(f).unwrap(), 513);
        assert_eq!(r.u32(f).unwrap(), 70_000);
        assert_eq!(r.u64(f).unwrap(), 1 << 40);
        assert_eq!(r.i64(f).unwrap(), -5);
        assert_eq!(r.f64(f).unwrap(), 2.5);
        assert_eq!(r.str(f).unwrap(), "ü");
        assert_eq!(r.lstr(f).unwrap(), "long");
        assert_eq!(r.value(f).unwrap(), RawValue::Bool(true));
        assert_eq!(r.value(f).unwrap(), RawValue::Str("x".into()));
        assert_eq!(r.value(f).unwrap(), RawValue::Num(-1.0));
        r.finish().unwrap();
    }

    #[test]
    fn a_fingerprint_separates_its_parts() {
        let of = |parts: &[&str]| Fingerprint::new().strs(parts.iter().copied()).finish();
        assert_ne!(of(&["ab", "c"]), of(&["a", "bc"]));
        assert_ne!(of(&["a"]), of(&["a", ""]));
        assert_eq!(of(&["a", "b"]), of(&["a", "b"]));
    }
}
