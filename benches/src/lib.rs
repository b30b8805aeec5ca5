//! Shared pieces of ringwire's load generator, peer servers and benchmarks.
//!
//! The binaries in `src/bin` (the `loadgen` load generator and the `tokio-echo`
//! and `glommio-echo` peer servers) share their command-line handling, wire
//! framing, core lists and `/proc` CPU accounting through these modules. The
//! typed request/reply benchmark (`benches/typed.sh`: `typed-ringwire`,
//! `typed-tokio`, `typed-zmq`, `typed-mem`, `typed-bulk`) adds its message
//! types in [`typed`], its clients' measurement in [`measure`], and the TLS
//! settings of its `tls://` runs in [`tls`]. The suite's report generator
//! (`benches/suite.sh`, `bench-report`) lives in [`report`].

pub mod cli;
pub mod cores;
pub mod cpu;
pub mod measure;
pub mod report;
pub mod server;
pub mod tls;
pub mod typed;
pub mod wire;
