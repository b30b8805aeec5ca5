//! Property tests: any messages, any chunking -> the same messages out.

mod common;

use common::*;
use proptest::prelude::*;
use ringwire_proto::{encode_message, Decoder, FrameHeader, FrameKind, Item, ProtoError};
use rkyv::util::AlignedVec;

fn arb_order() -> impl Strategy<Value = Order> {
    (
        any::<u64>(),
        any::<i32>(),
        ".{0,24}",
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::option::of((any::<u16>(), ".{0,12}")),
    )
        .prop_map(|(id, price, symbol, blob, note)| Order {
            id,
            price,
            symbol,
            blob,
            note: note.map(|(flags, text)| Note { flags, text }),
        })
}

fn encode_all(orders: &[Order]) -> AlignedVec<16> {
    let mut wire = AlignedVec::<16>::new();
    for (i, o) in orders.iter().enumerate() {
        let start = wire.len();
        wire.resize(start + 2048, 0);
        let mut header = FrameHeader::new(FrameKind::Message);
        header.stream = i as u32;
        header.seq = i as u64 + 1;
        let n = encode_message(&mut wire[start..], header, o).unwrap();
        wire.resize(start + n, 0);
    }
    wire
}

fn cases() -> u32 {
    if cfg!(miri) {
        4
    } else {
        256
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_chunking_yields_the_same_messages(
        orders in proptest::collection::vec(arb_order(), 0..8),
        cuts in proptest::collection::vec(1usize..200, 1..8),
    ) {
        let wire = encode_all(&orders);
        let frames = decode_chunked(&wire, &cuts, 1 << 16).unwrap();
        prop_assert_eq!(frames.len(), orders.len());
        for (i, (frame, order)) in frames.iter().zip(&orders).enumerate() {
            prop_assert_eq!(frame.header.stream, i as u32);
            prop_assert_eq!(frame.header.seq, i as u64 + 1);
            let mut aligned = AlignedVec::<16>::new();
            aligned.extend_from_slice(&frame.payload);
            let archived = ringwire_proto::access::<Order>(&aligned).unwrap();
            prop_assert_eq!(&to_owned(archived), order);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), cut in 1usize..64) {
        let mut decoder = Decoder::new(256, 256);
        for chunk in bytes.chunks(cut) {
            let mut at = 0;
            loop {
                match decoder.decode(&chunk[at..]) {
                    Ok(d) => {
                        at += d.consumed;
                        if let Some(Item::Frame(f)) = d.item {
                            let _ = f.access::<Order>();
                        }
                        if d.item.is_none() { break; }
                    }
                    Err(e) => {
                        prop_assert!(e.is_fatal());
                        prop_assert!(matches!(decoder.decode(chunk), Err(ProtoError::DecoderFailed)));
                        return Ok(());
                    }
                }
            }
        }
    }
}
