//! What two RDMA peers exchange over the TCP side channel before their
//! queue pairs carry anything.
//!
//! Each side sends one [`Exchange`] on the `rdma://` port: how to reach its
//! queue pair (number, LID, GID, initial PSN, MTU), how many receive buffers
//! it has posted and their size (the sender's initial credits), the memory
//! regions it exposes for bulk writes, and an opaque blob that carries the
//! proto handshake (hello with schema fingerprint). The layout is fixed and
//! little-endian; every field is checked, so a peer's garbage is a clear
//! [`SideChannelError`], and what decodes re-encodes to the same bytes.
//!
//! ```text
//! offset size  field
//!      0    4  magic "RWRX"
//!      4    2  version (1)
//!      6    2  flags (0; reserved)
//!      8    4  total length in bytes, this header included
//!     12    4  queue pair number (24 bits)
//!     16    2  LID
//!     18    1  path MTU code (1..=5: 256..4096 bytes)
//!     19    1  reserved (0)
//!     20   16  GID (network order, as the verbs hold it)
//!     36    4  initial send PSN (24 bits)
//!     40    4  receive credits: receive buffers posted
//!     44    4  size of each receive buffer in bytes
//!     48    2  exposed region count (at most MAX_REGIONS)
//!     50    2  reserved (0)
//!     52    4  handshake blob length (at most MAX_HANDSHAKE)
//!     56  20*n regions: address u64, length u64, rkey u32
//!      .    .  handshake blob
//! ```
//!
//! Reading from a stream: read [`PREFIX_LEN`] bytes, ask [`frame_len`] how
//! long the whole exchange is (it checks magic, version and bounds first, so
//! a bogus length never makes the reader wait for or allocate gigabytes),
//! read the rest, then [`Exchange::decode`].

use super::verbs::{Gid, Mtu, RemoteQp};

/// The magic bytes that open an exchange.
pub const MAGIC: [u8; 4] = *b"RWRX";
/// The layout version this code writes and reads.
pub const VERSION: u16 = 1;
/// Bytes needed to learn an exchange's total length.
pub const PREFIX_LEN: usize = 12;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 56;
/// Length of one exposed region entry.
pub const REGION_LEN: usize = 20;
/// Most exposed regions in one exchange.
pub const MAX_REGIONS: usize = 256;
/// Longest handshake blob.
pub const MAX_HANDSHAKE: usize = 64 * 1024;
/// Longest exchange.
pub const MAX_LEN: usize = HEADER_LEN + MAX_REGIONS * REGION_LEN + MAX_HANDSHAKE;

const PSN_MAX: u32 = (1 << 24) - 1;
const QPN_MAX: u32 = (1 << 24) - 1;

/// A malformed or unacceptable exchange.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SideChannelError {
    /// Fewer bytes than the layout needs.
    #[error("side-channel exchange truncated: {needed} bytes needed, {got} present")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// Not an exchange at all.
    #[error("not a ringwire RDMA exchange: magic {0:02x?}, expected \"RWRX\"")]
    BadMagic([u8; 4]),
    /// A layout version this code does not speak.
    #[error("side-channel exchange version {0} is not supported (this side speaks {VERSION})")]
    UnsupportedVersion(u16),
    /// Flags this version does not define.
    #[error("side-channel exchange has unknown flags {0:#06x}")]
    UnknownFlags(u16),
    /// The declared total length does not match the content.
    #[error("side-channel exchange declares {declared} bytes but its content needs {expected}")]
    LengthMismatch {
        /// The total length field.
        declared: u32,
        /// What the header's counts add up to (or the bytes present).
        expected: usize,
    },
    /// The declared length is outside the possible range.
    #[error("side-channel exchange length {0} outside {HEADER_LEN}..={MAX_LEN}")]
    BadLength(u32),
    /// More regions than allowed.
    #[error("side-channel exchange exposes {0} regions, at most {MAX_REGIONS} allowed")]
    TooManyRegions(usize),
    /// A handshake blob larger than allowed.
    #[error("side-channel handshake blob of {0} bytes, at most {MAX_HANDSHAKE} allowed")]
    HandshakeTooLarge(usize),
    /// An MTU code outside 1..=5.
    #[error("side-channel exchange has MTU code {0}, expected 1..=5")]
    BadMtu(u8),
    /// A number wider than its field allows.
    #[error("side-channel exchange field {field} = {value:#x} exceeds 24 bits")]
    OutOfRange {
        /// `"qp_num"` or `"psn"`.
        field: &'static str,
        /// The value.
        value: u32,
    },
    /// A reserved byte is not zero.
    #[error("side-channel exchange has non-zero reserved bytes at offset {0}")]
    Reserved(usize),
    /// Receive credits without a buffer size.
    #[error("side-channel exchange grants {0} receive credits of size 0")]
    EmptyCredits(u32),
    /// An exposed region that is empty or wraps around the address space.
    #[error("exposed region {index} ({len} bytes at {addr:#x}) is empty or wraps around")]
    BadRegion {
        /// Its position in the list.
        index: usize,
        /// Its address.
        addr: u64,
        /// Its length.
        len: u64,
    },
}

/// A memory region a peer exposes for RDMA WRITEs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExposedRegion {
    /// Address of its first byte, in the exposing peer's address space.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// The remote key that allows writing it.
    pub rkey: u32,
}

/// Receive buffers a peer has posted: the other side's initial credits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credits {
    /// Receive buffers posted.
    pub count: u32,
    /// Bytes in each.
    pub size: u32,
}

/// One side's half of the connection set-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// The sender's queue pair number (24 bits).
    pub qp_num: u32,
    /// Its port's LID.
    pub lid: u16,
    /// Its port's GID.
    pub gid: Gid,
    /// Its initial send PSN (24 bits).
    pub psn: u32,
    /// Its port's active MTU (the path uses the smaller of both).
    pub mtu: Mtu,
    /// Its posted receive buffers.
    pub credits: Credits,
    /// Regions it exposes for bulk writes.
    pub regions: Vec<ExposedRegion>,
    /// The proto handshake (hello), opaque here.
    pub handshake: Vec<u8>,
}

impl Exchange {
    /// The queue pair address and PSN the other side connects to.
    pub fn remote_qp(&self) -> RemoteQp {
        RemoteQp {
            qp_num: self.qp_num,
            lid: self.lid,
            gid: self.gid,
            psn: self.psn,
        }
    }

    /// Bytes [`Exchange::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.regions.len() * REGION_LEN + self.handshake.len()
    }

    /// Checks what [`Exchange::decode`] would refuse.
    pub fn validate(&self) -> Result<(), SideChannelError> {
        if self.qp_num > QPN_MAX {
            return Err(SideChannelError::OutOfRange {
                field: "qp_num",
                value: self.qp_num,
            });
        }
        if self.psn > PSN_MAX {
            return Err(SideChannelError::OutOfRange {
                field: "psn",
                value: self.psn,
            });
        }
        if self.credits.count > 0 && self.credits.size == 0 {
            return Err(SideChannelError::EmptyCredits(self.credits.count));
        }
        if self.regions.len() > MAX_REGIONS {
            return Err(SideChannelError::TooManyRegions(self.regions.len()));
        }
        if self.handshake.len() > MAX_HANDSHAKE {
            return Err(SideChannelError::HandshakeTooLarge(self.handshake.len()));
        }
        for (index, r) in self.regions.iter().enumerate() {
            if r.len == 0 || r.addr.checked_add(r.len).is_none() {
                return Err(SideChannelError::BadRegion {
                    index,
                    addr: r.addr,
                    len: r.len,
                });
            }
        }
        Ok(())
    }

    /// Appends the encoded exchange to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), SideChannelError> {
        self.validate()?;
        let len = self.encoded_len();
        out.reserve(len);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&self.qp_num.to_le_bytes());
        out.extend_from_slice(&self.lid.to_le_bytes());
        out.push(self.mtu.code());
        out.push(0);
        out.extend_from_slice(&self.gid.0);
        out.extend_from_slice(&self.psn.to_le_bytes());
        out.extend_from_slice(&self.credits.count.to_le_bytes());
        out.extend_from_slice(&self.credits.size.to_le_bytes());
        out.extend_from_slice(&(self.regions.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(self.handshake.len() as u32).to_le_bytes());
        for r in &self.regions {
            out.extend_from_slice(&r.addr.to_le_bytes());
            out.extend_from_slice(&r.len.to_le_bytes());
            out.extend_from_slice(&r.rkey.to_le_bytes());
        }
        out.extend_from_slice(&self.handshake);
        Ok(())
    }

    /// Decodes exactly one exchange: `bytes` must hold all of it and nothing
    /// more.
    pub fn decode(bytes: &[u8]) -> Result<Exchange, SideChannelError> {
        let Some(declared) = frame_len(bytes)? else {
            return Err(SideChannelError::Truncated {
                needed: PREFIX_LEN,
                got: bytes.len(),
            });
        };
        if bytes.len() < HEADER_LEN {
            return Err(SideChannelError::Truncated {
                needed: HEADER_LEN,
                got: bytes.len(),
            });
        }
        let r = Reader(bytes);
        let flags = r.u16(6);
        if flags != 0 {
            return Err(SideChannelError::UnknownFlags(flags));
        }
        let region_count = usize::from(r.u16(48));
        let blob_len = r.u32(52) as usize;
        if region_count > MAX_REGIONS {
            return Err(SideChannelError::TooManyRegions(region_count));
        }
        if blob_len > MAX_HANDSHAKE {
            return Err(SideChannelError::HandshakeTooLarge(blob_len));
        }
        let expected = HEADER_LEN + region_count * REGION_LEN + blob_len;
        if declared != expected {
            return Err(SideChannelError::LengthMismatch {
                declared: declared as u32,
                expected,
            });
        }
        if bytes.len() != declared {
            if bytes.len() < declared {
                return Err(SideChannelError::Truncated {
                    needed: declared,
                    got: bytes.len(),
                });
            }
            return Err(SideChannelError::LengthMismatch {
                declared: declared as u32,
                expected: bytes.len(),
            });
        }
        for offset in [19, 50, 51] {
            if bytes[offset] != 0 {
                return Err(SideChannelError::Reserved(offset));
            }
        }
        let mtu_code = bytes[18];
        let mtu = Mtu::from_code(mtu_code).ok_or(SideChannelError::BadMtu(mtu_code))?;
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&bytes[20..36]);
        let regions = (0..region_count)
            .map(|i| {
                let at = HEADER_LEN + i * REGION_LEN;
                ExposedRegion {
                    addr: r.u64(at),
                    len: r.u64(at + 8),
                    rkey: r.u32(at + 16),
                }
            })
            .collect();
        let blob_at = HEADER_LEN + region_count * REGION_LEN;
        let exchange = Exchange {
            qp_num: r.u32(12),
            lid: r.u16(16),
            gid: Gid(gid),
            psn: r.u32(36),
            mtu,
            credits: Credits {
                count: r.u32(40),
                size: r.u32(44),
            },
            regions,
            handshake: bytes[blob_at..].to_vec(),
        };
        exchange.validate()?;
        Ok(exchange)
    }
}

/// The total length of the exchange that `prefix` starts, once at least
/// [`PREFIX_LEN`] bytes are there (`Ok(None)` before). Checks the magic,
/// the version and the length's bounds first.
pub fn frame_len(prefix: &[u8]) -> Result<Option<usize>, SideChannelError> {
    let magic_len = prefix.len().min(4);
    if prefix[..magic_len] != MAGIC[..magic_len] {
        let mut got = [0u8; 4];
        got[..magic_len].copy_from_slice(&prefix[..magic_len]);
        return Err(SideChannelError::BadMagic(got));
    }
    if prefix.len() < PREFIX_LEN {
        return Ok(None);
    }
    let r = Reader(prefix);
    let version = r.u16(4);
    if version != VERSION {
        return Err(SideChannelError::UnsupportedVersion(version));
    }
    let len = r.u32(8);
    if (len as usize) < HEADER_LEN || len as usize > MAX_LEN {
        return Err(SideChannelError::BadLength(len));
    }
    Ok(Some(len as usize))
}

/// Little-endian reads at offsets the caller has bounds-checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.0[at..at + N]);
        a
    }
    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.array(at))
    }
    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.array(at))
    }
    fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.array(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Exchange {
        Exchange {
            qp_num: 0x1234,
            lid: 7,
            gid: Gid([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]),
            psn: 0xabcdef,
            mtu: Mtu::Mtu4096,
            credits: Credits {
                count: 64,
                size: 16384,
            },
            regions: vec![ExposedRegion {
                addr: 0x7f00_0000_1000,
                len: 1 << 21,
                rkey: 0x55aa,
            }],
            handshake: b"hello".to_vec(),
        }
    }

    fn encoded(e: &Exchange) -> Vec<u8> {
        let mut out = Vec::new();
        e.encode(&mut out).unwrap();
        out
    }

    #[test]
    fn layout_is_fixed() {
        let bytes = encoded(&sample());
        assert_eq!(bytes.len(), HEADER_LEN + REGION_LEN + 5);
        assert_eq!(&bytes[0..4], b"RWRX");
        assert_eq!(&bytes[4..6], &[1, 0]);
        assert_eq!(&bytes[8..12], &(bytes.len() as u32).to_le_bytes());
        assert_eq!(&bytes[12..16], &[0x34, 0x12, 0, 0]);
        assert_eq!(bytes[18], 5);
        assert_eq!(&bytes[36..40], &[0xef, 0xcd, 0xab, 0]);
        assert_eq!(&bytes[56..64], &0x7f00_0000_1000u64.to_le_bytes());
        assert_eq!(&bytes[bytes.len() - 5..], b"hello");
        assert_eq!(frame_len(&bytes[..PREFIX_LEN]), Ok(Some(bytes.len())));
        assert_eq!(frame_len(&bytes[..PREFIX_LEN - 1]), Ok(None));
    }

    #[test]
    fn each_malformation_has_its_error() {
        let good = encoded(&sample());
        let with = |at: usize, b: u8| {
            let mut v = good.clone();
            v[at] = b;
            Exchange::decode(&v)
        };
        assert!(matches!(with(0, b'X'), Err(SideChannelError::BadMagic(_))));
        assert_eq!(with(4, 2), Err(SideChannelError::UnsupportedVersion(2)));
        assert_eq!(with(6, 1), Err(SideChannelError::UnknownFlags(1)));
        assert!(matches!(
            with(8, 0xff),
            Err(SideChannelError::BadLength(_)) | Err(SideChannelError::LengthMismatch { .. })
        ));
        assert_eq!(
            with(15, 1),
            Err(SideChannelError::OutOfRange {
                field: "qp_num",
                value: 0x0100_1234
            })
        );
        assert_eq!(with(18, 9), Err(SideChannelError::BadMtu(9)));
        assert_eq!(with(19, 1), Err(SideChannelError::Reserved(19)));
        assert!(matches!(
            with(39, 1),
            Err(SideChannelError::OutOfRange { field: "psn", .. })
        ));
        assert!(matches!(
            with(48, 2),
            Err(SideChannelError::LengthMismatch { .. })
        ));
        assert_eq!(with(51, 1), Err(SideChannelError::Reserved(51)));
        assert!(matches!(
            with(54, 1),
            Err(SideChannelError::HandshakeTooLarge(_))
        ));
        // An empty region.
        let mut v = good.clone();
        v[64..72].fill(0);
        assert!(matches!(
            Exchange::decode(&v),
            Err(SideChannelError::BadRegion { index: 0, .. })
        ));
        // Credits of size zero.
        let mut v = good.clone();
        v[44..48].fill(0);
        assert_eq!(
            Exchange::decode(&v),
            Err(SideChannelError::EmptyCredits(64))
        );
        // Trailing bytes.
        let mut v = good.clone();
        v.push(0);
        assert!(matches!(
            Exchange::decode(&v),
            Err(SideChannelError::LengthMismatch { .. })
        ));
        assert!(matches!(
            frame_len(b"GET / HTTP/1.1"),
            Err(SideChannelError::BadMagic(_))
        ));
        assert!(matches!(frame_len(b"RW"), Ok(None)));
        assert!(matches!(
            frame_len(b"RX"),
            Err(SideChannelError::BadMagic(_))
        ));
    }

    #[test]
    fn encode_refuses_what_decode_would() {
        let mut e = sample();
        e.psn = 1 << 24;
        assert!(e.encode(&mut Vec::new()).is_err());
        let mut e = sample();
        e.handshake = vec![0; MAX_HANDSHAKE + 1];
        assert_eq!(
            e.encode(&mut Vec::new()),
            Err(SideChannelError::HandshakeTooLarge(MAX_HANDSHAKE + 1))
        );
        let mut e = sample();
        e.regions = vec![e.regions[0]; MAX_REGIONS + 1];
        assert!(e.encode(&mut Vec::new()).is_err());
    }

    fn arb_exchange() -> impl Strategy<Value = Exchange> {
        let region = (any::<u64>(), 1u64..=u64::MAX, any::<u32>()).prop_filter_map(
            "no wrap-around",
            |(addr, len, rkey)| {
                addr.checked_add(len)
                    .map(|_| ExposedRegion { addr, len, rkey })
            },
        );
        (
            (0..=QPN_MAX, any::<u16>(), any::<[u8; 16]>(), 0..=PSN_MAX),
            (1u8..=5, any::<u32>(), 1..=u32::MAX),
            prop::collection::vec(region, 0..8),
            prop::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(
                |((qp_num, lid, gid, psn), (mtu, count, size), regions, handshake)| Exchange {
                    qp_num,
                    lid,
                    gid: Gid(gid),
                    psn,
                    mtu: Mtu::from_code(mtu).unwrap_or(Mtu::Mtu1024),
                    credits: Credits { count, size },
                    regions,
                    handshake,
                },
            )
    }

    proptest! {
        #[test]
        fn round_trips(e in arb_exchange()) {
            let bytes = encoded(&e);
            prop_assert_eq!(bytes.len(), e.encoded_len());
            prop_assert_eq!(frame_len(&bytes), Ok(Some(bytes.len())));
            prop_assert_eq!(Exchange::decode(&bytes), Ok(e));
        }

        #[test]
        fn every_truncation_is_refused(e in arb_exchange(), cut in any::<prop::sample::Index>()) {
            let bytes = encoded(&e);
            let cut = cut.index(bytes.len());
            prop_assert!(Exchange::decode(&bytes[..cut]).is_err());
        }

        #[test]
        fn garbage_never_panics_and_what_parses_is_canonical(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = frame_len(&bytes);
            if let Ok(e) = Exchange::decode(&bytes) {
                prop_assert_eq!(encoded(&e), bytes);
            }
        }

        #[test]
        fn corrupted_exchanges_never_panic(e in arb_exchange(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = encoded(&e);
            let at = at.index(bytes.len());
            bytes[at] = byte;
            if let Ok(d) = Exchange::decode(&bytes) {
                prop_assert_eq!(encoded(&d), bytes);
            }
        }
    }
}
