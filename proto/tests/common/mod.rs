//! Message types and helpers shared by the integration tests.
#![allow(dead_code)]

use ringwire_proto::{type_id, Decoder, FrameHeader, Item, Message, ProtoError};
use rkyv::util::AlignedVec;

/// A message with a bit of everything: fixed fields, a string, a byte vector
/// and an optional nested struct.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Order {
    pub id: u64,
    pub price: i32,
    pub symbol: String,
    pub blob: Vec<u8>,
    pub note: Option<Note>,
}

/// Nested part of [`Order`].
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Note {
    pub flags: u16,
    pub text: String,
}

impl Message for Order {
    const TYPE_ID: u32 = type_id("test.Order");
    const NAME: &'static str = "test.Order";
}

/// A second message type.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Ping {
    pub nonce: u64,
}

impl Message for Ping {
    const TYPE_ID: u32 = type_id("test.Ping");
    const NAME: &'static str = "test.Ping";
}

/// A type only one peer knows, for mismatch tests.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Extra {
    pub x: u8,
}

impl Message for Extra {
    const TYPE_ID: u32 = type_id("test.Extra");
    const NAME: &'static str = "test.Extra";
}

/// Deserializes an archived order back to an owned one.
pub fn to_owned(archived: &ArchivedOrder) -> Order {
    rkyv::deserialize::<Order, rkyv::rancor::Error>(archived).unwrap()
}

/// An owned copy of a decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedFrame {
    pub header: FrameHeader,
    pub payload: Vec<u8>,
    pub borrowed: bool,
}

/// Feeds `stream` to a fresh decoder in chunks of the given sizes (cycled),
/// each chunk copied into its own 16-byte aligned buffer like a provided
/// receive buffer, and collects every frame (bulk pieces are concatenated).
pub fn decode_chunked(
    stream: &[u8],
    cuts: &[usize],
    max_payload: u32,
) -> Result<Vec<OwnedFrame>, ProtoError> {
    let mut decoder = Decoder::new(max_payload, u32::MAX);
    let mut frames = Vec::new();
    let mut bulk: Option<OwnedFrame> = None;
    let mut at = 0;
    let mut i = 0;
    while at < stream.len() {
        let len = cuts
            .get(i % cuts.len().max(1))
            .copied()
            .unwrap_or(stream.len())
            .max(1);
        i += 1;
        let end = (at + len).min(stream.len());
        let mut chunk = AlignedVec::<16>::new();
        chunk.extend_from_slice(&stream[at..end]);
        at = end;
        let mut pos = 0;
        loop {
            let decoded = decoder.decode(&chunk[pos..])?;
            pos += decoded.consumed;
            match decoded.item {
                Some(Item::Frame(f)) => frames.push(OwnedFrame {
                    header: *f.header(),
                    payload: f.payload().to_vec(),
                    borrowed: f.is_borrowed(),
                }),
                Some(Item::Bulk(piece)) => {
                    let cur = bulk.get_or_insert_with(|| OwnedFrame {
                        header: *piece.header(),
                        payload: Vec::new(),
                        borrowed: false,
                    });
                    assert_eq!(piece.offset() as usize, cur.payload.len());
                    cur.payload.extend_from_slice(piece.bytes());
                    if piece.is_last() {
                        frames.extend(bulk.take());
                    }
                }
                None => break,
            }
        }
        assert_eq!(pos, chunk.len(), "decoder must consume whole chunks");
    }
    Ok(frames)
}
