//! ringwire-proto: sans-IO wire format.
