//! RDMA side-channel fuzz target: arbitrary bytes from a peer must decode or
//! fail cleanly (never panic), and whatever decodes must re-encode to exactly
//! the same bytes (the layout has no slack: reserved bytes must be zero).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwire_transports::rdma::sidechannel::{frame_len, Exchange, PREFIX_LEN};

fuzz_target!(|input: &[u8]| {
    let framed = frame_len(input);
    if let Ok(exchange) = Exchange::decode(input) {
        // A stream reader would have learnt this length from the prefix.
        assert!(input.len() >= PREFIX_LEN);
        assert_eq!(framed, Ok(Some(input.len())));
        let mut again = Vec::new();
        exchange.encode(&mut again).expect("a decoded exchange is valid");
        assert_eq!(again, input);
        assert_eq!(exchange.encoded_len(), input.len());
    }
});
