//! The protocol's primitive types (`u8` … `f64`, `str`, `value`, little-endian) are
//! omnia's one byte codec, [`crate::codec`], which the log and snapshots use too; this
//! module names them where the protocol's code looks for them. `docs/protocol.md`
//! specifies them for client authors.

pub use crate::codec::{DecodeError, Reader, Write};
