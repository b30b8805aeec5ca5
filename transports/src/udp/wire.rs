//! The `udp://` datagram format, sans-IO: a 32-byte header, then one rkyv
//! archive, then zero padding to a multiple of 16 (byte layout in
//! `docs/WIRE.md`, section "Datagrams").
//!
//! A datagram has no session: every one says who sent it (`sender`, a
//! 64-bit id chosen per sending socket) and where it stands in that
//! sender's sequence to the destination (`seq`, from 1), so receivers can
//! count gaps, duplicates and reordering per sender (see [`super::seq`]).
//!
//! [`encode`] serializes a message straight into a caller's buffer (a
//! registered send buffer); [`decode`] checks a received datagram's header
//! and framing and returns the archive's place, which the caller then
//! validates with the schema. Nothing here panics on any input.

use ringwire_proto::writer::{EncodeError, SliceWriter};
use ringwire_proto::Message;

/// The first four bytes of every datagram.
pub const MAGIC: [u8; 4] = *b"RWDG";

/// The datagram format version (byte 4).
pub const VERSION: u8 = 1;

/// Length of the header; the archive follows it (so an archive starts
/// 16-byte aligned wherever the datagram does).
pub const HEADER_LEN: usize = 32;

/// A datagram's header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatagramHeader {
    /// The sending socket's id (non-zero).
    pub sender: u64,
    /// Position in the sender's sequence to this destination (from 1).
    pub seq: u64,
    /// Type id of the archived message (non-zero).
    pub type_id: u32,
    /// Archive bytes (excluding padding).
    pub payload_len: u32,
}

/// Total length of a datagram carrying `payload_len` archive bytes.
pub fn datagram_len(payload_len: usize) -> usize {
    HEADER_LEN + payload_len.div_ceil(16) * 16
}

/// Why a received datagram was dropped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadDatagram {
    /// Shorter than a header.
    #[error("datagram of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Not a ringwire datagram (wrong magic).
    #[error("not a ringwire datagram (magic {found:02x?})")]
    Magic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A format version this build does not read.
    #[error("datagram format version {found}, this build reads {VERSION}")]
    Version {
        /// The version byte.
        found: u8,
    },
    /// Flags or reserved bytes that must be zero are not.
    #[error("reserved header bits set ({found:#06x})")]
    Reserved {
        /// Bytes 5..8 as a number.
        found: u32,
    },
    /// The sender id or the sequence number is zero.
    #[error("zero sender id or sequence number")]
    Zero,
    /// The datagram's length does not match the announced archive length.
    #[error("datagram of {len} bytes announces a {announced}-byte archive ({expected} bytes with header and padding)")]
    Length {
        /// The datagram's length.
        len: usize,
        /// The announced archive length.
        announced: u32,
        /// The datagram length that announcement implies.
        expected: usize,
    },
    /// Larger than the receive buffer: the kernel cut it.
    #[error("datagram of {len} bytes was cut to fit a receive buffer")]
    Truncated {
        /// Its real length.
        len: usize,
    },
    /// A message type this socket's schema does not list.
    #[error("unknown message type id {type_id:#010x}")]
    UnknownType {
        /// The type id.
        type_id: u32,
    },
    /// The archive failed validation.
    #[error("archive of type {type_id:#010x} failed validation: {reason}")]
    Invalid {
        /// The type id.
        type_id: u32,
        /// What bytecheck said.
        reason: String,
    },
}

impl BadDatagram {
    /// A short stable name of the kind, used as the `reason` label of the
    /// `transport_udp_bad_total` counter.
    pub fn kind(&self) -> &'static str {
        match self {
            BadDatagram::TooShort { .. } => "too_short",
            BadDatagram::Magic { .. } => "magic",
            BadDatagram::Version { .. } => "version",
            BadDatagram::Reserved { .. } => "reserved",
            BadDatagram::Zero => "zero",
            BadDatagram::Length { .. } => "length",
            BadDatagram::Truncated { .. } => "truncated",
            BadDatagram::UnknownType { .. } => "unknown_type",
            BadDatagram::Invalid { .. } => "invalid",
        }
    }

    /// Every kind, in the order of the counters.
    pub const KINDS: [&'static str; 9] = [
        "too_short",
        "magic",
        "version",
        "reserved",
        "zero",
        "length",
        "truncated",
        "unknown_type",
        "invalid",
    ];
}

/// Why a message could not be encoded into a buffer.
#[derive(Debug)]
pub enum EncodeFailure {
    /// The buffer is too small; the datagram needs at least this many bytes.
    Full {
        /// A lower bound of the datagram's length.
        needed: usize,
    },
    /// The message's serializer failed.
    Serialize(String),
}

/// Writes a datagram carrying `value` at the start of `buf`: the archive
/// straight behind the header, then zero padding. Returns its length.
pub fn encode<T: Message>(
    buf: &mut [u8],
    sender: u64,
    seq: u64,
    value: &T,
) -> Result<usize, EncodeFailure> {
    if buf.len() < HEADER_LEN {
        return Err(EncodeFailure::Full {
            needed: HEADER_LEN + 16,
        });
    }
    let (head, body) = buf.split_at_mut(HEADER_LEN);
    let archive_len =
        match rkyv::api::high::to_bytes_in::<_, EncodeError>(value, SliceWriter::new(body)) {
            Ok(w) => w.len(),
            Err(EncodeError::Full { needed }) => {
                return Err(EncodeFailure::Full {
                    needed: datagram_len(needed),
                })
            }
            Err(e) => return Err(EncodeFailure::Serialize(e.to_string())),
        };
    let total = datagram_len(archive_len);
    let Some(pad) = body.get_mut(archive_len..total - HEADER_LEN) else {
        return Err(EncodeFailure::Full { needed: total });
    };
    pad.fill(0);
    let payload_len =
        u32::try_from(archive_len).map_err(|_| EncodeFailure::Full { needed: total })?;
    write_header(
        head,
        &DatagramHeader {
            sender,
            seq,
            type_id: T::TYPE_ID,
            payload_len,
        },
    );
    Ok(total)
}

/// Writes `h` into the first [`HEADER_LEN`] bytes of `out`.
///
/// # Panics
///
/// When `out` is shorter than [`HEADER_LEN`].
pub fn write_header(out: &mut [u8], h: &DatagramHeader) {
    let out = &mut out[..HEADER_LEN];
    out[0..4].copy_from_slice(&MAGIC);
    out[4] = VERSION;
    out[5..8].fill(0);
    out[8..16].copy_from_slice(&h.sender.to_le_bytes());
    out[16..24].copy_from_slice(&h.seq.to_le_bytes());
    out[24..28].copy_from_slice(&h.type_id.to_le_bytes());
    out[28..32].copy_from_slice(&h.payload_len.to_le_bytes());
}

/// Checks a received datagram's header and length; returns the header and
/// the archive's byte range within `datagram`.
pub fn decode(datagram: &[u8]) -> Result<(DatagramHeader, std::ops::Range<usize>), BadDatagram> {
    let len = datagram.len();
    let Some(h) = datagram.get(..HEADER_LEN) else {
        return Err(BadDatagram::TooShort { len });
    };
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
    let magic = [h[0], h[1], h[2], h[3]];
    if magic != MAGIC {
        return Err(BadDatagram::Magic { found: magic });
    }
    if h[4] != VERSION {
        return Err(BadDatagram::Version { found: h[4] });
    }
    let reserved = u32::from(h[5]) << 16 | u32::from(h[6]) << 8 | u32::from(h[7]);
    if reserved != 0 {
        return Err(BadDatagram::Reserved { found: reserved });
    }
    let header = DatagramHeader {
        sender: u64_at(8),
        seq: u64_at(16),
        type_id: u32_at(24),
        payload_len: u32_at(28),
    };
    if header.sender == 0 || header.seq == 0 {
        return Err(BadDatagram::Zero);
    }
    let expected = datagram_len(header.payload_len as usize);
    if len != expected {
        return Err(BadDatagram::Length {
            len,
            announced: header.payload_len,
            expected,
        });
    }
    Ok((header, HEADER_LEN..HEADER_LEN + header.payload_len as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringwire_proto::rkyv;

    #[derive(rkyv::Archive, rkyv::Serialize, Debug, PartialEq)]
    #[rkyv(crate = rkyv)]
    struct Quote {
        ts: u64,
        symbol: u32,
        bid: f32,
        ask: f32,
        bid_size: u32,
        ask_size: u32,
    }

    impl Message for Quote {
        const TYPE_ID: u32 = ringwire_proto::type_id("test.udp.Quote");
        const NAME: &'static str = "test.udp.Quote";
    }

    fn quote() -> Quote {
        Quote {
            ts: 1,
            symbol: 7,
            bid: 100.0,
            ask: 100.01,
            bid_size: 10,
            ask_size: 12,
        }
    }

    #[test]
    fn a_quote_is_a_64_byte_datagram_that_decodes_back() {
        let mut buf = vec![0xAAu8; 256];
        let n = encode(&mut buf, 9, 3, &quote()).unwrap();
        assert_eq!(n, 64);
        let (h, range) = decode(&buf[..n]).unwrap();
        assert_eq!(
            h,
            DatagramHeader {
                sender: 9,
                seq: 3,
                type_id: Quote::TYPE_ID,
                payload_len: 32,
            }
        );
        assert_eq!(range, 32..64);
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&buf[range]);
        let q = ringwire_proto::access::<Quote>(&aligned).unwrap();
        assert_eq!(q.symbol.to_native(), 7);
    }

    #[test]
    fn padding_is_zeroed_and_counted_in_the_length() {
        #[derive(rkyv::Archive, rkyv::Serialize)]
        #[rkyv(crate = rkyv)]
        struct Odd(u8, u8, u8);
        impl Message for Odd {
            const TYPE_ID: u32 = 5;
            const NAME: &'static str = "odd";
        }
        let mut buf = vec![0xAAu8; 64];
        let n = encode(&mut buf, 1, 1, &Odd(1, 2, 3)).unwrap();
        assert_eq!(n, 48);
        assert!(buf[35..48].iter().all(|&b| b == 0));
        let (h, range) = decode(&buf[..n]).unwrap();
        assert_eq!((h.payload_len, range), (3, 32..35));
    }

    #[test]
    fn a_buffer_too_small_says_how_much_is_needed() {
        let mut buf = vec![0u8; 40];
        match encode(&mut buf, 1, 1, &quote()) {
            Err(EncodeFailure::Full { needed }) => assert!(needed > 40),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            encode(&mut buf[..10], 1, 1, &quote()),
            Err(EncodeFailure::Full { .. })
        ));
    }

    #[test]
    fn every_malformed_header_is_named() {
        let mut good = vec![0u8; 64];
        let n = encode(&mut good, 9, 3, &quote()).unwrap();
        let good = &good[..n];
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut d = good.to_vec();
            f(&mut d);
            decode(&d).unwrap_err()
        };
        assert_eq!(
            decode(&good[..31]).unwrap_err(),
            BadDatagram::TooShort { len: 31 }
        );
        assert!(matches!(with(&|d| d[0] = b'X'), BadDatagram::Magic { .. }));
        assert_eq!(with(&|d| d[4] = 2), BadDatagram::Version { found: 2 });
        assert_eq!(with(&|d| d[6] = 1), BadDatagram::Reserved { found: 0x100 });
        assert_eq!(with(&|d| d[8..16].fill(0)), BadDatagram::Zero);
        assert_eq!(with(&|d| d[16..24].fill(0)), BadDatagram::Zero);
        assert!(matches!(
            with(&|d| d.push(0)),
            BadDatagram::Length { len: 65, .. }
        ));
        assert!(matches!(
            with(&|d| d[28..32].copy_from_slice(&u32::MAX.to_le_bytes())),
            BadDatagram::Length { .. }
        ));
        for (i, k) in BadDatagram::KINDS.iter().enumerate() {
            assert_eq!(BadDatagram::KINDS.iter().position(|x| x == k), Some(i));
        }
    }

    #[test]
    fn no_input_panics_the_decoder() {
        // A cheap exhaustive-ish sweep: every length up to 96 of a few fills.
        for fill in [0u8, 0xFF, b'R'] {
            for len in 0..96 {
                let mut d = vec![fill; len];
                if len >= 4 {
                    d[..4].copy_from_slice(&MAGIC);
                }
                if len >= 5 {
                    d[4] = VERSION;
                }
                let _ = decode(&d);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn any_header_decodes_back(
            sender in 1u64.., seq in 1u64.., type_id in proptest::prelude::any::<u32>(), len in 0usize..100
        ) {
            let h = DatagramHeader { sender, seq, type_id, payload_len: len as u32 };
            let mut d = vec![0u8; datagram_len(len)];
            write_header(&mut d, &h);
            proptest::prop_assert_eq!(decode(&d), Ok((h, HEADER_LEN..HEADER_LEN + len)));
        }
    }
}
