//! `udp://` datagram fuzz target: arbitrary bytes as a received datagram
//! must never panic the header check; a datagram it accepts must be
//! consistent with its header, and schema validation of its archive (placed
//! 16-byte aligned, as a receive buffer places it) must either succeed and
//! give typed access or fail cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwire_proto::{type_id, Message, Schema};
use ringwire_transports::udp::wire::{datagram_len, decode, HEADER_LEN};
use rkyv::util::AlignedVec;

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Quote {
    ts: u64,
    symbol: u32,
    name: String,
    sizes: Vec<u32>,
}

impl Message for Quote {
    const TYPE_ID: u32 = type_id("fuzz.udp.Quote");
    const NAME: &'static str = "fuzz.udp.Quote";
}

fuzz_target!(|input: &[u8]| {
    // Half the time, give the input a valid header so the archive check
    // is reached often.
    let mut bytes = input.to_vec();
    if let Some((&flip, rest)) = input.split_first() {
        if flip & 1 == 1 && rest.len() >= 8 {
            let archive = &rest[8..];
            let mut d = vec![0u8; datagram_len(archive.len())];
            d[..4].copy_from_slice(b"RWDG");
            d[4] = 1;
            d[8..16].copy_from_slice(&u64::from(flip | 1).to_le_bytes());
            d[16..24].copy_from_slice(&rest[..8]);
            let id = if flip & 2 == 2 { Quote::TYPE_ID } else { u32::from(flip) };
            d[24..28].copy_from_slice(&id.to_le_bytes());
            d[28..32].copy_from_slice(&(archive.len() as u32).to_le_bytes());
            d[HEADER_LEN..HEADER_LEN + archive.len()].copy_from_slice(archive);
            bytes = d;
        }
    }
    let Ok((header, range)) = decode(&bytes) else {
        return;
    };
    assert_eq!(bytes.len(), datagram_len(header.payload_len as usize));
    assert_eq!(range.len(), header.payload_len as usize);
    assert!(header.sender != 0 && header.seq != 0);
    let mut aligned = AlignedVec::<16>::new();
    aligned.extend_from_slice(&bytes[range]);
    let schema = Schema::new().with::<Quote>().expect("one type");
    if let Ok(token) = schema.validate(header.type_id, &aligned) {
        assert_eq!(header.type_id, Quote::TYPE_ID);
        assert!(token.is::<Quote>());
        let q = ringwire_proto::access::<Quote>(&aligned).expect("validated once");
        let _ = (q.name.len(), q.sizes.len());
    }
});
