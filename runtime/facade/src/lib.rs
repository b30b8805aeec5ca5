//! ringwire: an io_uring thread-per-core messaging runtime for latency-critical
//! Linux services.
//!
//! This facade re-exports the three crates that make up ringwire:
//!
//! - [`runtime`]: pinned per-core executors, each driving its own io_uring
//!   ring, with sockets, timers, buffer pools, mailboxes and counters.
//! - [`proto`]: the sans-IO wire format (frames, handshake, request/reply,
//!   two-phase bulk, rkyv access).
//! - [`transports`]: endpoints (`tcp://`, `unix://`, ...) joining the two.

pub use ringwire_proto as proto;
pub use ringwire_runtime as runtime;
pub use ringwire_transports as transports;
