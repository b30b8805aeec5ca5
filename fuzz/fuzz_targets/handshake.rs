//! Handshake fuzz target: arbitrary hello payloads must parse or fail
//! cleanly; whatever parses must round-trip byte for byte and be checkable
//! against a schema without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwire_proto::{hello, peek_hello, Hello, Schema};

fuzz_target!(|input: &[u8]| {
    let _ = peek_hello(input);
    if let Ok(parsed) = Hello::parse(input) {
        let mut again = vec![0u8; parsed.encoded_len()];
        parsed.write(&mut again).expect("exact size");
        assert_eq!(again.as_slice(), input, "parse/write must round-trip");
        let schema = Schema::new();
        if let Err(mismatch) = hello::check(&schema, 1, &parsed) {
            assert!(!mismatch.to_string().is_empty());
        }
    }
});
