//! Writing frames into caller-provided buffers.
//!
//! Nothing here allocates: every function takes the destination as
//! `&mut [u8]` (normally one of the runtime's registered send buffers), writes
//! the header, the payload and the zero padding, and returns the number of
//! bytes to send. Message payloads are serialized by rkyv directly behind the
//! header, so there is no intermediate copy.
//!
//! Encoders fill in `kind`-independent fields only from the caller's
//! [`FrameHeader`]; sequence numbers and correlation ids are the session's
//! business (see [`Session`](crate::Session)).

use crate::bulk::{descriptor_len, write_descriptor};
use crate::error::ProtoError;
use crate::header::{flags, frame_len, padded_len, FrameHeader, HEADER_LEN};
use crate::message::Message;
use crate::writer::{EncodeError, SliceWriter};

/// Writes a frame with an opaque `payload`. Sets `header.payload_len`.
/// Returns the frame's total length (header, payload, padding).
pub fn encode_frame(
    buf: &mut [u8],
    mut header: FrameHeader,
    payload: &[u8],
) -> Result<usize, ProtoError> {
    let total = frame_len(payload.len());
    let available = buf.len();
    header.payload_len = u32::try_from(payload.len()).map_err(|_| ProtoError::FrameTooLarge {
        announced: payload.len() as u64,
        limit: u64::from(u32::MAX),
    })?;
    let out = buf.get_mut(..total).ok_or(ProtoError::BufferTooSmall {
        needed: total,
        available,
    })?;
    let (head, rest) = out.split_at_mut(HEADER_LEN);
    write_header(head, &header);
    rest[..payload.len()].copy_from_slice(payload);
    rest[payload.len()..].fill(0);
    Ok(total)
}

/// Serializes `value` as a message frame. The header's `kind` should be a
/// message kind ([`Message`](crate::FrameKind::Message),
/// [`Request`](crate::FrameKind::Request) or [`Reply`](crate::FrameKind::Reply));
/// `type_id` and `payload_len` are filled in. Returns the frame's length.
pub fn encode_message<T: Message>(
    buf: &mut [u8],
    header: FrameHeader,
    value: &T,
) -> Result<usize, ProtoError> {
    encode_message_with_bulk(buf, header, value, &[])
}

/// Like [`encode_message`], announcing `bulk_lens` bulk segments that must
/// follow as [`Bulk`](crate::FrameKind::Bulk) frames. With an empty
/// `bulk_lens` this is exactly [`encode_message`].
pub fn encode_message_with_bulk<T: Message>(
    buf: &mut [u8],
    mut header: FrameHeader,
    value: &T,
    bulk_lens: &[u32],
) -> Result<usize, ProtoError> {
    let available = buf.len();
    let prefix = if bulk_lens.is_empty() {
        header.flags &= !flags::HAS_BULK;
        0
    } else {
        header.flags |= flags::HAS_BULK;
        descriptor_len(bulk_lens.len())
    };
    let body_at = HEADER_LEN + prefix;
    if available < body_at {
        return Err(ProtoError::BufferTooSmall {
            needed: body_at,
            available,
        });
    }
    let body = &mut buf[HEADER_LEN..];
    let (desc, archive) = body.split_at_mut(prefix);
    if !bulk_lens.is_empty() {
        write_descriptor(desc, bulk_lens);
    }
    let archive_len =
        match rkyv::api::high::to_bytes_in::<_, EncodeError>(value, SliceWriter::new(archive)) {
            Ok(writer) => writer.len(),
            Err(EncodeError::Full { needed }) => {
                return Err(ProtoError::BufferTooSmall {
                    needed: frame_len(prefix + needed),
                    available,
                })
            }
            Err(source) => {
                return Err(ProtoError::Serialize {
                    type_id: T::TYPE_ID,
                    source,
                })
            }
        };
    let payload_len = prefix + archive_len;
    let total = frame_len(payload_len);
    header.type_id = T::TYPE_ID;
    header.payload_len = u32::try_from(payload_len).map_err(|_| ProtoError::FrameTooLarge {
        announced: payload_len as u64,
        limit: u64::from(u32::MAX),
    })?;
    let pad = buf
        .get_mut(HEADER_LEN + payload_len..total)
        .ok_or(ProtoError::BufferTooSmall {
            needed: total,
            available,
        })?;
    pad.fill(0);
    write_header(&mut buf[..HEADER_LEN], &header);
    Ok(total)
}

/// Writes the header of a bulk segment frame carrying `data_len` bytes and
/// returns how many zero bytes of padding must follow the data.
///
/// For zero-copy sends: the transport sends these 32 header bytes, then the
/// segment straight from its memory, then the padding (gather write).
pub fn encode_bulk_header(
    buf: &mut [u8],
    mut header: FrameHeader,
    data_len: u32,
) -> Result<usize, ProtoError> {
    let available = buf.len();
    let head = buf
        .get_mut(..HEADER_LEN)
        .ok_or(ProtoError::BufferTooSmall {
            needed: HEADER_LEN,
            available,
        })?;
    header.payload_len = data_len;
    write_header(head, &header);
    let data_len = data_len as usize;
    Ok(padded_len(data_len) - data_len)
}

fn write_header(out: &mut [u8], header: &FrameHeader) {
    let mut bytes = [0u8; HEADER_LEN];
    header.write(&mut bytes);
    out[..HEADER_LEN].copy_from_slice(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::FrameKind;

    #[test]
    fn encode_frame_pads_with_zeros_and_reports_small_buffers() {
        let mut buf = [0xAAu8; 64];
        let n = encode_frame(&mut buf, FrameHeader::new(FrameKind::Heartbeat), b"abc").unwrap();
        assert_eq!(n, 48);
        assert_eq!(&buf[32..35], b"abc");
        assert!(buf[35..48].iter().all(|&b| b == 0));
        assert_eq!(buf[48], 0xAA, "bytes past the frame are untouched");
        let mut small = [0u8; 40];
        assert!(matches!(
            encode_frame(&mut small, FrameHeader::new(FrameKind::Heartbeat), b"abc"),
            Err(ProtoError::BufferTooSmall {
                needed: 48,
                available: 40
            })
        ));
    }
}
