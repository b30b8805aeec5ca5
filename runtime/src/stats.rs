//! Per-core counters.
//!
//! Each core keeps plain (non-atomic) counters that only its own thread
//! touches. A [`CoreStats`] snapshot is taken on the core itself, on request
//! from any thread ([`crate::Runtime::stats`]), and can be printed in the
//! Prometheus text format with [`render_prometheus`].

use std::cell::Cell;
use std::fmt::Write;

/// The live counters of one core (owned by that core's thread).
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) ops_submitted: Cell<u64>,
    pub(crate) ops_completed: Cell<u64>,
    pub(crate) bytes_received: Cell<u64>,
    pub(crate) bytes_sent: Cell<u64>,
    pub(crate) accepts: Cell<u64>,
    pub(crate) errors: Cell<u64>,
    pub(crate) loop_turns: Cell<u64>,
    pub(crate) parks: Cell<u64>,
    pub(crate) bufring_starvation: Cell<u64>,
    pub(crate) recv_copies_avoided: Cell<u64>,
    pub(crate) recv_copies_made: Cell<u64>,
    pub(crate) remote_wakeups: Cell<u64>,
    pub(crate) zc_sends: Cell<u64>,
    pub(crate) zc_notifications: Cell<u64>,
    pub(crate) zc_copied: Cell<u64>,
    pub(crate) fixed_sends: Cell<u64>,
    pub(crate) batch_sends: Cell<u64>,
    pub(crate) batched_messages: Cell<u64>,
    pub(crate) doorbells_sent: Cell<u64>,
    pub(crate) doorbells_received: Cell<u64>,
    pub(crate) mailbox_received: Cell<u64>,
}

impl Stats {
    pub(crate) fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get().wrapping_add(n));
    }
}

/// Records, on the calling core, frames handed to user code in place in the
/// receive buffer (`in_place`) and deliveries that needed a copy to assemble
/// (`copied`). Framing layers call this; the counters appear as
/// `recv_copies_avoided` / `recv_copies_made`.
///
/// # Panics
///
/// Off a ringwire core thread.
pub fn count_frames(in_place: u64, copied: u64) {
    crate::core::with_core(|c| {
        Stats::add(&c.stats.recv_copies_avoided, in_place);
        Stats::add(&c.stats.recv_copies_made, copied);
    });
}

/// A snapshot of one core's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoreStats {
    /// Index of the core in the runtime (0-based).
    pub core: usize,
    /// CPU the core's thread is pinned to.
    pub cpu: usize,
    /// SQEs handed to the kernel.
    pub ops_submitted: u64,
    /// CQEs reaped.
    pub ops_completed: u64,
    /// Bytes received on stream sockets.
    pub bytes_received: u64,
    /// Bytes sent on stream sockets.
    pub bytes_sent: u64,
    /// Connections accepted.
    pub accepts: u64,
    /// Operations that completed with an error.
    pub errors: u64,
    /// Turns of the event loop.
    pub loop_turns: u64,
    /// Times the core blocked waiting for completions.
    pub parks: u64,
    /// Multishot receives stopped because the buffer ring was empty.
    pub bufring_starvation: u64,
    /// Received frames handed out straight from the kernel-filled buffer.
    pub recv_copies_avoided: u64,
    /// Received frames that had to be copied (spanning buffers).
    pub recv_copies_made: u64,
    /// Wake-ups that arrived from other threads.
    pub remote_wakeups: u64,
    /// Sends submitted as `SEND_ZC`.
    pub zc_sends: u64,
    /// Zero-copy notifications received (buffer released by the kernel).
    pub zc_notifications: u64,
    /// Zero-copy sends for which the kernel reported it copied anyway.
    pub zc_copied: u64,
    /// Sends from registered buffers (`WRITE_FIXED` or fixed `SEND_ZC`).
    pub fixed_sends: u64,
    /// Sends made by batching writers (one per flush).
    pub batch_sends: u64,
    /// Messages those sends carried (divide by `batch_sends` for the batch size).
    pub batched_messages: u64,
    /// Doorbells rung at other cores (MSG_RING or eventfd).
    pub doorbells_sent: u64,
    /// MSG_RING doorbells that arrived here.
    pub doorbells_received: u64,
    /// Closures received through the core mesh.
    pub mailbox_received: u64,
    /// Closures waiting in this core's inbound mesh rings at snapshot time.
    pub mailbox_depth: u64,
    /// Tasks alive at snapshot time.
    pub tasks: u64,
    /// Operations in the driver's table at snapshot time.
    pub ops_in_flight: u64,
    /// Completions the kernel dropped because the CQ was full.
    pub cq_overflow: u64,
    /// Receive buffers available to the kernel at snapshot time.
    pub recv_buffers_free: u64,
    /// Receive buffers in total.
    pub recv_buffers_total: u64,
    /// Send-pool buffers free at snapshot time.
    pub send_buffers_free: u64,
    /// Send-pool buffers in total.
    pub send_buffers_total: u64,
}

/// Renders snapshots in the Prometheus text exposition format, one sample
/// per core and counter, labelled with `core` and `cpu`.
pub fn render_prometheus(stats: &[CoreStats]) -> String {
    let mut out = String::new();
    type Get = fn(&CoreStats) -> u64;
    let metrics: [(&str, &str, &str, Get); 29] = [
        (
            "doorbells_sent_total",
            "counter",
            "doorbells rung at other cores",
            |s| s.doorbells_sent,
        ),
        (
            "doorbells_received_total",
            "counter",
            "MSG_RING doorbells received",
            |s| s.doorbells_received,
        ),
        (
            "mailbox_received_total",
            "counter",
            "closures received through the core mesh",
            |s| s.mailbox_received,
        ),
        (
            "mailbox_depth",
            "gauge",
            "closures waiting in inbound mesh rings",
            |s| s.mailbox_depth,
        ),
        ("zc_sends_total", "counter", "SEND_ZC submissions", |s| {
            s.zc_sends
        }),
        (
            "zc_notifications_total",
            "counter",
            "zero-copy buffer releases",
            |s| s.zc_notifications,
        ),
        (
            "zc_copied_total",
            "counter",
            "zero-copy sends the kernel copied anyway",
            |s| s.zc_copied,
        ),
        (
            "fixed_sends_total",
            "counter",
            "sends from registered buffers",
            |s| s.fixed_sends,
        ),
        (
            "batch_sends_total",
            "counter",
            "batching writer flushes",
            |s| s.batch_sends,
        ),
        (
            "batched_messages_total",
            "counter",
            "messages carried by batching writer flushes",
            |s| s.batched_messages,
        ),
        (
            "send_buffers_free",
            "gauge",
            "registered send buffers free",
            |s| s.send_buffers_free,
        ),
        (
            "send_buffers_total",
            "gauge",
            "registered send buffers in total",
            |s| s.send_buffers_total,
        ),
        ("ops_submitted_total", "counter", "SQEs submitted", |s| {
            s.ops_submitted
        }),
        ("ops_completed_total", "counter", "CQEs reaped", |s| {
            s.ops_completed
        }),
        (
            "bytes_received_total",
            "counter",
            "stream bytes received",
            |s| s.bytes_received,
        ),
        ("bytes_sent_total", "counter", "stream bytes sent", |s| {
            s.bytes_sent
        }),
        ("accepts_total", "counter", "connections accepted", |s| {
            s.accepts
        }),
        ("errors_total", "counter", "operations failed", |s| s.errors),
        ("loop_turns_total", "counter", "event loop turns", |s| {
            s.loop_turns
        }),
        (
            "parks_total",
            "counter",
            "blocking waits for completions",
            |s| s.parks,
        ),
        (
            "bufring_starvation_total",
            "counter",
            "multishot receives stopped for lack of buffers",
            |s| s.bufring_starvation,
        ),
        (
            "recv_copies_avoided_total",
            "counter",
            "frames read in place",
            |s| s.recv_copies_avoided,
        ),
        (
            "recv_copies_made_total",
            "counter",
            "frames assembled by copying",
            |s| s.recv_copies_made,
        ),
        (
            "remote_wakeups_total",
            "counter",
            "wake-ups from other threads",
            |s| s.remote_wakeups,
        ),
        (
            "cq_overflow_total",
            "counter",
            "completions dropped on a full CQ",
            |s| s.cq_overflow,
        ),
        ("tasks", "gauge", "live tasks", |s| s.tasks),
        (
            "ops_in_flight",
            "gauge",
            "operations in the driver table",
            |s| s.ops_in_flight,
        ),
        (
            "recv_buffers_free",
            "gauge",
            "receive buffers available to the kernel",
            |s| s.recv_buffers_free,
        ),
        (
            "recv_buffers_total",
            "gauge",
            "receive buffers in total",
            |s| s.recv_buffers_total,
        ),
    ];
    for (name, kind, help, get) in metrics {
        let _ = writeln!(out, "# HELP ringwire_{name} {help}");
        let _ = writeln!(out, "# TYPE ringwire_{name} {kind}");
        for s in stats {
            let _ = writeln!(
                out,
                "ringwire_{name}{{core=\"{}\",cpu=\"{}\"}} {}",
                s.core,
                s.cpu,
                get(s)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_has_one_sample_per_core_and_metric() {
        let a = CoreStats {
            core: 0,
            cpu: 3,
            accepts: 7,
            ..Default::default()
        };
        let b = CoreStats {
            core: 1,
            cpu: 5,
            bytes_sent: 42,
            ..Default::default()
        };
        let text = render_prometheus(&[a, b]);
        assert!(text.contains("ringwire_accepts_total{core=\"0\",cpu=\"3\"} 7\n"));
        assert!(text.contains("ringwire_bytes_sent_total{core=\"1\",cpu=\"5\"} 42\n"));
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, 29 * 2);
    }
}
