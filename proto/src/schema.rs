//! The set of message types a node speaks, and ingress validation.
//!
//! A [`Schema`] is built once at start-up by registering every message type
//! ([`Schema::register`]). It serves two purposes:
//!
//! 1. Its fingerprint (type ids plus [`ArchiveFormat`]) goes into the
//!    handshake, so incompatible peers are refused before any message flows.
//! 2. It holds, per type id, a monomorphized bytecheck validator. The session
//!    validates every message from a peer exactly once, at ingress, with the
//!    validator of the type named in the header, and remembers which Rust type
//!    validated it; later typed access to that payload is then free.

use core::any::TypeId;

use rkyv::rancor;

use crate::error::ProtoError;
use crate::format::ArchiveFormat;
use crate::message::Message;

/// Proof that a payload was validated as a specific Rust type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidatedAs(pub(crate) TypeId);

impl ValidatedAs {
    /// Whether the payload was validated as `T` (then reading it as `T`
    /// needs no second validation).
    pub fn is<T: Message>(&self) -> bool {
        self.0 == TypeId::of::<T>()
    }
}

type ValidateFn = fn(&[u8]) -> Result<(), rancor::Error>;

#[derive(Clone)]
struct Entry {
    id: u32,
    name: &'static str,
    rust_type: TypeId,
    validate: ValidateFn,
}

/// The message types this node speaks, with their validators.
#[derive(Clone)]
pub struct Schema {
    /// Sorted by id.
    entries: Vec<Entry>,
    format: ArchiveFormat,
}

impl core::fmt::Debug for Schema {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Schema")
            .field(
                "types",
                &self
                    .entries
                    .iter()
                    .map(|e| (e.id, e.name))
                    .collect::<Vec<_>>(),
            )
            .field("format", &self.format)
            .finish()
    }
}

impl Default for Schema {
    fn default() -> Self {
        Self::new()
    }
}

fn validate_as<T: Message>(bytes: &[u8]) -> Result<(), rancor::Error> {
    rkyv::access::<T::Archived, rancor::Error>(bytes).map(|_| ())
}

impl Schema {
    /// An empty schema with this binary's rkyv format.
    pub fn new() -> Self {
        Schema {
            entries: Vec::new(),
            format: ArchiveFormat::current(),
        }
    }

    /// Registers `T`. Registering the same type twice is a no-op; a
    /// different type with the same id is an error.
    pub fn register<T: Message>(&mut self) -> Result<(), ProtoError> {
        if T::TYPE_ID == 0 {
            return Err(ProtoError::Malformed {
                what: "message type",
                detail: "type id 0 is reserved",
            });
        }
        match self.entries.binary_search_by_key(&T::TYPE_ID, |e| e.id) {
            Ok(i) => {
                let existing = &self.entries[i];
                if existing.rust_type == TypeId::of::<T>() {
                    Ok(())
                } else {
                    Err(ProtoError::DuplicateTypeId {
                        type_id: T::TYPE_ID,
                        first: existing.name,
                        second: T::NAME,
                    })
                }
            }
            Err(i) => {
                self.entries.insert(
                    i,
                    Entry {
                        id: T::TYPE_ID,
                        name: T::NAME,
                        rust_type: TypeId::of::<T>(),
                        validate: validate_as::<T>,
                    },
                );
                Ok(())
            }
        }
    }

    /// Builder form of [`Schema::register`].
    pub fn with<T: Message>(mut self) -> Result<Self, ProtoError> {
        self.register::<T>()?;
        Ok(self)
    }

    /// The rkyv format settings of this binary.
    pub fn format(&self) -> ArchiveFormat {
        self.format
    }

    /// Registered type ids, ascending.
    pub fn type_ids(&self) -> impl ExactSizeIterator<Item = u32> + '_ {
        self.entries.iter().map(|e| e.id)
    }

    /// Whether `type_id` is registered.
    pub fn contains(&self, type_id: u32) -> bool {
        self.entries
            .binary_search_by_key(&type_id, |e| e.id)
            .is_ok()
    }

    /// The registered name of `type_id`.
    pub fn name_of(&self, type_id: u32) -> Option<&'static str> {
        self.entries
            .binary_search_by_key(&type_id, |e| e.id)
            .ok()
            .map(|i| self.entries[i].name)
    }

    /// A 64-bit FNV-1a digest of the format bytes and the sorted type ids.
    /// Equal schemas have equal fingerprints; the handshake sends the full
    /// list as well, so a mismatch can be explained.
    pub fn fingerprint(&self) -> u64 {
        let ids: Vec<u32> = self.type_ids().collect();
        fingerprint_of(self.format, &ids)
    }

    /// Validates `payload` as the type registered under `type_id`.
    ///
    /// This is the ingress check: the payload must be 16-byte aligned and
    /// pass bytecheck. On success the returned token names the Rust type that
    /// validated it, which makes later typed access free.
    pub fn validate(&self, type_id: u32, payload: &[u8]) -> Result<ValidatedAs, ProtoError> {
        let entry = self
            .entries
            .binary_search_by_key(&type_id, |e| e.id)
            .map(|i| &self.entries[i])
            .map_err(|_| ProtoError::UnknownType(type_id))?;
        crate::access::check_alignment(payload)?;
        (entry.validate)(payload).map_err(|source| ProtoError::Validation { type_id, source })?;
        Ok(ValidatedAs(entry.rust_type))
    }
}

impl Schema {
    /// The token of the Rust type registered under `type_id`, without
    /// validating anything: for frames this process encoded itself (see
    /// `Session::handle_frame_trusted`, whose contract makes it sound).
    pub(crate) fn assume_valid(&self, type_id: u32) -> Result<ValidatedAs, ProtoError> {
        self.entries
            .binary_search_by_key(&type_id, |e| e.id)
            .map(|i| ValidatedAs(self.entries[i].rust_type))
            .map_err(|_| ProtoError::UnknownType(type_id))
    }
}

/// The schema fingerprint of a format and an ascending list of type ids
/// (64-bit FNV-1a over the three format bytes and the little-endian ids).
pub fn fingerprint_of(format: ArchiveFormat, type_ids: &[u32]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(&format.to_bytes());
    for id in type_ids {
        feed(&id.to_le_bytes());
    }
    hash
}
