//! Bounded lock-free single-producer single-consumer ring: the mesh's and the
//! typed channels' transport between two cores.
//!
//! The ring lives in its own crate, `ringwire-ring` (small enough to be
//! model-checked with loom and run under miri on its own); this module
//! re-exports it. Its crate docs describe the layout, the calling order and
//! the park / wake protocol.

pub use ringwire_ring::{
    asymmetric_available, channel, channel_with, Closed, Consumer, PopBatch, Producer,
    TryRecvError, TrySendError, WakeBarrier,
};
