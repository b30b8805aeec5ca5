//! Endpoint parser fuzz target: arbitrary UTF-8 must never panic the
//! parser; whatever parses must print (Display) as text that parses back to
//! an equal endpoint and prints the same again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwire_transports::Endpoint;

fuzz_target!(|input: &str| {
    let Ok(endpoint) = input.parse::<Endpoint>() else {
        return;
    };
    let text = endpoint.to_string();
    let again: Endpoint = match text.parse() {
        Ok(again) => again,
        Err(e) => panic!("{input:?} parsed, but its Display {text:?} does not: {e}"),
    };
    assert_eq!(again, endpoint, "{input:?} -> {text:?}");
    assert_eq!(again.to_string(), text, "{input:?}: Display is not canonical");
});
