//! Decoder and encoder behaviour: zero-copy views, assembly across chunks,
//! limits, padding, typed access.

mod common;

use common::*;
use ringwire_proto::{
    encode_bulk_header, encode_frame, encode_message, encode_message_with_bulk, frame_len, Decoder,
    FrameHeader, FrameKind, Item, Message, ProtoError, Schema, HEADER_LEN,
};
use rkyv::util::AlignedVec;

fn order(n: u64) -> Order {
    Order {
        id: n,
        price: -7,
        symbol: "RWIRE".into(),
        blob: vec![n as u8; n as usize % 50],
        note: (n % 2 == 0).then(|| Note {
            flags: 3,
            text: "hello".into(),
        }),
    }
}

fn encode_into(buf: &mut AlignedVec<16>, value: &Order, stream: u32) -> usize {
    let start = buf.len();
    buf.resize(start + 4096, 0);
    let mut header = FrameHeader::new(FrameKind::Message);
    header.stream = stream;
    let n = encode_message(&mut buf[start..], header, value).unwrap();
    buf.resize(start + n, 0);
    n
}

#[test]
fn frames_in_one_chunk_are_borrowed_and_validate() {
    let mut wire = AlignedVec::<16>::new();
    for n in 0..5 {
        encode_into(&mut wire, &order(n), n as u32);
    }
    assert_eq!(wire.len() % 16, 0);
    let mut decoder = Decoder::new(1 << 16, 1 << 16);
    let mut at = 0;
    let mut seen = 0;
    loop {
        let decoded = decoder.decode(&wire[at..]).unwrap();
        at += decoded.consumed;
        let Some(Item::Frame(frame)) = decoded.item else {
            break;
        };
        assert!(
            frame.is_borrowed(),
            "whole frame in an aligned chunk must not be copied"
        );
        assert_eq!(frame.header().stream, seen);
        let archived = frame.access::<Order>().unwrap();
        assert_eq!(to_owned(archived), order(u64::from(seen)));
        // SAFETY: this test encoded the frame itself, as an `Order`, with this
        // binary's rkyv, into an aligned buffer.
        let trusted = unsafe { frame.access_trusted::<Order>() }.unwrap();
        assert_eq!(trusted.id, u64::from(seen));
        seen += 1;
    }
    assert_eq!(seen, 5);
    assert_eq!(at, wire.len());
    assert!(decoder.is_idle());
}

#[test]
fn byte_at_a_time_assembles_once() {
    let mut wire = AlignedVec::<16>::new();
    encode_into(&mut wire, &order(4), 0);
    let frames = decode_chunked(&wire, &[1], 1 << 16).unwrap();
    assert_eq!(frames.len(), 1);
    assert!(!frames[0].borrowed);
    assert_eq!(
        frames[0].payload.len(),
        frames[0].header.payload_len as usize
    );
}

#[test]
fn misaligned_chunk_is_assembled_not_borrowed() {
    let mut wire = AlignedVec::<16>::new();
    wire.push(0xEE);
    encode_into(&mut wire, &order(2), 0);
    let mut decoder = Decoder::new(1 << 16, 1 << 16);
    let decoded = decoder.decode(&wire[1..]).unwrap();
    let Some(Item::Frame(frame)) = decoded.item else {
        panic!("expected a frame");
    };
    assert!(!frame.is_borrowed());
    assert_eq!(frame.access::<Order>().unwrap().id, 2);
}

#[test]
fn oversized_announcement_fails_before_allocating_and_stays_failed() {
    let mut header = [0u8; HEADER_LEN];
    let mut h = FrameHeader::new(FrameKind::Message);
    h.payload_len = u32::MAX;
    h.write(&mut header);
    let mut decoder = Decoder::new(1024, 4096);
    let err = decoder.decode(&header).unwrap_err();
    assert!(matches!(
        err,
        ProtoError::FrameTooLarge {
            announced: 4_294_967_295,
            limit: 1024
        }
    ));
    assert!(err.is_fatal());
    assert!(matches!(
        decoder.decode(&[0; 64]),
        Err(ProtoError::DecoderFailed)
    ));
    decoder.reset();
    let mut ok = [0u8; 32];
    FrameHeader::new(FrameKind::Heartbeat).write(&mut ok);
    assert!(matches!(
        decoder.decode(&ok).unwrap().item,
        Some(Item::Frame(_))
    ));

    let mut bulk = FrameHeader::new(FrameKind::Bulk);
    bulk.payload_len = 4097;
    bulk.write(&mut header);
    let mut decoder = Decoder::new(1024, 4096);
    assert!(matches!(
        decoder.decode(&header),
        Err(ProtoError::FrameTooLarge { limit: 4096, .. })
    ));
}

#[test]
fn bulk_segments_stream_as_pieces_and_skip_padding() {
    let data: Vec<u8> = (0..100u8).collect();
    let mut wire = AlignedVec::<16>::new();
    wire.resize(HEADER_LEN, 0);
    let mut header = FrameHeader::new(FrameKind::Bulk);
    header.correlation = 1;
    let pad = encode_bulk_header(&mut wire, header, 100).unwrap();
    assert_eq!(pad, 12);
    wire.extend_from_slice(&data);
    wire.extend_from_slice(&[0; 12]);
    let mut hb = [0u8; 32];
    FrameHeader::new(FrameKind::Heartbeat).write(&mut hb);
    wire.extend_from_slice(&hb);
    let frames = decode_chunked(&wire, &[7, 33, 1], 64).unwrap();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].header.kind, FrameKind::Bulk);
    assert_eq!(
        frames[0].payload, data,
        "bulk above max_payload is streamed, not refused"
    );
    assert_eq!(frames[1].header.kind, FrameKind::Heartbeat);
}

#[test]
fn wrong_type_and_corrupt_archives_are_errors() {
    let mut wire = AlignedVec::<16>::new();
    encode_into(&mut wire, &order(3), 0);
    let mut decoder = Decoder::new(1 << 16, 1 << 16);
    let Some(Item::Frame(frame)) = decoder.decode(&wire).unwrap().item else {
        panic!("expected a frame");
    };
    assert!(matches!(
        frame.access::<Ping>(),
        Err(ProtoError::WrongType { .. })
    ));

    // Point the root's string at a wild offset: bytecheck must refuse it.
    let mut bad = wire.clone();
    let len = bad.len();
    for b in &mut bad[HEADER_LEN..len] {
        *b = 0xFF;
    }
    let mut decoder = Decoder::new(1 << 16, 1 << 16);
    let Some(Item::Frame(frame)) = decoder.decode(&bad).unwrap().item else {
        panic!("expected a frame");
    };
    let schema = Schema::new().with::<Order>().unwrap();
    let (_, archive) = frame.body().unwrap();
    assert!(matches!(
        schema.validate(Order::TYPE_ID, archive),
        Err(ProtoError::Validation { .. })
    ));
    assert!(matches!(
        schema.validate(12345, archive),
        Err(ProtoError::UnknownType(12345))
    ));
}

#[test]
fn encoder_reports_needed_size_for_small_buffers() {
    let big = Order {
        blob: vec![1; 3000],
        ..order(1)
    };
    let mut small = AlignedVec::<16>::new();
    small.resize(1024, 0);
    let err = encode_message(&mut small, FrameHeader::new(FrameKind::Message), &big).unwrap_err();
    let ProtoError::BufferTooSmall { needed, available } = err else {
        panic!("expected BufferTooSmall, got {err:?}");
    };
    assert_eq!(available, 1024);
    assert!(needed > 1024);
    let mut enough = AlignedVec::<16>::new();
    enough.resize(8192, 0);
    let n = encode_message(&mut enough, FrameHeader::new(FrameKind::Message), &big).unwrap();
    assert!(n > 3000 && n % 16 == 0);
}

#[test]
fn bulk_descriptor_precedes_an_aligned_archive() {
    let mut buf = AlignedVec::<16>::new();
    buf.resize(1024, 0);
    let n = encode_message_with_bulk(
        &mut buf,
        FrameHeader::new(FrameKind::Message),
        &Ping { nonce: 5 },
        &[10, 20],
    )
    .unwrap();
    let mut decoder = Decoder::new(1 << 16, 1 << 16);
    let Some(Item::Frame(frame)) = decoder.decode(&buf[..n]).unwrap().item else {
        panic!("expected a frame");
    };
    assert!(frame.header().has_bulk());
    let (sizes, archive) = frame.body().unwrap();
    assert_eq!(sizes.unwrap().iter().collect::<Vec<_>>(), [10, 20]);
    assert_eq!(archive.as_ptr() as usize % 16, 0);
    assert_eq!(frame.access::<Ping>().unwrap().nonce, 5);
}

#[test]
fn opaque_frames_round_trip() {
    let mut buf = [0u8; 64];
    let n = encode_frame(&mut buf, FrameHeader::new(FrameKind::Close), &[1; 16]).unwrap();
    assert_eq!(n, frame_len(16));
    let frames = decode_chunked(&buf[..n], &[5], 64).unwrap();
    assert_eq!(frames[0].payload, [1; 16]);
}
