//! Decoder fuzz target: arbitrary bytes, cut into chunks whose sizes come
//! from the input too, must never panic; every frame the decoder returns
//! must be consistent with its header, and typed access must either
//! validate or fail cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwire_proto::{type_id, Decoder, Item, Message, Schema};
use rkyv::util::AlignedVec;

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Sample {
    id: u64,
    name: String,
    data: Vec<u8>,
}

impl Message for Sample {
    const TYPE_ID: u32 = type_id("fuzz.Sample");
    const NAME: &'static str = "fuzz.Sample";
}

fuzz_target!(|input: &[u8]| {
    let Some((&cut, bytes)) = input.split_first() else {
        return;
    };
    let schema = Schema::new().with::<Sample>().expect("one type");
    let mut decoder = Decoder::new(4096, 1 << 20);
    let chunk_len = usize::from(cut % 64) + 1;
    for chunk in bytes.chunks(chunk_len) {
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(chunk);
        let mut at = 0;
        while at < aligned.len() {
            match decoder.decode(&aligned[at..]) {
                Ok(decoded) => {
                    assert!(decoded.consumed > 0, "no progress on non-empty input");
                    at += decoded.consumed;
                    match decoded.item {
                        Some(Item::Frame(frame)) => {
                            assert_eq!(frame.payload().len(), frame.header().payload_len as usize);
                            assert!(frame.payload().len() <= 4096);
                            if let Ok((_, archive)) = frame.body() {
                                if let Ok(valid) = schema.validate(frame.header().type_id, archive)
                                {
                                    let _ = valid;
                                    let archived = frame.access::<Sample>().expect("validated");
                                    let _ = archived.name.len() + archived.data.len();
                                }
                            }
                        }
                        Some(Item::Bulk(piece)) => {
                            assert!(
                                piece.offset() as usize + piece.bytes().len()
                                    <= piece.header().payload_len as usize
                            );
                        }
                        None => {}
                    }
                }
                Err(err) => {
                    assert!(err.is_fatal());
                    return;
                }
            }
        }
    }
});
