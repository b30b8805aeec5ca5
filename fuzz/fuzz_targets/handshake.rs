//! Handshake fuzz target: arbitrary hello payloads must parse or fail
//! cleanly; whatever parses must round-trip (up to reserved bytes) and be checkable
//! against a schema without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwire_proto::{hello, peek_hello, Hello, Schema};

fuzz_target!(|input: &[u8]| {
    let _ = peek_hello(input);
    if let Ok(parsed) = Hello::parse(input) {
        let mut again = vec![0u8; parsed.encoded_len()];
        parsed.write(&mut again).expect("exact size");
        // Reserved bytes are ignored on receipt, so compare meaning, and
        // bytes outside the reserved ones (47 and 60..64).
        assert_eq!(Hello::parse(&again).ok().as_ref(), Some(&parsed));
        assert_eq!(again[..47], input[..47]);
        assert_eq!(again[48..60], input[48..60]);
        assert_eq!(again[64..], input[64..]);
        let schema = Schema::new();
        if let Err(mismatch) = hello::check(&schema, 1, &parsed) {
            assert!(!mismatch.to_string().is_empty());
        }
    }
});
