//! RESP request parser fuzz target: arbitrary bytes, fed in chunks whose
//! sizes come from the input, must never panic; the parser must hold no
//! more than its limits allow for the request in progress; the requests
//! (and the error, if any) must be the same as when the whole stream is fed
//! at once. Every request is then run through kv-node's dispatcher on three
//! in-process shards, which must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwire_examples::kv::dispatch::Dispatcher;
use ringwire_examples::kv::resp::{Limits, ProtocolError, RequestParser};
use ringwire_examples::kv::store::Store;

const LIMITS: Limits = Limits {
    max_bulk_len: 256,
    max_array_len: 16,
    max_inline_len: 128,
};

type Parsed = (Vec<Vec<Vec<u8>>>, Option<ProtocolError>);

/// Feeds `chunks` in turn, taking every complete request after each.
fn parse<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Parsed {
    let mut parser = RequestParser::new(LIMITS);
    let mut requests = Vec::new();
    for chunk in chunks {
        parser.feed(chunk);
        loop {
            match parser.next() {
                Ok(Some(request)) => {
                    assert!(!request.is_empty());
                    requests.push(request.to_vec());
                }
                Ok(None) => break,
                Err(e) => return (requests, Some(e)),
            }
        }
        // Only the request in progress is held, within the limits.
        assert!(
            parser.buffered() <= LIMITS.max_request_bytes(),
            "{} bytes held",
            parser.buffered()
        );
    }
    (requests, None)
}

fuzz_target!(|input: &[u8]| {
    let Some((seed, stream)) = input.split_first_chunk::<8>() else {
        return;
    };
    // Chunk sizes from a xorshift generator seeded by the input.
    let mut state = u64::from_le_bytes(*seed) | 1;
    let mut chunks = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = if state % 8 == 0 {
            (state >> 8) as usize % 1024 + 1
        } else {
            (state >> 8) as usize % 16 + 1
        };
        let (chunk, after) = rest.split_at(len.min(rest.len()));
        chunks.push(chunk);
        rest = after;
    }

    let whole = parse([stream]);
    let chunked = parse(chunks.iter().copied());
    assert_eq!(whole, chunked, "chunking changed what was parsed");

    // Replay what parsed through the dispatcher.
    let dispatcher = Dispatcher::new(3);
    let mut stores = [Store::new(), Store::new(), Store::new()];
    let mut parser = RequestParser::new(LIMITS);
    parser.feed(stream);
    let mut out = Vec::new();
    let mut now = 0;
    while let Ok(Some(request)) = parser.next() {
        dispatcher.run_local(&mut stores, &request, now, &mut out);
        now += 7;
        for store in &mut stores {
            store.sweep(now, 4);
        }
    }
});
