//! Session fuzz target: a server session fed a valid client hello followed
//! by arbitrary bytes must never panic, whatever the chunking.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use ringwire_proto::{type_id, Config, Instant, Message, Schema, Session};
use rkyv::util::AlignedVec;

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Sample {
    id: u64,
    name: String,
}

impl Message for Sample {
    const TYPE_ID: u32 = type_id("fuzz.Sample");
    const NAME: &'static str = "fuzz.Sample";
}

fuzz_target!(|input: &[u8]| {
    let Some((&cut, bytes)) = input.split_first() else {
        return;
    };
    let schema = Arc::new(Schema::new().with::<Sample>().expect("one type"));
    let config = Config::default()
        .max_payload(4096)
        .max_bulk_segment(1 << 16);
    let now = Instant::ZERO;
    // A real client hello first, so the fuzzer reaches the established state.
    let mut client: Session = Session::connect(config.clone(), schema.clone(), now, 42);
    let mut stream = AlignedVec::<16>::new();
    stream.resize(1024, 0);
    let n = client
        .poll_transmit(now, &mut stream)
        .expect("fits")
        .expect("hello queued");
    stream.resize(n, 0);
    stream.extend_from_slice(bytes);

    let mut server: Session = Session::accept(config, schema, now);
    let chunk_len = usize::from(cut % 128) + 1;
    for chunk in stream.chunks(chunk_len) {
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(chunk);
        let mut at = 0;
        while at < aligned.len() {
            if let Some((_, sizes)) = server.bulk_offer() {
                let dests = sizes.iter().map(|&s| vec![0u8; s as usize]).collect();
                if server.accept_bulk(dests).is_err() {
                    return;
                }
            }
            match server.handle_input(now, &aligned[at..]) {
                Ok(input) => {
                    at += input.consumed;
                    if let Some(msg) = input.received {
                        if let Ok(sample) = msg.get::<Sample>() {
                            let _ = sample.name.len();
                        }
                    }
                }
                Err(_) => return,
            }
        }
        let mut out = [0u8; 256];
        while let Ok(Some(_)) = server.poll_transmit(now, &mut out) {}
        while server.poll_event().is_some() {}
    }
});
