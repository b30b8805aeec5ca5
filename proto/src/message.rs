//! The [`Message`] trait: what a user type needs to travel in a frame.
//!
//! A message is any type deriving rkyv's `Archive` and `Serialize` whose
//! archived form can be checked by bytecheck, plus a stable 32-bit type id
//! that travels in the frame header. Pick the id with [`type_id`] from a
//! name that never changes (not from `std::any::type_name`, which may change
//! between compiler versions):
//!
//! ```
//! use ringwire_proto::{type_id, Message};
//!
//! #[derive(rkyv::Archive, rkyv::Serialize)]
//! struct Ping {
//!     nonce: u64,
//! }
//!
//! impl Message for Ping {
//!     const TYPE_ID: u32 = type_id("example.Ping");
//!     const NAME: &'static str = "example.Ping";
//! }
//! ```

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::{Archive, Serialize};

use crate::writer::{EncodeError, SliceWriter};

/// A type that can be sent as a ringwire message.
///
/// The supertrait bounds say: rkyv can serialize it into a caller's buffer,
/// and its archived form can be validated by bytecheck. `'static` lets the
/// schema remember exactly which Rust type validated a payload.
pub trait Message:
    Archive<Archived: for<'v> CheckBytes<HighValidator<'v, rancor::Error>>>
    + for<'a, 'b> Serialize<HighSerializer<SliceWriter<'b>, ArenaHandle<'a>, EncodeError>>
    + 'static
{
    /// Stable wire id of this type. Must be non-zero and unique within a
    /// schema; [`type_id`] derives one from a name.
    const TYPE_ID: u32;
    /// Human-readable stable name, used in error messages.
    const NAME: &'static str;
}

/// Derives a stable, non-zero type id from a name (32-bit FNV-1a; 0 maps to
/// 1). Usable in `const` context.
pub const fn type_id(name: &str) -> u32 {
    let bytes = name.as_bytes();
    let mut hash: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u32;
        hash = hash.wrapping_mul(0x0100_0193);
        i += 1;
    }
    if hash == 0 {
        1
    } else {
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_id_is_fnv1a_and_non_zero() {
        // Reference values of 32-bit FNV-1a.
        assert_eq!(type_id(""), 0x811c_9dc5);
        assert_eq!(type_id("a"), 0xe40c_292c);
        assert_ne!(type_id("kv.Get"), type_id("kv.Put"));
    }
}
