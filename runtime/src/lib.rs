//! ringwire-runtime: pinned per-core executors, each driving its own io_uring ring.
