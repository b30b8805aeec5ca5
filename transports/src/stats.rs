//! Per-core counters of the transports layer: messages and bytes in and out
//! per scheme, rejections, connection errors, back-pressure waits and drops,
//! bulk bytes received direct and by copy, frames assembled by copy.
//!
//! Each core owns its own counters (plain `Cell`s in a thread-local, no
//! atomics on the message path); [`snapshot`] reads the calling core's.

use std::cell::Cell;

use crate::endpoint::Scheme;

const SCHEMES: usize = Scheme::ALL.len();

fn idx(s: Scheme) -> usize {
    s as usize
}

#[derive(Default)]
struct Counters {
    messages_in: [Cell<u64>; SCHEMES],
    bytes_in: [Cell<u64>; SCHEMES],
    messages_out: [Cell<u64>; SCHEMES],
    bytes_out: [Cell<u64>; SCHEMES],
    rejected: [Cell<u64>; SCHEMES],
    connection_errors: [Cell<u64>; SCHEMES],
    back_pressure_waits: [Cell<u64>; SCHEMES],
    dropped: [Cell<u64>; SCHEMES],
    bulk_bytes_direct: [Cell<u64>; SCHEMES],
    bulk_bytes_copied: [Cell<u64>; SCHEMES],
    frames_assembled: [Cell<u64>; SCHEMES],
    frames_direct: [Cell<u64>; SCHEMES],
    send_pool_empty: Cell<u64>,
}

thread_local! {
    static COUNTERS: Counters = Counters::default();
}

fn add(f: impl FnOnce(&Counters) -> &Cell<u64>, n: u64) {
    // A thread that is being torn down has no counters left: nothing to do.
    let _ = COUNTERS.try_with(|c| {
        let cell = f(c);
        cell.set(cell.get().wrapping_add(n));
    });
}

pub(crate) fn message_in(s: Scheme, bytes: usize) {
    add(|c| &c.messages_in[idx(s)], 1);
    add(|c| &c.bytes_in[idx(s)], bytes as u64);
}

pub(crate) fn message_out(s: Scheme, bytes: usize) {
    add(|c| &c.messages_out[idx(s)], 1);
    add(|c| &c.bytes_out[idx(s)], bytes as u64);
}

pub(crate) fn message_rejected(s: Scheme) {
    add(|c| &c.rejected[idx(s)], 1);
}

pub(crate) fn connection_error(s: Scheme) {
    add(|c| &c.connection_errors[idx(s)], 1);
}

pub(crate) fn back_pressure_wait(s: Scheme) {
    add(|c| &c.back_pressure_waits[idx(s)], 1);
}

pub(crate) fn dropped(s: Scheme) {
    add(|c| &c.dropped[idx(s)], 1);
}

/// A bulk segment of `total` bytes arrived, `direct` of them received by
/// the kernel straight into the destination.
pub(crate) fn bulk_in(s: Scheme, total: usize, direct: usize) {
    add(|c| &c.bulk_bytes_direct[idx(s)], direct as u64);
    add(
        |c| &c.bulk_bytes_copied[idx(s)],
        total.saturating_sub(direct) as u64,
    );
}

/// A frame spanning receive buffers was assembled by copying.
pub(crate) fn frame_assembled(s: Scheme) {
    add(|c| &c.frames_assembled[idx(s)], 1);
}

/// A frame larger than the rest of its receive buffer was received straight
/// into a buffer of its size.
pub(crate) fn frame_direct(s: Scheme) {
    add(|c| &c.frames_direct[idx(s)], 1);
}

pub(crate) fn send_pool_empty() {
    add(|c| &c.send_pool_empty, 1);
}

/// One scheme's counters on one core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SchemeStats {
    /// Messages received (delivered to the application or to a call).
    pub messages_in: u64,
    /// Payload bytes of those messages.
    pub bytes_in: u64,
    /// Messages sent (queued for the peer).
    pub messages_out: u64,
    /// Frame bytes of those messages.
    pub bytes_out: u64,
    /// Messages dropped on arrival (failed validation, unknown type).
    pub rejected: u64,
    /// Connections that ended with an error.
    pub connection_errors: u64,
    /// Sends that waited for room in a full send queue.
    pub back_pressure_waits: u64,
    /// Messages dropped by the drop-newest policy or a full queue.
    pub dropped: u64,
    /// Bulk bytes the kernel received straight into their destination.
    pub bulk_bytes_direct: u64,
    /// Bulk bytes copied into their destination (they had already arrived
    /// in receive buffers, or the transport has no direct path).
    pub bulk_bytes_copied: u64,
    /// Frames assembled by copying because they spanned receive buffers.
    pub frames_assembled: u64,
    /// Frames received straight into a buffer of their size.
    pub frames_direct: u64,
}

/// The calling thread's (core's) transport counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportStats {
    /// Per scheme, in [`Scheme::ALL`] order (see [`TransportStats::scheme`]).
    pub schemes: [SchemeStats; SCHEMES],
    /// Frames encoded into heap memory because the core's send pool was
    /// empty.
    pub send_pool_empty: u64,
}

impl TransportStats {
    /// The counters of one scheme.
    pub fn scheme(&self, s: Scheme) -> SchemeStats {
        self.schemes[idx(s)]
    }
}

/// A snapshot of the calling core's transport counters.
pub fn snapshot() -> TransportStats {
    COUNTERS
        .try_with(|c| {
            let mut out = TransportStats::default();
            for s in Scheme::ALL {
                let i = idx(s);
                out.schemes[i] = SchemeStats {
                    messages_in: c.messages_in[i].get(),
                    bytes_in: c.bytes_in[i].get(),
                    messages_out: c.messages_out[i].get(),
                    bytes_out: c.bytes_out[i].get(),
                    rejected: c.rejected[i].get(),
                    connection_errors: c.connection_errors[i].get(),
                    back_pressure_waits: c.back_pressure_waits[i].get(),
                    dropped: c.dropped[i].get(),
                    bulk_bytes_direct: c.bulk_bytes_direct[i].get(),
                    bulk_bytes_copied: c.bulk_bytes_copied[i].get(),
                    frames_assembled: c.frames_assembled[i].get(),
                    frames_direct: c.frames_direct[i].get(),
                };
            }
            out.send_pool_empty = c.send_pool_empty.get();
            out
        })
        .unwrap_or_default()
}
