//! Primitive types on the wire, all little-endian.
//!
//! | type   | bytes |
//! |--------|-------|
//! | `u8`, `u16`, `u32`, `u64`, `i64` | 1, 2, 4, 8, 8 |
//! | `f64`  | 8, IEEE 754 binary64 |
//! | `str`  | `u16` byte length, then that many bytes of UTF-8 |
//! | `value`| `u8` tag: 1 number (`f64`), 2 string (`str`), 3 bool (`u8` 0 or 1) |
//!
//! [`Reader`] reads them from a frame body and says, on failure, which field was being
//! read and at what offset, so an error response can tell a client author exactly what
//! is wrong with their encoder.

use bytes::{BufMut, BytesMut};

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

/// Writes primitives into a body.
pub trait Write {
    fn str(&mut self, s: &str);
    fn value(&mut self, v: &RawValue);
}

impl Write for BytesMut {
    /// Strings longer than 65,535 bytes are cut at a character boundary: no field of the
    /// protocol is allowed to be that long, and the server validates lengths on input.
    fn str(&mut self, s: &str) {
        let mut end = s.len().min(u16::MAX as usize);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.put_u16_le(end as u16);
        self.put_slice(&s.as_bytes()[..end]);
    }

    fn value(&mut self, v: &RawValue) {
        match v {
            RawValue::Num(n) => {
                self.put_u8(1);
                self.put_f64_le(*n);
            }
            RawValue::Str(s) => {
                self.put_u8(2);
                Write::str(self, s);
            }
            RawValue::Bool(b) => {
                self.put_u8(3);
                self.put_u8(*b as u8);
            }
        }
    }
}

/// A field name for error messages, built only when an error happens.
#[macro_export]
#[doc(hidden)]
macro_rules! field {
    ($($arg:tt)*) => {
        &|| format!($($arg)*)
    };
}
