//! Two-phase bulk: the descriptor that announces segment sizes, and the
//! receive-side state of a transfer.
//!
//! A message frame with the [`HAS_BULK`](crate::header::flags::HAS_BULK) flag
//! starts its payload with a bulk descriptor (`u32` segment count, then one
//! `u32` length per segment, zero-padded to 16 bytes) followed by the rkyv
//! archive of the metadata. It is followed on the wire by one
//! [`Bulk`](crate::FrameKind::Bulk) frame per segment, in order.
//!
//! The receiver sees the metadata and the sizes first (phase one), picks a
//! destination of exactly that size per segment (a registered buffer, later an
//! RDMA memory region) and the segment bytes are written there as they arrive
//! (phase two). Compared with Lightbeam's `RecvMetadata`/`RecvBulks` there is
//! nothing to poll and nothing to free: the session hands the filled
//! destinations back in a single `BulkComplete` event.

use crate::error::ProtoError;
use crate::header::{padded_len, FrameHeader};

/// Bytes of a descriptor for `segments` segments (including padding), so
/// that the archive after it stays 16-byte aligned.
pub const fn descriptor_len(segments: usize) -> usize {
    padded_len(4 + 4 * segments)
}

/// Writes a descriptor for `lens` into `out` (which must be
/// [`descriptor_len`] bytes long).
pub(crate) fn write_descriptor(out: &mut [u8], lens: &[u32]) {
    out.fill(0);
    // Callers bound the count by the frame size, far below u32::MAX.
    let count = u32::try_from(lens.len()).unwrap_or(u32::MAX);
    out[..4].copy_from_slice(&count.to_le_bytes());
    for (slot, len) in out[4..].chunks_exact_mut(4).zip(lens) {
        slot.copy_from_slice(&len.to_le_bytes());
    }
}

/// The announced segment sizes of a bulk message, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkSizes<'a> {
    raw: &'a [u8],
}

impl<'a> BulkSizes<'a> {
    /// Number of segments (at least 1).
    pub fn len(&self) -> usize {
        self.raw.len() / 4
    }

    /// Always false: a bulk message has at least one segment.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Size of segment `index`.
    pub fn get(&self, index: usize) -> Option<u32> {
        let bytes = self.raw.get(index * 4..index * 4 + 4)?;
        let mut word = [0u8; 4];
        word.copy_from_slice(bytes);
        Some(u32::from_le_bytes(word))
    }

    /// All sizes, in segment order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        self.raw.chunks_exact(4).map(|c| {
            let mut word = [0u8; 4];
            word.copy_from_slice(c);
            u32::from_le_bytes(word)
        })
    }

    /// Sum of all sizes.
    pub fn total(&self) -> u64 {
        self.iter().map(u64::from).sum()
    }
}

/// Splits a message frame's payload into its optional bulk descriptor (when
/// the header has the bulk flag) and the rkyv archive.
pub fn bulk_body<'a>(
    header: &FrameHeader,
    payload: &'a [u8],
) -> Result<(Option<BulkSizes<'a>>, &'a [u8]), ProtoError> {
    split_body(header, payload)
}

/// Splits a message payload into its optional bulk descriptor and the
/// archive.
pub(crate) fn split_body<'a>(
    header: &FrameHeader,
    payload: &'a [u8],
) -> Result<(Option<BulkSizes<'a>>, &'a [u8]), ProtoError> {
    if !header.has_bulk() {
        return Ok((None, payload));
    }
    let malformed = |detail| ProtoError::Malformed {
        what: "bulk descriptor",
        detail,
    };
    let count = payload
        .first_chunk::<4>()
        .map(|c| u32::from_le_bytes(*c) as usize)
        .ok_or(malformed("truncated count"))?;
    if count == 0 {
        return Err(malformed("zero segments"));
    }
    // count <= payload.len() / 4 keeps the arithmetic below in range.
    if count > payload.len() / 4 {
        return Err(malformed("count exceeds frame"));
    }
    let desc = descriptor_len(count);
    if payload.len() < desc {
        return Err(malformed("count exceeds frame"));
    }
    Ok((
        Some(BulkSizes {
            raw: &payload[4..4 + 4 * count],
        }),
        &payload[desc..],
    ))
}

/// Receive-side state of the bulk transfer following one message.
#[derive(Debug)]
pub(crate) enum BulkIn<B> {
    /// No bulk transfer in progress.
    Idle,
    /// Metadata delivered; waiting for the application to accept or discard.
    Offered { msg_seq: u64, sizes: Vec<u32> },
    /// Destinations chosen; segment bytes are copied into them, or placed by
    /// the caller (external destinations).
    Receiving {
        msg_seq: u64,
        dests: Dests<B>,
        next: usize,
    },
    /// The application declined; segment bytes are skipped.
    Discarding {
        msg_seq: u64,
        sizes: Vec<u32>,
        next: usize,
    },
}

/// Where an accepted transfer's segments go.
#[derive(Debug)]
pub(crate) enum Dests<B> {
    /// Buffers handed to the session, filled by it.
    Owned(Vec<B>),
    /// Memory the caller holds and fills itself (for example by receiving
    /// straight into it); the session keeps only the sizes.
    External(Vec<u32>),
}

impl<B: AsMut<[u8]>> Dests<B> {
    /// Number of segments.
    pub(crate) fn count(&self) -> usize {
        match self {
            Dests::Owned(d) => d.len(),
            Dests::External(s) => s.len(),
        }
    }

    /// Size of segment `index`.
    pub(crate) fn len_of(&mut self, index: usize) -> Option<u64> {
        match self {
            Dests::Owned(d) => d.get_mut(index).map(|d| d.as_mut().len() as u64),
            Dests::External(s) => s.get(index).map(|&s| u64::from(s)),
        }
    }

    /// The filled buffers (none for external destinations).
    pub(crate) fn into_owned(self) -> Vec<B> {
        match self {
            Dests::Owned(d) => d,
            Dests::External(_) => Vec::new(),
        }
    }
}

/// Send-side state: segments still owed after a bulk message.
#[derive(Debug, Clone)]
pub(crate) struct BulkOut {
    pub(crate) msg_seq: u64,
    pub(crate) lens: Vec<u32>,
    pub(crate) next: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::{flags, FrameKind};

    #[test]
    fn descriptor_round_trips_and_keeps_alignment() {
        let lens = [5u32, 0, 70_000];
        let mut buf = vec![0xffu8; descriptor_len(lens.len()) + 3];
        let desc = descriptor_len(lens.len());
        assert_eq!(desc, 16);
        write_descriptor(&mut buf[..desc], &lens);
        let mut header = FrameHeader::new(FrameKind::Message);
        header.flags = flags::HAS_BULK;
        let (sizes, archive) = split_body(&header, &buf).unwrap();
        let sizes = sizes.unwrap();
        assert_eq!(sizes.iter().collect::<Vec<_>>(), lens);
        assert_eq!(sizes.total(), 70_005);
        assert_eq!(archive.len(), 3);
    }

    #[test]
    fn malformed_descriptors_are_errors() {
        let mut header = FrameHeader::new(FrameKind::Message);
        header.flags = flags::HAS_BULK;
        for payload in [
            &[][..],
            &[0, 0, 0, 0][..],
            &[9, 0, 0, 0, 1, 0, 0, 0][..],
            &[0xff; 8][..],
        ] {
            assert!(matches!(
                split_body(&header, payload),
                Err(ProtoError::Malformed { .. })
            ));
        }
    }
}
