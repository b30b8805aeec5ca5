//! Shared pieces of ringwire's load generator, peer servers and benchmarks.
//!
//! The binaries in `src/bin` (the `loadgen` load generator and the `tokio-echo`
//! and `glommio-echo` peer servers) share their command-line handling, wire
//! framing, core lists and `/proc` CPU accounting through these modules.

pub mod cli;
pub mod cores;
pub mod cpu;
pub mod report;
pub mod server;
pub mod wire;
