//! Per-core counters.
//!
//! Each core keeps plain (non-atomic) counters that only its own thread
//! touches, reached through this module's accessor while the core runs. A
//! [`CoreStats`] snapshot is taken on the core itself, on request from any
//! thread ([`crate::Runtime::stats`]), and can be printed in the Prometheus
//! text format with [`render_prometheus`].
//!
//! Besides the runtime's own counters, layers above (transports, applications)
//! register [`Counter`]s by name once per process; each core then counts into
//! its own cell, and snapshots and the Prometheus output include them.
//!
//! Histograms ([`Histogram`]: log-bucketed, fixed memory, plain per-core
//! arrays) record how long loop turns take, how long the core stays parked,
//! how many SQEs each `io_uring_enter` submits and how many CQEs each reap
//! finds; the Prometheus rendering prints them as histograms (`_bucket`,
//! `_sum`, `_count`).

use std::cell::{Cell, RefCell};
use std::fmt::Write;
use std::sync::Mutex;

pub use crate::histogram::Histogram;
use crate::histogram::Log2;
use crate::scoped::scoped_thread_local;

/// Finite buckets of the duration histograms: 256 ns (2^8) to about 2.1 s
/// (2^31 ns), doubling.
const TIME_BUCKETS: usize = 24;
/// Smallest duration bound: 2^8 ns.
const TIME_FIRST_EXP: u32 = 8;
/// Finite buckets of the batch-size histograms: 1 to 8192, doubling.
const BATCH_BUCKETS: usize = 14;

/// A per-core histogram of durations in nanoseconds.
pub(crate) struct TimeHistogram(Log2<TIME_BUCKETS>);

impl Default for TimeHistogram {
    fn default() -> Self {
        TimeHistogram(Log2::new(TIME_FIRST_EXP))
    }
}

impl TimeHistogram {
    /// Counts one duration.
    #[inline]
    pub(crate) fn record(&self, d: std::time::Duration) {
        self.0
            .record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }
}

/// A per-core histogram of batch sizes (SQEs per enter, CQEs per reap).
pub(crate) struct BatchHistogram(Log2<BATCH_BUCKETS>);

impl Default for BatchHistogram {
    fn default() -> Self {
        BatchHistogram(Log2::new(0))
    }
}

impl BatchHistogram {
    /// Counts one batch of `n`.
    #[inline]
    pub(crate) fn record(&self, n: u64) {
        self.0.record(n);
    }
}

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
    pub(crate) recv_throttled: Cell<u64>,
    pub(crate) recv_copies_avoided: Cell<u64>,
    pub(crate) recv_copies_made: Cell<u64>,
    pub(crate) recv_direct_bytes: Cell<u64>,
    pub(crate) recv_direct_copied_bytes: Cell<u64>,
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
    pub(crate) mailbox_full: Cell<u64>,
    pub(crate) send_pool_waits: Cell<u64>,
    /// Busy time of each loop turn (parked time excluded).
    pub(crate) loop_turn: TimeHistogram,
    /// Time of each idle wait (parked in `io_uring_enter`, or spinning then
    /// parked).
    pub(crate) park: TimeHistogram,
    /// SQEs submitted by each `io_uring_enter`.
    pub(crate) sqes_per_enter: BatchHistogram,
    /// CQEs found by each reap of the completion queue.
    pub(crate) cqes_per_reap: BatchHistogram,
    /// Values of the registered [`Counter`]s, by counter id (grown on first
    /// use of a counter registered after the core started).
    named: RefCell<Vec<u64>>,
}

scoped_thread_local!(static CURRENT: Stats);

impl Stats {
    /// Adds `n` to `cell`.
    #[inline]
    pub(crate) fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get().wrapping_add(n));
    }

    /// Publishes `self` as the current core's counters while `f` runs.
    pub(crate) fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.set(self, f)
    }

    /// Values of the registered counters, by id.
    pub(crate) fn named(&self) -> Vec<u64> {
        self.named.borrow().clone()
    }

    fn add_named(&self, id: usize, n: u64) {
        let mut named = self.named.borrow_mut();
        if named.len() <= id {
            named.resize(id + 1, 0);
        }
        named[id] = named[id].wrapping_add(n);
    }
}

/// Runs `f` with the current core's counters.
///
/// # Panics
///
/// Off a ringwire core thread.
#[inline]
pub(crate) fn with<R>(f: impl FnOnce(&Stats) -> R) -> R {
    CURRENT.with(f)
}

/// Runs `f` with the current core's counters, if on a core.
#[inline]
pub(crate) fn try_with<R>(f: impl FnOnce(&Stats) -> R) -> Option<R> {
    CURRENT.try_with(f)
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
    with(|s| {
        Stats::add(&s.recv_copies_avoided, in_place);
        Stats::add(&s.recv_copies_made, copied);
    });
}

// ---------------------------------------------------------------------------
// Named counters

/// What the process-wide registry knows about one [`Counter`].
struct CounterInfo {
    name: String,
    help: String,
    labels: Vec<(String, String)>,
}

static REGISTRY: Mutex<Vec<CounterInfo>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<CounterInfo>> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A named per-core counter, registered once per process.
///
/// Registration ([`Counter::register`]) takes a process-wide lock and belongs
/// at start-up (keep the `Counter` in a `static`/`OnceLock` or in the object
/// that counts); [`Counter::add`] then costs a thread-local lookup and a plain
/// (non-atomic) add on the calling core. Every [`CoreStats`] snapshot carries
/// the values ([`CoreStats::counter`]) and [`render_prometheus`] prints them as
/// `ringwire_<name>{core="..",cpu="..",<labels>}`.
///
/// ```no_run
/// use ringwire_runtime::stats::Counter;
///
/// let sent = Counter::register(
///     "transport_messages_sent_total",
///     "messages sent by the transports",
///     &[("scheme", "tcp")],
/// );
/// // On a core, per message:
/// sent.add(1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Counter {
    id: usize,
}

impl Counter {
    /// Registers (or finds, when the same name and labels were registered
    /// before) a counter. `name` is the Prometheus metric name without the
    /// `ringwire_` prefix (by convention ending in `_total`); `labels` are
    /// extra `(name, value)` pairs.
    ///
    /// # Panics
    ///
    /// When `name` or a label name is not a valid Prometheus name
    /// (`[a-zA-Z_][a-zA-Z0-9_]*`), or a label is named `core` or `cpu`
    /// (those are set per core).
    pub fn register(name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        assert!(valid_name(name), "invalid counter name {name:?}");
        for (label, _) in labels {
            assert!(valid_name(label), "invalid label name {label:?}");
            assert!(
                *label != "core" && *label != "cpu",
                "the label {label:?} is set by the runtime"
            );
        }
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut reg = registry();
        if let Some(id) = reg
            .iter()
            .position(|c| c.name == name && c.labels == labels)
        {
            return Counter { id };
        }
        reg.push(CounterInfo {
            name: name.to_string(),
            help: help.to_string(),
            labels,
        });
        Counter { id: reg.len() - 1 }
    }

    /// Adds `n` on the calling core (does nothing off a ringwire core).
    #[inline]
    pub fn add(&self, n: u64) {
        let _ = try_with(|s| s.add_named(self.id, n));
    }

    /// The calling core's value (0 off a ringwire core).
    pub fn get(&self) -> u64 {
        try_with(|s| s.named.borrow().get(self.id).copied().unwrap_or(0)).unwrap_or(0)
    }

    /// The name it was registered under.
    pub fn name(&self) -> String {
        registry()
            .get(self.id)
            .map(|c| c.name.clone())
            .unwrap_or_default()
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Escapes a Prometheus HELP text (backslash, newline).
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Escapes a Prometheus label value (backslash, double quote, newline).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

// ---------------------------------------------------------------------------
// Snapshots

/// A snapshot of one core's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoreStats {
    /// Index of the core in the runtime (0-based).
    pub core: usize,
    /// CPU the core's thread is pinned to (`None`: not pinned).
    pub cpu: Option<usize>,
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
    /// Multishot receives stopped because their owner left too many
    /// completions untaken (a socket whose owner does not read).
    pub recv_throttled: u64,
    /// Received frames handed out straight from the kernel-filled buffer.
    pub recv_copies_avoided: u64,
    /// Received frames that had to be copied (spanning buffers).
    pub recv_copies_made: u64,
    /// Bytes received straight into caller memory (`recv_exact_into`): the
    /// kernel's copy was the only one.
    pub recv_direct_bytes: u64,
    /// Bytes `recv_exact_into` copied from chunks the multishot receive had
    /// already taken from the socket.
    pub recv_direct_copied_bytes: u64,
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
    /// Times a closure for another core found the mesh ring to it full
    /// (`post` and `submit_to` then wait a turn; `try_post` hands it back).
    pub mailbox_full: u64,
    /// Times a task found the send pool empty and waited for a buffer.
    pub send_pool_waits: u64,
    /// Tasks that held this core for at least the stall threshold (see
    /// [`RuntimeBuilder::stall_threshold`](crate::RuntimeBuilder::stall_threshold);
    /// 0 when no stall detector runs).
    pub stalls: u64,
    /// SQEs in the submission queue or waiting for room in it, at snapshot
    /// time.
    pub sq_pending: u64,
    /// CQEs waiting in the completion queue at snapshot time.
    pub cq_pending: u64,
    /// Stream sockets (TCP, Unix) with a receive started: the connections
    /// this core serves.
    pub streams_receiving: u64,
    /// Busy time of each loop turn in nanoseconds (empty when loop timing is
    /// off, see
    /// [`RuntimeBuilder::loop_timing`](crate::RuntimeBuilder::loop_timing)).
    pub loop_turn_ns: Histogram,
    /// Time of each idle wait in nanoseconds (parked, or spinning and then
    /// parked; empty when loop timing is off).
    pub park_ns: Histogram,
    /// SQEs submitted by each `io_uring_enter` (its count is the number of
    /// enters).
    pub sqes_per_enter: Histogram,
    /// CQEs found by each reap of the completion queue.
    pub cqes_per_reap: Histogram,
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
    /// Values of the registered [`Counter`]s, by counter id.
    pub(crate) named: Vec<u64>,
}

impl CoreStats {
    /// Copies the counters of `stats` (the gauges are filled in by the loop).
    pub(crate) fn counters(core: usize, cpu: Option<usize>, s: &Stats) -> CoreStats {
        CoreStats {
            core,
            cpu,
            ops_submitted: s.ops_submitted.get(),
            ops_completed: s.ops_completed.get(),
            bytes_received: s.bytes_received.get(),
            bytes_sent: s.bytes_sent.get(),
            accepts: s.accepts.get(),
            errors: s.errors.get(),
            loop_turns: s.loop_turns.get(),
            parks: s.parks.get(),
            bufring_starvation: s.bufring_starvation.get(),
            recv_throttled: s.recv_throttled.get(),
            recv_copies_avoided: s.recv_copies_avoided.get(),
            recv_copies_made: s.recv_copies_made.get(),
            recv_direct_bytes: s.recv_direct_bytes.get(),
            recv_direct_copied_bytes: s.recv_direct_copied_bytes.get(),
            remote_wakeups: s.remote_wakeups.get(),
            zc_sends: s.zc_sends.get(),
            zc_notifications: s.zc_notifications.get(),
            zc_copied: s.zc_copied.get(),
            fixed_sends: s.fixed_sends.get(),
            batch_sends: s.batch_sends.get(),
            batched_messages: s.batched_messages.get(),
            doorbells_sent: s.doorbells_sent.get(),
            doorbells_received: s.doorbells_received.get(),
            mailbox_received: s.mailbox_received.get(),
            mailbox_full: s.mailbox_full.get(),
            send_pool_waits: s.send_pool_waits.get(),
            loop_turn_ns: s.loop_turn.0.snapshot(),
            park_ns: s.park.0.snapshot(),
            sqes_per_enter: s.sqes_per_enter.0.snapshot(),
            cqes_per_reap: s.cqes_per_reap.0.snapshot(),
            named: s.named(),
            ..CoreStats::default()
        }
    }

    /// The value of a registered counter at snapshot time.
    pub fn counter(&self, counter: &Counter) -> u64 {
        self.named.get(counter.id).copied().unwrap_or(0)
    }

    /// Messages this core received: frames counted by framing layers with
    /// [`count_frames`] plus every registered counter whose name ends in
    /// `messages_in_total` (the transports' per-scheme counters follow that
    /// convention). Takes the registry's lock: for summaries, not hot paths.
    pub fn messages_in(&self) -> u64 {
        let reg = registry();
        let named = reg
            .iter()
            .enumerate()
            .filter(|(_, c)| c.name.ends_with("messages_in_total"))
            .map(|(id, _)| self.named.get(id).copied().unwrap_or(0))
            .fold(0u64, u64::wrapping_add);
        self.recv_copies_avoided
            .wrapping_add(self.recv_copies_made)
            .wrapping_add(named)
    }
}

/// Renders snapshots in the Prometheus text exposition format, one sample
/// per core and counter, labelled with `core` and `cpu` (no `cpu` label for
/// an unpinned core), then the registered [`Counter`]s with their own labels.
pub fn render_prometheus(stats: &[CoreStats]) -> String {
    let mut out = String::new();
    type Get = fn(&CoreStats) -> u64;
    let metrics: [(&str, &str, &str, Get); BUILTIN_METRICS] = [
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
            "recv_throttled_total",
            "counter",
            "multishot receives stopped until their owner takes what they received",
            |s| s.recv_throttled,
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
            "recv_direct_bytes_total",
            "counter",
            "bytes received straight into caller memory",
            |s| s.recv_direct_bytes,
        ),
        (
            "recv_direct_copied_bytes_total",
            "counter",
            "bytes direct receives copied from already received chunks",
            |s| s.recv_direct_copied_bytes,
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
        (
            "mailbox_full_total",
            "counter",
            "closures that found the mesh ring to their core full",
            |s| s.mailbox_full,
        ),
        (
            "send_pool_waits_total",
            "counter",
            "waits for a free registered send buffer",
            |s| s.send_pool_waits,
        ),
        (
            "stalls_total",
            "counter",
            "tasks that held the core for at least the stall threshold",
            |s| s.stalls,
        ),
        (
            "sq_pending",
            "gauge",
            "SQEs queued and not yet taken by the kernel",
            |s| s.sq_pending,
        ),
        ("cq_pending", "gauge", "CQEs waiting to be reaped", |s| {
            s.cq_pending
        }),
        (
            "streams_receiving",
            "gauge",
            "stream sockets with a receive started (connections served)",
            |s| s.streams_receiving,
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
            let _ = writeln!(out, "ringwire_{name}{{{}}} {}", core_labels(s), get(s));
        }
    }
    type Hist = fn(&CoreStats) -> &Histogram;
    let histograms: [(&str, &str, Option<f64>, Hist); 4] = [
        (
            "loop_turn_seconds",
            "busy time of each event loop turn (parked time excluded)",
            Some(1e-9),
            |s| &s.loop_turn_ns,
        ),
        (
            "park_seconds",
            "time of each idle wait (parked, or spinning then parked)",
            Some(1e-9),
            |s| &s.park_ns,
        ),
        (
            "sqes_per_enter",
            "SQEs submitted by each io_uring_enter (count: enters)",
            None,
            |s| &s.sqes_per_enter,
        ),
        (
            "cqes_per_reap",
            "CQEs found by each reap of the completion queue",
            None,
            |s| &s.cqes_per_reap,
        ),
    ];
    for (name, help, scale, get) in histograms {
        let _ = writeln!(out, "# HELP ringwire_{name} {help}");
        let _ = writeln!(out, "# TYPE ringwire_{name} histogram");
        for s in stats {
            let h = get(s);
            let labels = core_labels(s);
            for (bound, cumulative) in h.buckets() {
                let le = match (bound, scale) {
                    (None, _) => "+Inf".to_string(),
                    (Some(b), Some(scale)) => format!("{}", b as f64 * scale),
                    (Some(b), None) => b.to_string(),
                };
                let _ = writeln!(
                    out,
                    "ringwire_{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            match scale {
                Some(scale) => {
                    let _ = writeln!(
                        out,
                        "ringwire_{name}_sum{{{labels}}} {}",
                        h.sum() as f64 * scale
                    );
                }
                None => {
                    let _ = writeln!(out, "ringwire_{name}_sum{{{labels}}} {}", h.sum());
                }
            }
            let _ = writeln!(out, "ringwire_{name}_count{{{labels}}} {}", h.count());
        }
    }
    // Registered counters, one family per name (HELP and TYPE once).
    let reg = registry();
    let mut done: Vec<&str> = Vec::new();
    for info in reg.iter() {
        if done.contains(&info.name.as_str()) {
            continue;
        }
        done.push(&info.name);
        let _ = writeln!(
            out,
            "# HELP ringwire_{} {}",
            info.name,
            escape_help(&info.help)
        );
        let _ = writeln!(out, "# TYPE ringwire_{} counter", info.name);
        for (id, member) in reg.iter().enumerate() {
            if member.name != info.name {
                continue;
            }
            let mut labels = String::new();
            for (k, v) in &member.labels {
                let _ = write!(labels, ",{k}=\"{}\"", escape_label(v));
            }
            for s in stats {
                let value = s.named.get(id).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "ringwire_{}{{{}{labels}}} {value}",
                    info.name,
                    core_labels(s)
                );
            }
        }
    }
    out
}

/// Number of built-in single-sample metrics in [`render_prometheus`].
const BUILTIN_METRICS: usize = 38;

fn core_labels(s: &CoreStats) -> String {
    match s.cpu {
        Some(cpu) => format!("core=\"{}\",cpu=\"{cpu}\"", s.core),
        None => format!("core=\"{}\"", s.core),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_has_one_sample_per_core_and_metric() {
        let a = CoreStats {
            core: 0,
            cpu: Some(3),
            accepts: 7,
            ..Default::default()
        };
        let b = CoreStats {
            core: 1,
            cpu: None,
            bytes_sent: 42,
            ..Default::default()
        };
        let text = render_prometheus(&[a, b]);
        assert!(text.contains("ringwire_accepts_total{core=\"0\",cpu=\"3\"} 7\n"));
        assert!(text.contains("ringwire_bytes_sent_total{core=\"1\"} 42\n"));
        // Counters registered by other tests of this process are named
        // `test_*`; every built-in metric has one sample per core.
        let histograms = [
            "ringwire_loop_turn_seconds",
            "ringwire_park_seconds",
            "ringwire_sqes_per_enter",
            "ringwire_cqes_per_reap",
        ];
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("ringwire_test_"))
            .filter(|l| !histograms.iter().any(|h| l.starts_with(h)))
            .count();
        assert_eq!(samples, BUILTIN_METRICS * 2);
        // Every histogram has, per core, a +Inf bucket, a sum and a count,
        // even when empty.
        for h in histograms {
            assert!(text.contains(&format!("# TYPE {h} histogram\n")));
            for core in ["core=\"0\",cpu=\"3\"", "core=\"1\""] {
                assert!(text.contains(&format!("{h}_bucket{{{core},le=\"+Inf\"}} 0\n")));
                assert!(text.contains(&format!("{h}_sum{{{core}}} 0\n")));
                assert!(text.contains(&format!("{h}_count{{{core}}} 0\n")));
            }
        }
    }

    #[test]
    fn registered_counters_are_counted_per_core_and_rendered_with_labels() {
        let c = Counter::register("test_unit_events_total", "events", &[("kind", "a\"b")]);
        let same = Counter::register("test_unit_events_total", "events", &[("kind", "a\"b")]);
        let other = Counter::register("test_unit_events_total", "events", &[("kind", "c")]);
        assert_eq!(c, same);
        assert_ne!(c, other);
        // Off a core, adding does nothing.
        c.add(5);
        assert_eq!(c.get(), 0);
        let stats = Stats::default();
        stats.enter(|| {
            c.add(2);
            c.add(3);
            other.add(1);
            assert_eq!(c.get(), 5);
        });
        let snap = CoreStats::counters(0, Some(1), &stats);
        assert_eq!(snap.counter(&c), 5);
        assert_eq!(snap.counter(&other), 1);
        let text = render_prometheus(&[snap]);
        assert_eq!(
            text.matches("# TYPE ringwire_test_unit_events_total counter")
                .count(),
            1
        );
        assert!(text
            .contains("ringwire_test_unit_events_total{core=\"0\",cpu=\"1\",kind=\"a\\\"b\"} 5\n"));
        assert!(
            text.contains("ringwire_test_unit_events_total{core=\"0\",cpu=\"1\",kind=\"c\"} 1\n")
        );
    }

    #[test]
    #[should_panic(expected = "invalid counter name")]
    fn invalid_names_are_refused() {
        Counter::register("bad name", "", &[]);
    }
}
