//! The fixed 32-byte frame header.
//!
//! Every frame is a header followed by `payload_len` payload bytes and then
//! zero padding up to the next multiple of 16, so that in a 16-byte aligned
//! receive buffer every payload starts 16-byte aligned (what rkyv needs to
//! read an archive in place). The byte-by-byte layout is in `docs/WIRE.md`;
//! [`FrameHeader::write`] and [`FrameHeader::parse`] are its only
//! implementation.

use crate::error::ProtoError;

/// Wire version written into (and required in) byte 0 of every header.
pub const WIRE_VERSION: u8 = 1;

/// Size of a frame header in bytes.
pub const HEADER_LEN: usize = 32;

/// Alignment of payloads, and of whole frames, on the wire.
pub const FRAME_ALIGN: usize = 16;

/// Payload length rounded up to the frame alignment (the bytes the payload
/// and its padding occupy on the wire).
pub const fn padded_len(payload_len: usize) -> usize {
    (payload_len + (FRAME_ALIGN - 1)) & !(FRAME_ALIGN - 1)
}

/// Total bytes a frame with `payload_len` payload bytes occupies on the wire.
pub const fn frame_len(payload_len: usize) -> usize {
    HEADER_LEN + padded_len(payload_len)
}

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Handshake: magic, versions, node id, capabilities, schema, resume
    /// position. First frame in each direction.
    Hello = 0x01,
    /// A one-way application message (rkyv archive).
    Message = 0x02,
    /// A request expecting a [`FrameKind::Reply`] with the same correlation id.
    Request = 0x03,
    /// The reply to a request.
    Reply = 0x04,
    /// One bulk segment of the preceding message, raw bytes.
    Bulk = 0x05,
    /// Cumulative acknowledgement of sequenced frames.
    Ack = 0x06,
    /// Keep-alive; carries nothing.
    Heartbeat = 0x07,
    /// Orderly close (or refusal), with a reason and the last sequence sent.
    Close = 0x08,
    /// Answer to a close once everything up to its sequence was received.
    CloseAck = 0x09,
}

impl FrameKind {
    /// Parses a kind byte.
    pub fn from_u8(byte: u8) -> Result<Self, ProtoError> {
        Ok(match byte {
            0x01 => FrameKind::Hello,
            0x02 => FrameKind::Message,
            0x03 => FrameKind::Request,
            0x04 => FrameKind::Reply,
            0x05 => FrameKind::Bulk,
            0x06 => FrameKind::Ack,
            0x07 => FrameKind::Heartbeat,
            0x08 => FrameKind::Close,
            0x09 => FrameKind::CloseAck,
            other => return Err(ProtoError::UnknownKind(other)),
        })
    }

    /// Whether frames of this kind carry a sequence number and are
    /// acknowledged, retained for resend and deduplicated on resume.
    pub fn is_sequenced(self) -> bool {
        matches!(
            self,
            FrameKind::Message | FrameKind::Request | FrameKind::Reply | FrameKind::Bulk
        )
    }

    /// Whether the payload is an rkyv archive of a user message.
    pub fn carries_message(self) -> bool {
        matches!(
            self,
            FrameKind::Message | FrameKind::Request | FrameKind::Reply
        )
    }

    /// A short lowercase name, for errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Hello => "hello",
            FrameKind::Message => "message",
            FrameKind::Request => "request",
            FrameKind::Reply => "reply",
            FrameKind::Bulk => "bulk",
            FrameKind::Ack => "ack",
            FrameKind::Heartbeat => "heartbeat",
            FrameKind::Close => "close",
            FrameKind::CloseAck => "close-ack",
        }
    }
}

/// Header flag bits.
pub mod flags {
    /// The payload starts with a bulk descriptor and the frame is followed by
    /// that many [`FrameKind::Bulk`](super::FrameKind::Bulk) frames.
    pub const HAS_BULK: u16 = 0x0001;
    /// Every flag bit this version defines; the rest must be zero.
    pub const KNOWN: u16 = HAS_BULK;
}

/// A decoded (or to-be-encoded) frame header.
///
/// Field meanings depend on the kind; see `docs/WIRE.md`. Unused fields are
/// zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// What the frame is.
    pub kind: FrameKind,
    /// Flag bits, see [`flags`].
    pub flags: u16,
    /// Payload bytes following the header, excluding padding.
    pub payload_len: u32,
    /// Logical stream the frame belongs to (multiplexing); 0 by default.
    pub stream: u32,
    /// Message type id for message kinds; segment index for
    /// [`FrameKind::Bulk`]; 0 otherwise.
    pub type_id: u32,
    /// Per-direction sequence number of sequenced kinds (first is 1);
    /// the acknowledged sequence for [`FrameKind::Ack`]; 0 otherwise.
    pub seq: u64,
    /// Request/reply correlation id; for [`FrameKind::Bulk`], the sequence
    /// number of the message the segment belongs to; 0 otherwise.
    pub correlation: u64,
}

impl FrameHeader {
    /// A header of `kind` with every other field zero.
    pub const fn new(kind: FrameKind) -> Self {
        FrameHeader {
            kind,
            flags: 0,
            payload_len: 0,
            stream: 0,
            type_id: 0,
            seq: 0,
            correlation: 0,
        }
    }

    /// Whether [`flags::HAS_BULK`] is set.
    pub fn has_bulk(&self) -> bool {
        self.flags & flags::HAS_BULK != 0
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        out[0] = WIRE_VERSION;
        out[1] = self.kind as u8;
        out[2..4].copy_from_slice(&self.flags.to_le_bytes());
        out[4..8].copy_from_slice(&self.payload_len.to_le_bytes());
        out[8..12].copy_from_slice(&self.stream.to_le_bytes());
        out[12..16].copy_from_slice(&self.type_id.to_le_bytes());
        out[16..24].copy_from_slice(&self.seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.correlation.to_le_bytes());
    }

    /// Parses and checks a header: version, kind and reserved flags. Length
    /// limits are the decoder's business.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Self, ProtoError> {
        if bytes[0] != WIRE_VERSION {
            return Err(ProtoError::UnsupportedVersion {
                found: bytes[0],
                expected: WIRE_VERSION,
            });
        }
        let kind = FrameKind::from_u8(bytes[1])?;
        let flags = u16::from_le_bytes([bytes[2], bytes[3]]);
        if flags & !flags::KNOWN != 0 {
            return Err(ProtoError::ReservedFlags(flags & !flags::KNOWN));
        }
        if flags & flags::HAS_BULK != 0 && !kind.carries_message() {
            return Err(ProtoError::Violation("bulk flag on a non-message frame"));
        }
        Ok(FrameHeader {
            kind,
            flags,
            payload_len: u32_at(bytes, 4),
            stream: u32_at(bytes, 8),
            type_id: u32_at(bytes, 12),
            seq: u64_at(bytes, 16),
            correlation: u64_at(bytes, 24),
        })
    }
}

fn u32_at(bytes: &[u8; HEADER_LEN], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_byte_exact() {
        let header = FrameHeader {
            kind: FrameKind::Request,
            flags: flags::HAS_BULK,
            payload_len: 0x0403_0201,
            stream: 7,
            type_id: 0xdead_beef,
            seq: 0x1122_3344_5566_7788,
            correlation: 42,
        };
        let mut bytes = [0u8; HEADER_LEN];
        header.write(&mut bytes);
        assert_eq!(&bytes[..8], &[1, 3, 1, 0, 1, 2, 3, 4]);
        assert_eq!(&bytes[16..24], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(FrameHeader::parse(&bytes).unwrap(), header);
    }

    #[test]
    fn parse_rejects_bad_fields() {
        let mut bytes = [0u8; HEADER_LEN];
        FrameHeader::new(FrameKind::Heartbeat).write(&mut bytes);
        let mut v = bytes;
        v[0] = 2;
        assert!(matches!(
            FrameHeader::parse(&v),
            Err(ProtoError::UnsupportedVersion { found: 2, .. })
        ));
        let mut k = bytes;
        k[1] = 0x7f;
        assert!(matches!(
            FrameHeader::parse(&k),
            Err(ProtoError::UnknownKind(0x7f))
        ));
        let mut f = bytes;
        f[3] = 0x80;
        assert!(matches!(
            FrameHeader::parse(&f),
            Err(ProtoError::ReservedFlags(0x8000))
        ));
        let mut b = bytes;
        b[2] = 1;
        assert!(matches!(
            FrameHeader::parse(&b),
            Err(ProtoError::Violation(_))
        ));
    }

    #[test]
    fn padding_is_to_sixteen() {
        assert_eq!(padded_len(0), 0);
        assert_eq!(padded_len(1), 16);
        assert_eq!(padded_len(16), 16);
        assert_eq!(frame_len(17), 64);
    }
}
