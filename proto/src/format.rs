//! rkyv's archive format settings, as compiled into this binary.
//!
//! Two peers can read each other's archives in place only if rkyv was built
//! with the same endianness, alignment mode and pointer width on both sides.
//! [`ArchiveFormat::current`] measures these settings from rkyv itself
//! rather than trusting feature flags, and the handshake compares them.

use core::fmt;

/// The rkyv format settings that must agree between peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArchiveFormat {
    /// Archived integers are little-endian.
    pub little_endian: bool,
    /// Archived primitives are naturally aligned (rkyv's default); `false`
    /// when rkyv's `unaligned` feature is on.
    pub aligned: bool,
    /// Bytes in an archived `usize` and in relative pointers (2, 4 or 8).
    pub pointer_width: u8,
}

impl ArchiveFormat {
    /// The settings of the rkyv this binary was built with.
    pub fn current() -> Self {
        ArchiveFormat {
            little_endian: archived_u32_bytes(0x0102_0304) == [4, 3, 2, 1],
            aligned: core::mem::align_of::<rkyv::Archived<u32>>() == 4,
            // A handful of bytes, always fits.
            pointer_width: core::mem::size_of::<rkyv::primitive::FixedUsize>() as u8,
        }
    }

    /// Packs the settings into the three handshake bytes.
    pub fn to_bytes(self) -> [u8; 3] {
        [
            u8::from(!self.little_endian),
            u8::from(!self.aligned),
            self.pointer_width,
        ]
    }

    /// Unpacks the three handshake bytes.
    pub fn from_bytes(bytes: [u8; 3]) -> Self {
        ArchiveFormat {
            little_endian: bytes[0] == 0,
            aligned: bytes[1] == 0,
            pointer_width: bytes[2],
        }
    }
}

/// The bytes rkyv writes for `value`.
fn archived_u32_bytes(value: u32) -> [u8; 4] {
    match rkyv::to_bytes::<rkyv::rancor::Error>(&value) {
        Ok(bytes) if bytes.len() >= 4 => [bytes[0], bytes[1], bytes[2], bytes[3]],
        _ => [0; 4],
    }
}

impl fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-endian, {}, {}-bit pointers",
            if self.little_endian { "little" } else { "big" },
            if self.aligned { "aligned" } else { "unaligned" },
            u32::from(self.pointer_width) * 8
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_format_is_rkyv_default_and_round_trips() {
        let format = ArchiveFormat::current();
        assert!(format.little_endian);
        assert!(format.aligned);
        assert_eq!(format.pointer_width, 4);
        assert_eq!(ArchiveFormat::from_bytes(format.to_bytes()), format);
        assert_eq!(
            format.to_string(),
            "little-endian, aligned, 32-bit pointers"
        );
    }
}
