//! One core: its thread, set-up, event loop and orderly end.
//!
//! [`run_core`] is the body of a core thread: it pins the thread, creates
//! each subsystem's per-core state (counters, context, driver, executor,
//! mesh), publishes each through its own accessor for the lifetime of the
//! loop, runs the loop ([`event_loop`]), then winds down: drops the tasks,
//! cancels and drains every kernel operation, and frees (or, if the kernel
//! may still use it, leaks) the buffer memory.
//!
//! The loop's state ([`event_loop::Core`]) is private to this module; lower
//! layers never reach into it.

mod event_loop;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use crate::context::Context;
use crate::driver::{IoConfig, RingConfig, RingFeatures};
use crate::error::StartError;
use crate::executor::Executor;
use crate::mailbox::doorbell::{Doorbell, Peer};
use crate::mailbox::ring::{Consumer, Producer};
use crate::mailbox::{Envelope, Mesh};
use crate::remote::Shared;
use crate::stats::{CoreStats, Stats};

use self::event_loop::Core;

/// What a core does when it has nothing to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleStrategy {
    /// Block in `io_uring_enter` until a completion arrives. Costs no CPU when
    /// idle; a wake-up costs a context switch.
    Park,
    /// Poll the ring for up to this long, then park. Trades CPU for latency
    /// after short gaps. The default is `Spin(50 us)`
    /// ([`IdleStrategy::DEFAULT`]).
    Spin(Duration),
    /// Never block: keeps its CPU at 100% for the lowest latency.
    Poll,
}

impl IdleStrategy {
    /// The default: spin 50 us, then park. Measured with `benches/idle.sh`
    /// (2-vCPU Intel Xeon VM, against tokio, medians of 3 rounds): ping-pong
    /// p50 0.29x tokio's where parking gives 1.10x; at 1,000 round trips per
    /// second the server uses 8.5% of a core where parking uses 5.0%; an idle
    /// node uses no measurable CPU (it parks after 50 us); throughput per
    /// server CPU-second is unchanged within noise. See docs/BENCHMARKS.md.
    pub const DEFAULT: IdleStrategy = IdleStrategy::Spin(Duration::from_micros(50));
}

impl Default for IdleStrategy {
    fn default() -> IdleStrategy {
        IdleStrategy::DEFAULT
    }
}

/// Parses `park`, `poll`, `spin` (50 us) or `spin:MICROS`, the spelling of
/// the example nodes' `--idle` flag; [`Display`](std::fmt::Display) writes
/// the same spelling back.
impl std::str::FromStr for IdleStrategy {
    type Err = String;

    fn from_str(v: &str) -> Result<IdleStrategy, String> {
        match v {
            "park" => Ok(IdleStrategy::Park),
            "poll" => Ok(IdleStrategy::Poll),
            "spin" => Ok(IdleStrategy::Spin(Duration::from_micros(50))),
            s => match s.strip_prefix("spin:") {
                Some(us) => us
                    .parse::<u64>()
                    .map(|us| IdleStrategy::Spin(Duration::from_micros(us)))
                    .map_err(|e| format!("{s:?}: {e} (expected spin:MICROSECONDS)")),
                None => Err(format!("{s:?}: expected park, spin[:MICROS] or poll")),
            },
        }
    }
}

impl std::fmt::Display for IdleStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdleStrategy::Park => f.write_str("park"),
            IdleStrategy::Poll => f.write_str("poll"),
            IdleStrategy::Spin(d) => write!(f, "spin:{}", d.as_micros()),
        }
    }
}

#[cfg(test)]
mod idle_tests {
    use super::IdleStrategy;
    use std::time::Duration;

    #[test]
    fn idle_strategies_parse_and_print_the_same_spelling() {
        for s in ["park", "poll", "spin:0", "spin:50", "spin:200"] {
            let idle: IdleStrategy = s.parse().unwrap();
            assert_eq!(idle.to_string(), s);
        }
        assert_eq!(
            "spin".parse::<IdleStrategy>(),
            Ok(IdleStrategy::Spin(Duration::from_micros(50)))
        );
        assert!("spin:x"
            .parse::<IdleStrategy>()
            .unwrap_err()
            .contains("spin:x"));
        assert!("busy".parse::<IdleStrategy>().unwrap_err().contains("busy"));
    }
}

/// Settings a core thread starts with.
pub(crate) struct CoreConfig {
    pub(crate) index: usize,
    /// The CPU to pin to (`None`: not pinned).
    pub(crate) cpu: Option<usize>,
    pub(crate) ring: RingConfig,
    pub(crate) io: IoConfig,
    pub(crate) idle: IdleStrategy,
    pub(crate) doorbell: Doorbell,
    pub(crate) peers: Arc<Vec<Arc<Peer>>>,
    pub(crate) mesh_out: Vec<Option<Producer<Envelope>>>,
    pub(crate) mesh_in: Vec<Consumer<Envelope>>,
    pub(crate) wait_batch: Option<(u32, Duration)>,
    pub(crate) loop_timing: bool,
    /// What this core shares with the stall detector, when one runs.
    pub(crate) watch: Option<Arc<crate::stall::Watch>>,
}

/// What a core reports when its thread ends.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CoreExit {
    pub(crate) tasks_aborted: usize,
    pub(crate) ops_leaked: usize,
    /// The loop, or its winding down, panicked (caught and logged: the
    /// thread ends normally so that the rest of this report still counts).
    pub(crate) panicked: bool,
}

/// Body of a core thread: set up, report readiness, run, wind down.
pub(crate) fn run_core(
    cfg: CoreConfig,
    shared: Arc<Shared>,
    ready: std::sync::mpsc::Sender<Result<RingFeatures, StartError>>,
) -> CoreExit {
    let CoreConfig {
        index,
        cpu,
        ring,
        io,
        idle,
        doorbell,
        peers,
        mesh_out,
        mesh_in,
        wait_batch,
        loop_timing,
        watch,
    } = cfg;
    let setup = || -> Result<crate::driver::Context, StartError> {
        if let Some(cpu) = cpu {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                return Err(StartError::Pin { cpu });
            }
        }
        // SAFETY: the eventfd is owned by `shared`, which the core's `Peer`
        // holds for the runtime's lifetime; the peer closes its duplicate of
        // the ring's descriptor (the last one once this core's ring is
        // dropped) before it drops `shared`, so the eventfd stays open for as
        // long as the ring context may consume the read.
        let driver =
            unsafe { crate::driver::Context::new(&ring, io, shared.eventfd().as_raw_fd()) }?;
        // Other cores ring this core's doorbell through a duplicate of the
        // ring's descriptor, which stays valid (and keeps the ring context
        // alive) for the runtime's lifetime, whatever this thread does.
        let ring_fd = driver.driver.borrow().ring_fd();
        match crate::sys::dup_cloexec(ring_fd) {
            Ok(dup) => peers[index].set_ring(dup),
            // Without a duplicate, senders use the eventfd doorbell.
            Err(e) => {
                tracing::warn!(core = index, error = %e, "no MSG_RING doorbell for this core")
            }
        }
        Ok(driver)
    };
    let driver = match setup() {
        Ok(d) => d,
        Err(e) => {
            let _ = ready.send(Err(e));
            return CoreExit::default();
        }
    };
    let features = driver.driver.borrow().features();
    tracing::debug!(core = index, ?cpu, ?features, "core started");
    let _ = ready.send(Ok(features));
    drop(ready);

    let core = Core {
        stats: Stats::default(),
        context: Context::new(index, cpu),
        driver,
        exec: Executor::new(shared.exec_id, watch.map(|w| w.attach())),
        mesh: Mesh::new(index, doorbell, peers, mesh_out, mesh_in),
        shared,
        idle,
        wait_batch,
        loop_timing,
    };
    let span = tracing::info_span!("core", core = index, cpu = ?cpu);
    let _entered = span.enter();
    core.run_to_end()
}

/// Runs a closure that came from another thread or core, so that a panic in
/// it is reported instead of tearing the core down.
pub(crate) fn run_guarded(f: impl FnOnce(), what: &str) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        tracing::error!("{what} panicked; the core keeps running");
    }
}

/// A snapshot of the calling core's counters.
///
/// # Panics
///
/// Off a ringwire core thread.
pub fn core_stats() -> CoreStats {
    let (core, cpu) = crate::context::with(|c| (c.index(), c.cpu()));
    let mut s = crate::stats::with(|st| CoreStats::counters(core, cpu, st));
    s.tasks = crate::executor::task_count() as u64;
    s.stalls = crate::executor::stalls();
    crate::driver::with(|cx| {
        let mut driver = cx.driver.borrow_mut();
        let bufs = cx.bufs.borrow();
        let pool = cx.pool.borrow();
        s.ops_in_flight = driver.ops_in_table() as u64;
        s.sq_pending = driver.sq_pending() as u64;
        s.cq_pending = driver.cq_pending() as u64;
        s.cq_overflow = u64::from(driver.cq_overflow());
        s.recv_buffers_free = u64::from(bufs.available());
        s.recv_buffers_total = u64::from(bufs.count());
        s.send_buffers_free = pool.free_count() as u64;
        s.send_buffers_total = u64::from(pool.count());
        drop(driver);
        s.streams_receiving = cx.receiving_streams() as u64;
    });
    s.mailbox_depth = crate::mailbox::mesh::with(|m| m.depth()) as u64;
    s
}
