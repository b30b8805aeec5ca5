//! Per-core counters of the transports layer: messages and bytes in and out
//! per scheme, rejections, connection errors, back-pressure waits and drops,
//! bulk bytes received direct and by copy, frames assembled by copy.
//!
//! They are the runtime's named per-core counters
//! ([`ringwire_runtime::Counter`]: plain adds on the calling core, no
//! atomics), so they appear in every [`CoreStats`](ringwire_runtime::CoreStats)
//! snapshot and in the Prometheus rendering as
//! `ringwire_transport_<name>{core,cpu,scheme}`; [`snapshot`] reads the
//! calling core's as a struct.

use std::sync::OnceLock;

use ringwire_runtime::Counter;

use crate::endpoint::Scheme;

const SCHEMES: usize = Scheme::ALL.len();

fn idx(s: Scheme) -> usize {
    s as usize
}

/// One counter per scheme.
type PerScheme = [Counter; SCHEMES];

struct Counters {
    messages_in: PerScheme,
    bytes_in: PerScheme,
    messages_out: PerScheme,
    bytes_out: PerScheme,
    rejected: PerScheme,
    connection_errors: PerScheme,
    back_pressure_waits: PerScheme,
    dropped: PerScheme,
    bulk_bytes_direct: PerScheme,
    bulk_bytes_copied: PerScheme,
    frames_assembled: PerScheme,
    frames_direct: PerScheme,
    send_pool_empty: Counter,
}

fn per_scheme(name: &str, help: &str) -> PerScheme {
    Scheme::ALL.map(|s| Counter::register(name, help, &[("scheme", s.name())]))
}

fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<Counters> = OnceLock::new();
    COUNTERS.get_or_init(|| Counters {
        messages_in: per_scheme("transport_messages_in_total", "messages received"),
        bytes_in: per_scheme("transport_bytes_in_total", "payload bytes received"),
        messages_out: per_scheme("transport_messages_out_total", "messages sent"),
        bytes_out: per_scheme("transport_bytes_out_total", "frame bytes sent"),
        rejected: per_scheme(
            "transport_rejected_total",
            "messages dropped on arrival (failed validation, unknown type)",
        ),
        connection_errors: per_scheme(
            "transport_connection_errors_total",
            "connections that ended with an error",
        ),
        back_pressure_waits: per_scheme(
            "transport_back_pressure_waits_total",
            "sends that waited for room in a full send queue",
        ),
        dropped: per_scheme(
            "transport_dropped_total",
            "messages dropped by the drop-newest policy or a full queue",
        ),
        bulk_bytes_direct: per_scheme(
            "transport_bulk_bytes_direct_total",
            "bulk bytes received by the kernel straight into their destination",
        ),
        bulk_bytes_copied: per_scheme(
            "transport_bulk_bytes_copied_total",
            "bulk bytes copied into their destination",
        ),
        frames_assembled: per_scheme(
            "transport_frames_assembled_total",
            "frames assembled by copying because they spanned receive buffers",
        ),
        frames_direct: per_scheme(
            "transport_frames_direct_total",
            "frames received straight into a buffer of their size",
        ),
        send_pool_empty: Counter::register(
            "transport_send_pool_empty_total",
            "frames encoded into heap memory because the send pool was empty",
            &[],
        ),
    })
}

pub(crate) fn message_in(s: Scheme, bytes: usize) {
    let c = counters();
    c.messages_in[idx(s)].add(1);
    c.bytes_in[idx(s)].add(bytes as u64);
}

pub(crate) fn message_out(s: Scheme, bytes: usize) {
    let c = counters();
    c.messages_out[idx(s)].add(1);
    c.bytes_out[idx(s)].add(bytes as u64);
}

pub(crate) fn message_rejected(s: Scheme) {
    counters().rejected[idx(s)].add(1);
}

pub(crate) fn connection_error(s: Scheme) {
    counters().connection_errors[idx(s)].add(1);
}

pub(crate) fn back_pressure_wait(s: Scheme) {
    counters().back_pressure_waits[idx(s)].add(1);
}

pub(crate) fn dropped(s: Scheme) {
    counters().dropped[idx(s)].add(1);
}

/// A bulk segment of `total` bytes arrived, `direct` of them received by
/// the kernel straight into the destination.
pub(crate) fn bulk_in(s: Scheme, total: usize, direct: usize) {
    let c = counters();
    c.bulk_bytes_direct[idx(s)].add(direct as u64);
    c.bulk_bytes_copied[idx(s)].add(total.saturating_sub(direct) as u64);
}

/// A frame spanning receive buffers was assembled by copying.
pub(crate) fn frame_assembled(s: Scheme) {
    counters().frames_assembled[idx(s)].add(1);
}

/// A frame larger than the rest of its receive buffer was received straight
/// into a buffer of its size.
pub(crate) fn frame_direct(s: Scheme) {
    counters().frames_direct[idx(s)].add(1);
}

pub(crate) fn send_pool_empty() {
    counters().send_pool_empty.add(1);
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

/// A snapshot of the calling core's transport counters (all zero off a
/// ringwire core).
pub fn snapshot() -> TransportStats {
    let c = counters();
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
}

/// Registers the transport counters, so that they appear (at zero) in
/// snapshots and Prometheus output before the first connection. Idempotent.
pub fn register() {
    let _ = counters();
}
