//! Per-core counters of the transports layer: messages and bytes in and out
//! per scheme, rejections, connection errors, back-pressure waits and drops,
//! bulk bytes received direct and by copy, frames assembled by copy; for
//! `udp://` also sequence gaps, reordering, duplicates, bad datagrams by
//! reason, and how sends went to the kernel ([`UdpStats`]).
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
    connections_opened: PerScheme,
    connections_freed: PerScheme,
    back_pressure_waits: PerScheme,
    dropped: PerScheme,
    bulk_bytes_direct: PerScheme,
    bulk_bytes_copied: PerScheme,
    frames_assembled: PerScheme,
    frames_direct: PerScheme,
    send_pool_empty: Counter,
    udp: UdpCounters,
}

/// The `udp://` counters (per core, like the others).
struct UdpCounters {
    gaps: Counter,
    late: Counter,
    duplicates: Counter,
    stale: Counter,
    restarts: Counter,
    senders_evicted: Counter,
    bad: [Counter; BAD_KINDS],
    receive_errors: Counter,
    sends: Counter,
    gso_sends: Counter,
    gso_fallbacks: Counter,
    send_failed: Counter,
    events_dropped: Counter,
    destinations_forgotten: Counter,
}

const BAD_KINDS: usize = crate::udp::BadDatagram::KINDS.len();

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
            "connections (or links of a resuming connection) that ended with an error: a timeout, a protocol error, a reset, an end of stream without the session's close",
        ),
        connections_opened: per_scheme(
            "transport_connections_opened_total",
            "connections made (accepted or connected, before their handshake)",
        ),
        connections_freed: per_scheme(
            "transport_connections_freed_total",
            "connections whose state and buffers were freed (opened minus freed: live)",
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
        udp: UdpCounters {
            gaps: Counter::register(
                "transport_udp_gaps_total",
                "sequence numbers skipped when a later datagram of the sender arrived",
                &[],
            ),
            late: Counter::register(
                "transport_udp_reordered_total",
                "datagrams that arrived after a later one of their sender (delivered)",
                &[],
            ),
            duplicates: Counter::register(
                "transport_udp_duplicates_total",
                "datagrams received again (dropped)",
                &[],
            ),
            stale: Counter::register(
                "transport_udp_stale_total",
                "datagrams too far behind to tell new from duplicate (dropped)",
                &[],
            ),
            restarts: Counter::register(
                "transport_udp_sender_restarts_total",
                "senders that started their sequence over",
                &[],
            ),
            senders_evicted: Counter::register(
                "transport_udp_senders_evicted_total",
                "senders forgotten to make room for new ones",
                &[],
            ),
            bad: crate::udp::BadDatagram::KINDS.map(|k| {
                Counter::register(
                    "transport_udp_bad_total",
                    "bad datagrams dropped, by reason",
                    &[("reason", k)],
                )
            }),
            receive_errors: Counter::register(
                "transport_udp_receive_errors_total",
                "errors reported by datagram receives",
                &[],
            ),
            sends: Counter::register(
                "transport_udp_sendmsg_total",
                "SENDMSG operations of datagram sockets",
                &[],
            ),
            gso_sends: Counter::register(
                "transport_udp_gso_sends_total",
                "SENDMSG operations that carried several datagrams (UDP GSO)",
                &[],
            ),
            gso_fallbacks: Counter::register(
                "transport_udp_gso_fallbacks_total",
                "GSO sends the kernel refused, sent again one datagram at a time",
                &[],
            ),
            send_failed: Counter::register(
                "transport_udp_send_failed_total",
                "datagrams the kernel refused to send",
                &[],
            ),
            events_dropped: Counter::register(
                "transport_udp_events_dropped_total",
                "datagram socket events dropped because the event queue was full",
                &[],
            ),
            destinations_forgotten: Counter::register(
                "transport_udp_destinations_forgotten_total",
                "send_to destinations whose sequence was forgotten to bound memory",
                &[],
            ),
        },
    })
}

/// Messages and bytes of one connection not yet added to the core's
/// counters: the engine counts here per message (plain adds) and flushes
/// once per received chunk and per flush, so a message costs no counter
/// lookups.
#[derive(Default)]
pub(crate) struct Tally {
    msgs_in: u64,
    bytes_in: u64,
    msgs_out: u64,
    bytes_out: u64,
}

impl Tally {
    #[inline]
    pub(crate) fn msg_in(&mut self, bytes: usize) {
        self.msgs_in += 1;
        self.bytes_in += bytes as u64;
    }

    #[inline]
    pub(crate) fn msg_out(&mut self, bytes: usize) {
        self.msgs_out += 1;
        self.bytes_out += bytes as u64;
    }

    /// Adds what was counted to the calling core's counters.
    pub(crate) fn flush(&mut self, s: Scheme) {
        let c = counters();
        let i = idx(s);
        if self.msgs_in > 0 {
            c.messages_in[i].add(self.msgs_in);
            c.bytes_in[i].add(self.bytes_in);
        }
        if self.msgs_out > 0 {
            c.messages_out[i].add(self.msgs_out);
            c.bytes_out[i].add(self.bytes_out);
        }
        *self = Tally::default();
    }
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

pub(crate) fn connection_opened(s: Scheme) {
    counters().connections_opened[idx(s)].add(1);
}

pub(crate) fn connection_freed(s: Scheme) {
    counters().connections_freed[idx(s)].add(1);
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

/// Counts what one datagram arrival did (see [`crate::udp::seq`]).
pub(crate) fn udp_observed(obs: &crate::udp::seq::Observation) {
    let c = &counters().udp;
    if let Some((first, last)) = obs.gap {
        c.gaps.add(last - first + 1);
    }
    c.late.add(u64::from(obs.late));
    c.duplicates.add(u64::from(obs.duplicate));
    c.stale.add(u64::from(obs.stale));
    c.restarts.add(u64::from(obs.restarted.is_some()));
    c.senders_evicted.add(obs.evicted.len() as u64);
}

/// A bad datagram was dropped.
pub(crate) fn udp_bad(reason: &crate::udp::BadDatagram) {
    let c = &counters().udp;
    if let Some(i) = crate::udp::BadDatagram::KINDS
        .iter()
        .position(|k| *k == reason.kind())
    {
        c.bad[i].add(1);
    }
}

/// A datagram receive reported an error.
pub(crate) fn udp_receive_error() {
    counters().udp.receive_errors.add(1);
}

/// A batch of datagrams went to the kernel.
pub(crate) fn udp_sent(report: &ringwire_runtime::net::BatchReport) {
    let c = &counters().udp;
    c.sends.add(report.sends as u64);
    c.gso_sends.add(report.gso_sends as u64);
    c.gso_fallbacks.add(report.gso_fallbacks as u64);
    c.send_failed.add(report.failed as u64);
}

/// `n` destinations' sequences were forgotten.
pub(crate) fn udp_destinations_forgotten(n: u64) {
    counters().udp.destinations_forgotten.add(n);
}

/// An event did not fit a socket's event queue.
pub(crate) fn udp_event_dropped() {
    counters().udp.events_dropped.add(1);
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
    /// Connections that ended with an error: a timeout (idle, handshake),
    /// a protocol error, a reset, an end of stream without the session's
    /// close. A connection that resumes counts each link it lost.
    pub connection_errors: u64,
    /// Connections made on this core (accepted or connected).
    pub connections_opened: u64,
    /// Connections whose state and buffers were freed on this core.
    pub connections_freed: u64,
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
    /// The `udp://` counters.
    pub udp: UdpStats,
}

/// The calling core's `udp://` counters (over all its datagram sockets;
/// per sender, see [`Datagrams::sender_stats`](crate::udp::Datagrams::sender_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpStats {
    /// Sequence numbers skipped when a later datagram of the sender arrived.
    pub gaps: u64,
    /// Datagrams that arrived after a later one of their sender.
    pub reordered: u64,
    /// Datagrams received again (dropped).
    pub duplicates: u64,
    /// Datagrams too far behind to tell (dropped).
    pub stale: u64,
    /// Senders that started their sequence over.
    pub sender_restarts: u64,
    /// Senders forgotten to make room for new ones.
    pub senders_evicted: u64,
    /// Bad datagrams dropped, by [`BadDatagram::KINDS`](crate::udp::BadDatagram::KINDS) order.
    pub bad: [u64; BAD_KINDS],
    /// Errors reported by datagram receives.
    pub receive_errors: u64,
    /// `SENDMSG` operations.
    pub sendmsgs: u64,
    /// Of those, GSO sends carrying several datagrams.
    pub gso_sends: u64,
    /// GSO sends refused by the kernel and sent again per datagram.
    pub gso_fallbacks: u64,
    /// Datagrams the kernel refused to send.
    pub send_failed: u64,
    /// Events dropped for a full event queue.
    pub events_dropped: u64,
    /// `send_to` destinations whose sequence was forgotten (see
    /// [`UdpConfig::max_destinations`](crate::udp::UdpConfig::max_destinations)).
    pub destinations_forgotten: u64,
}

impl UdpStats {
    /// Bad datagrams dropped for `reason` (a [`BadDatagram::kind`](crate::udp::BadDatagram::kind)).
    pub fn bad(&self, reason: &str) -> u64 {
        crate::udp::BadDatagram::KINDS
            .iter()
            .position(|k| *k == reason)
            .map_or(0, |i| self.bad[i])
    }

    /// Bad datagrams dropped, every reason.
    pub fn bad_total(&self) -> u64 {
        self.bad.iter().sum()
    }
}

impl SchemeStats {
    /// Connections made on this core and not yet freed.
    pub fn connections_live(&self) -> u64 {
        self.connections_opened
            .saturating_sub(self.connections_freed)
    }
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
            connections_opened: c.connections_opened[i].get(),
            connections_freed: c.connections_freed[i].get(),
            back_pressure_waits: c.back_pressure_waits[i].get(),
            dropped: c.dropped[i].get(),
            bulk_bytes_direct: c.bulk_bytes_direct[i].get(),
            bulk_bytes_copied: c.bulk_bytes_copied[i].get(),
            frames_assembled: c.frames_assembled[i].get(),
            frames_direct: c.frames_direct[i].get(),
        };
    }
    out.send_pool_empty = c.send_pool_empty.get();
    let u = &c.udp;
    out.udp = UdpStats {
        gaps: u.gaps.get(),
        reordered: u.late.get(),
        duplicates: u.duplicates.get(),
        stale: u.stale.get(),
        sender_restarts: u.restarts.get(),
        senders_evicted: u.senders_evicted.get(),
        bad: u.bad.map(|c| c.get()),
        receive_errors: u.receive_errors.get(),
        sendmsgs: u.sends.get(),
        gso_sends: u.gso_sends.get(),
        gso_fallbacks: u.gso_fallbacks.get(),
        send_failed: u.send_failed.get(),
        events_dropped: u.events_dropped.get(),
        destinations_forgotten: u.destinations_forgotten.get(),
    };
    out
}

/// Registers the transport counters, so that they appear (at zero) in
/// snapshots and Prometheus output before the first connection. Idempotent.
pub fn register() {
    let _ = counters();
}
