//! The handshake frame and the compatibility check.
//!
//! Each side's first frame is a [`FrameKind::Hello`](crate::FrameKind::Hello)
//! whose payload is a fixed little-endian layout (not rkyv: two peers must be
//! able to read each other's hello before they know that their rkyv formats
//! agree). Both sides send theirs at once and each checks the other's with
//! [`check`]; since both see the same two hellos, both refuse for the same
//! reason, and each can say exactly what differs ([`Mismatch`]).

use crate::error::ProtoError;
use crate::format::ArchiveFormat;
pub use crate::mismatch::Mismatch;
use crate::schema::{fingerprint_of, Schema};

/// First eight bytes of every hello payload.
pub const MAGIC: [u8; 8] = *b"RINGWIRE";

/// Session protocol version (independent of the frame header's wire version).
pub const PROTOCOL_VERSION: u16 = 1;

/// Fixed part of a hello payload, before the type id list.
pub const HELLO_FIXED_LEN: usize = 64;

/// Most type ids a hello may list.
pub const MAX_HELLO_TYPES: usize = 1 << 16;

const FLAG_RESUME: u16 = 0x0001;

/// The contents of a hello frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Session protocol version of the sender.
    pub protocol_version: u16,
    /// The sender asks to resume `session_id` rather than start afresh.
    pub resume: bool,
    /// Capability bits the sender supports (see [`capabilities`](crate::capabilities)).
    pub capabilities: u32,
    /// The sender's node id.
    pub node_id: u64,
    /// Session id (chosen by the connecting side; 0 in a fresh server hello).
    pub session_id: u64,
    /// Last sequence number the sender received from its peer (the resume
    /// position; 0 for a fresh session).
    pub rx_seq: u64,
    /// Largest frame payload the sender accepts.
    pub max_payload: u32,
    /// The sender's rkyv format settings.
    pub format: ArchiveFormat,
    /// The sender's message type ids, ascending.
    pub type_ids: Vec<u32>,
}

impl Hello {
    /// Length of the encoded payload.
    pub fn encoded_len(&self) -> usize {
        HELLO_FIXED_LEN + 4 * self.type_ids.len()
    }

    /// Writes the payload into `out` (exactly [`Hello::encoded_len`] bytes).
    pub fn write(&self, out: &mut [u8]) -> Result<(), ProtoError> {
        let needed = self.encoded_len();
        if out.len() != needed {
            return Err(ProtoError::BufferTooSmall {
                needed,
                available: out.len(),
            });
        }
        out.fill(0);
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&self.protocol_version.to_le_bytes());
        let flags = if self.resume { FLAG_RESUME } else { 0 };
        out[10..12].copy_from_slice(&flags.to_le_bytes());
        out[12..16].copy_from_slice(&self.capabilities.to_le_bytes());
        out[16..24].copy_from_slice(&self.node_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.session_id.to_le_bytes());
        out[32..40].copy_from_slice(&self.rx_seq.to_le_bytes());
        out[40..44].copy_from_slice(&self.max_payload.to_le_bytes());
        out[44..47].copy_from_slice(&self.format.to_bytes());
        out[48..56].copy_from_slice(&fingerprint_of(self.format, &self.type_ids).to_le_bytes());
        // MAX_HELLO_TYPES fits in u32; a longer list is refused by the peer.
        let count = u32::try_from(self.type_ids.len()).unwrap_or(u32::MAX);
        out[56..60].copy_from_slice(&count.to_le_bytes());
        for (slot, id) in out[HELLO_FIXED_LEN..]
            .chunks_exact_mut(4)
            .zip(&self.type_ids)
        {
            slot.copy_from_slice(&id.to_le_bytes());
        }
        Ok(())
    }

    /// Parses and checks a hello payload from a peer.
    pub fn parse(payload: &[u8]) -> Result<Hello, ProtoError> {
        let malformed = |detail| ProtoError::Malformed {
            what: "hello",
            detail,
        };
        let fixed = payload
            .first_chunk::<HELLO_FIXED_LEN>()
            .ok_or(malformed("shorter than its fixed part"))?;
        if fixed[0..8] != MAGIC {
            return Err(malformed("bad magic"));
        }
        let flags = u16::from_le_bytes([fixed[10], fixed[11]]);
        if flags & !FLAG_RESUME != 0 {
            return Err(malformed("reserved flag bits set"));
        }
        let count = le_u32(fixed, 56) as usize;
        if count > MAX_HELLO_TYPES {
            return Err(malformed("too many type ids"));
        }
        if payload.len() != HELLO_FIXED_LEN + 4 * count {
            return Err(malformed("length does not match type count"));
        }
        let type_ids: Vec<u32> = payload[HELLO_FIXED_LEN..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if type_ids.windows(2).any(|w| w[0] >= w[1]) {
            return Err(malformed("type ids not strictly ascending"));
        }
        if fixed[44] > 1 || fixed[45] > 1 {
            return Err(malformed("format flag byte other than 0 or 1"));
        }
        let format = ArchiveFormat::from_bytes([fixed[44], fixed[45], fixed[46]]);
        if le_u64(fixed, 48) != fingerprint_of(format, &type_ids) {
            return Err(malformed("fingerprint does not match type list"));
        }
        Ok(Hello {
            protocol_version: u16::from_le_bytes([fixed[8], fixed[9]]),
            resume: flags & FLAG_RESUME != 0,
            capabilities: le_u32(fixed, 12),
            node_id: le_u64(fixed, 16),
            session_id: le_u64(fixed, 24),
            rx_seq: le_u64(fixed, 32),
            max_payload: le_u32(fixed, 40),
            format,
            type_ids,
        })
    }
}

fn le_u32(b: &[u8; HELLO_FIXED_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8; HELLO_FIXED_LEN], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Compares the peer's hello with our schema and requirements.
pub fn check(
    schema: &Schema,
    required_capabilities: u32,
    peer: &Hello,
) -> Result<(), Box<Mismatch>> {
    let mut m = Mismatch::default();
    if peer.protocol_version != PROTOCOL_VERSION {
        m.protocol_version = Some((PROTOCOL_VERSION, peer.protocol_version));
    }
    if peer.format != schema.format() {
        m.format = Some((schema.format(), peer.format));
    }
    m.missing_capabilities = required_capabilities & !peer.capabilities;
    let ours: Vec<u32> = schema.type_ids().collect();
    m.only_local = ours
        .iter()
        .filter(|id| peer.type_ids.binary_search(id).is_err())
        .map(|&id| (id, schema.name_of(id).unwrap_or("?")))
        .collect();
    m.only_peer = peer
        .type_ids
        .iter()
        .filter(|id| ours.binary_search(id).is_err())
        .copied()
        .collect();
    if m.is_empty() {
        Ok(())
    } else {
        Err(Box::new(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            resume: true,
            capabilities: 3,
            node_id: 9,
            session_id: 0xfeed,
            rx_seq: 17,
            max_payload: 1 << 20,
            format: ArchiveFormat::current(),
            type_ids: vec![1, 5, 9],
        }
    }

    #[test]
    fn hello_round_trips() {
        let hello = sample();
        let mut buf = vec![0u8; hello.encoded_len()];
        hello.write(&mut buf).unwrap();
        assert_eq!(&buf[..8], b"RINGWIRE");
        assert_eq!(Hello::parse(&buf).unwrap(), hello);
    }

    #[test]
    fn corrupted_hellos_are_refused() {
        let hello = sample();
        let mut buf = vec![0u8; hello.encoded_len()];
        hello.write(&mut buf).unwrap();
        let mut magic = buf.clone();
        magic[0] = b'X';
        assert!(Hello::parse(&magic).is_err());
        let mut ids = buf.clone();
        ids[HELLO_FIXED_LEN] = 0xff; // breaks ordering and fingerprint
        assert!(Hello::parse(&ids).is_err());
        assert!(Hello::parse(&buf[..buf.len() - 1]).is_err());
        let mut format = buf.clone();
        format[44] = 2; // found by the handshake fuzz target
        assert!(Hello::parse(&format).is_err());
    }

    #[test]
    fn mismatch_names_every_difference() {
        let schema = Schema::new();
        let mut peer = sample();
        peer.protocol_version = 7;
        peer.format.pointer_width = 8;
        peer.capabilities = 0;
        let err = check(&schema, 1, &peer).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("protocol version: ours 1, peer 7"), "{text}");
        assert!(text.contains("64-bit pointers"), "{text}");
        assert!(text.contains("capabilities 0x1"), "{text}");
        assert!(
            text.contains("only at peer: 0x00000001, 0x00000005, 0x00000009"),
            "{text}"
        );
    }
}
