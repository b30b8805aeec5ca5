//! Building, using and stopping a runtime.
//!
//! In order: [`Runtime::builder`] -> [`RuntimeBuilder`] knobs ->
//! [`RuntimeBuilder::build`] (starts one pinned thread per core, each with its
//! own ring; returns the first start-up error of any core) ->
//! [`Runtime::spawn_on`] / [`Runtime::spawn_on_all`] / [`Runtime::block_on`]
//! to run work on cores -> [`Runtime::stats`] for counters ->
//! [`Runtime::shutdown`] (or drop) to stop.

use std::future::Future;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::core::{run_core, CoreConfig, CoreExit, IoConfig, Shared};
use crate::driver::{RingConfig, RingFeatures};
use crate::executor::{spawn_reporting, JoinError};
use crate::mailbox::build_mesh;
use crate::mailbox::doorbell::{Doorbell, Peer};
use crate::stats::CoreStats;

/// Where the core threads run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// One core per listed CPU id, pinned there, in this order.
    Cpus(Vec<usize>),
    /// One core per CPU this process may run on, pinned.
    AllOnline,
    /// This many cores, pinned to the first CPUs this process may run on.
    Count(usize),
    /// This many cores, not pinned (tests, or when the scheduler knows best).
    Unpinned(usize),
}

/// What a core does when it has nothing to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleStrategy {
    /// Block in `io_uring_enter` until a completion arrives. Costs no CPU when
    /// idle; a wake-up costs a context switch.
    Park,
    /// Poll the ring for up to this long, then park. Trades CPU for latency
    /// after short gaps.
    Spin(Duration),
    /// Never block: keeps its CPU at 100% for the lowest latency.
    Poll,
}

/// Builder of a [`Runtime`]; see each method for the knob's memory cost.
#[derive(Clone, Debug)]
pub struct RuntimeBuilder {
    placement: Placement,
    ring_entries: u32,
    idle: IdleStrategy,
    sqpoll_idle_ms: Option<u32>,
    recv_buffers: u16,
    recv_buffer_size: u32,
    send_buffers: u16,
    send_buffer_size: u32,
    io: IoConfig,
    doorbell: Doorbell,
    mailbox_capacity: usize,
    wait_batch: Option<(u32, Duration)>,
    thread_name: String,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        RuntimeBuilder {
            placement: Placement::AllOnline,
            ring_entries: 1024,
            idle: IdleStrategy::Park,
            sqpoll_idle_ms: None,
            recv_buffers: 1024,
            recv_buffer_size: 16 * 1024,
            send_buffers: 64,
            send_buffer_size: 64 * 1024,
            io: IoConfig {
                recv_multishot: true,
                fixed_send: false,
                zc_threshold: None,
            },
            doorbell: Doorbell::MsgRing,
            mailbox_capacity: 1024,
            wait_batch: Some((16, Duration::from_micros(50))),
            thread_name: "ringwire-core".to_string(),
        }
    }
}

impl RuntimeBuilder {
    /// Where to run cores. Default: [`Placement::AllOnline`].
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Shorthand for `placement(Placement::Cpus(cpus))`.
    pub fn cpus(self, cpus: impl Into<Vec<usize>>) -> Self {
        self.placement(Placement::Cpus(cpus.into()))
    }

    /// Submission queue entries per ring (power of two, up to 32768; the
    /// completion queue gets four times as many). Memory: about 64 bytes per
    /// SQ entry plus 64 per CQ entry (16 + 16 per entry in the rings, the rest
    /// in kernel bookkeeping), per core. Default: 1024.
    pub fn ring_entries(mut self, entries: u32) -> Self {
        self.ring_entries = entries;
        self
    }

    /// What an idle core does. Default: [`IdleStrategy::Park`].
    pub fn idle(mut self, idle: IdleStrategy) -> Self {
        self.idle = idle;
        self
    }

    /// Use a kernel submission-polling thread per ring that sleeps after
    /// `idle_ms` without work. Costs one kernel thread (and, while busy, a
    /// CPU) per core; turns off DEFER_TASKRUN, which cannot be combined with
    /// it. Default: off.
    pub fn sqpoll(mut self, idle_ms: Option<u32>) -> Self {
        self.sqpoll_idle_ms = idle_ms;
        self
    }

    /// Receive buffers per core in the provided buffer ring (power of two, up
    /// to 32768). Memory: `count * size` bytes per core, plus 16 bytes per
    /// buffer of pinned ring. Default: 1024.
    pub fn recv_buffers(mut self, count: u16) -> Self {
        self.recv_buffers = count;
        self
    }

    /// Size of each receive buffer in bytes; a multiple of 4096 keeps every
    /// buffer page aligned. Default: 16 KiB (so 16 MiB per core by default).
    pub fn recv_buffer_size(mut self, size: u32) -> Self {
        self.recv_buffer_size = size;
        self
    }

    /// Registered (fixed) send buffers per core, handed out as
    /// [`crate::SendBuf`]. Memory: `count * size` bytes per core, pinned, so
    /// it counts against the locked-memory limit (`ulimit -l`) unless the
    /// process has CAP_IPC_LOCK. 0 disables the pool. Default: 64.
    pub fn send_buffers(mut self, count: u16) -> Self {
        self.send_buffers = count;
        self
    }

    /// Size of each registered send buffer. Default: 64 KiB (4 MiB per core
    /// with the default count).
    pub fn send_buffer_size(mut self, size: u32) -> Self {
        self.send_buffer_size = size;
        self
    }

    /// Receive with one multishot `RECV` per socket (default, true) or with
    /// one single-shot `RECV` per arrival (false; kept for A/B measurement).
    /// Both pick buffers from the provided buffer ring.
    pub fn recv_multishot(mut self, on: bool) -> Self {
        self.io.recv_multishot = on;
        self
    }

    /// Send [`crate::SendBuf`]s through the registered-buffer path
    /// (`WRITE_FIXED`) rather than a plain `SEND` of the same memory.
    /// Default: false: on this project's loopback measurements `WRITE_FIXED`
    /// on a socket gained 8% at 64 B and lost 5-40% from 1 KiB up (sockets
    /// copy the bytes either way; see docs/BENCHMARKS.md). The pool buffers
    /// are pre-registered either way, so the path can be chosen per
    /// deployment.
    pub fn fixed_send(mut self, on: bool) -> Self {
        self.io.fixed_send = on;
        self
    }

    /// Sends of at least this many bytes use `SEND_ZC` (the buffer is given
    /// back only after the kernel's release notification). `None` turns
    /// zero-copy sends off. Default: `None`, because on loopback the kernel
    /// copies anyway and `SEND_ZC` measured slower than a plain send at every
    /// size (see docs/BENCHMARKS.md); over a real NIC, large sends may gain.
    pub fn zero_copy_threshold(mut self, bytes: Option<usize>) -> Self {
        self.io.zc_threshold = bytes;
        self
    }

    /// How a core wakes a parked peer for mailbox traffic. Default:
    /// [`Doorbell::MsgRing`].
    pub fn doorbell(mut self, doorbell: Doorbell) -> Self {
        self.doorbell = doorbell;
        self
    }

    /// Slots in each core-to-core mesh ring (one ring per ordered pair of
    /// cores, rounded up to a power of two). Memory: 16 bytes per slot per
    /// pair, so `cores * (cores - 1) * capacity * 16` bytes. Default: 1024.
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.mailbox_capacity = capacity;
        self
    }

    /// When parking with many streams receiving, wait for up to `max`
    /// completions (a quarter of the receiving streams, at most `max`) but no
    /// longer than `max_wait`, instead of waking on the first. Fewer, fuller
    /// wake-ups mean fewer and larger sends under load; a single busy
    /// connection still wakes at once. `None` always wakes on the first
    /// completion. Default: `Some((16, 50 µs))`.
    pub fn wait_batch(mut self, batch: Option<(u32, Duration)>) -> Self {
        self.wait_batch = batch;
        self
    }

    /// Name prefix of the core threads (the core index is appended).
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = name.into();
        self
    }

    /// Starts the cores. Each core thread pins itself, creates its ring and
    /// registers its buffers; the first failure is returned (with the other
    /// cores stopped) as an error that says what went wrong and how to fix it.
    pub fn build(self) -> io::Result<Runtime> {
        let (cpus, pin) = self.resolve_cpus()?;
        if cpus.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a runtime needs at least one core",
            ));
        }
        let ring = RingConfig {
            entries: self.ring_entries,
            sqpoll_idle_ms: self.sqpoll_idle_ms,
            buf_count: self.recv_buffers,
            buf_size: self.recv_buffer_size,
            send_count: self.send_buffers,
            send_size: self.send_buffer_size,
        };
        let shareds = (0..cpus.len())
            .map(|_| Shared::new())
            .collect::<io::Result<Vec<_>>>()?;
        let peers: Arc<Vec<Arc<Peer>>> = Arc::new(
            shareds
                .iter()
                .enumerate()
                .map(|(i, s)| Arc::new(Peer::new(i, s.clone())))
                .collect(),
        );
        let mesh = build_mesh(cpus.len(), self.mailbox_capacity);
        let mut cores = Vec::with_capacity(cpus.len());
        let mut first_err = None;
        for ((index, &cpu), (shared, (mesh_out, mesh_in))) in
            cpus.iter().enumerate().zip(shareds.into_iter().zip(mesh))
        {
            let (tx, rx) = std::sync::mpsc::channel();
            let cfg = CoreConfig {
                index,
                cpu,
                ring: ring.clone(),
                io: self.io,
                idle: self.idle,
                pin,
                doorbell: self.doorbell,
                peers: peers.clone(),
                mesh_out,
                mesh_in,
                wait_batch: self.wait_batch,
            };
            let thread_shared = shared.clone();
            let thread = thread::Builder::new()
                .name(format!("{}-{index}", self.thread_name))
                .spawn(move || run_core(cfg, thread_shared, tx))?;
            let result = rx
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("core thread died during start-up")));
            match result {
                Ok(features) => cores.push(CoreHandle {
                    shared,
                    cpu,
                    features,
                    thread: Some(thread),
                }),
                Err(e) => {
                    let _ = thread.join();
                    first_err = Some(io::Error::new(
                        e.kind(),
                        format!("core {index} (CPU {cpu}): {e}"),
                    ));
                    break;
                }
            }
        }
        let rt = Runtime { cores };
        match first_err {
            Some(e) => {
                rt.shutdown(Duration::from_secs(1));
                Err(e)
            }
            None => Ok(rt),
        }
    }

    fn resolve_cpus(&self) -> io::Result<(Vec<usize>, bool)> {
        let available = || -> Vec<usize> {
            let mut ids: Vec<usize> = core_affinity::get_core_ids()
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.id)
                .collect();
            ids.sort_unstable();
            ids
        };
        match &self.placement {
            Placement::Cpus(list) => {
                let avail = available();
                for (i, cpu) in list.iter().enumerate() {
                    if !avail.contains(cpu) {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "CPU {cpu} does not exist or is outside this process's CPU set \
                                 (available: {avail:?})"
                            ),
                        ));
                    }
                    if list[..i].contains(cpu) {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("CPU {cpu} is listed twice; one core per CPU"),
                        ));
                    }
                }
                Ok((list.clone(), true))
            }
            Placement::AllOnline => Ok((available(), true)),
            Placement::Count(n) => {
                let avail = available();
                if *n > avail.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "asked for {n} pinned cores but only {} CPUs are available ({avail:?})",
                            avail.len()
                        ),
                    ));
                }
                Ok((avail[..*n].to_vec(), true))
            }
            Placement::Unpinned(n) => Ok(((0..*n).collect(), false)),
        }
    }
}

struct CoreHandle {
    shared: Arc<Shared>,
    cpu: usize,
    features: RingFeatures,
    thread: Option<thread::JoinHandle<CoreExit>>,
}

/// A set of pinned cores, each running its own executor and io_uring ring.
///
/// Dropping the runtime shuts it down with a 5-second grace period.
pub struct Runtime {
    cores: Vec<CoreHandle>,
}

impl Runtime {
    /// A builder with defaults: every available CPU, 1024 ring entries,
    /// parking when idle, 1024 receive buffers of 16 KiB per core.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// Number of cores.
    pub fn core_count(&self) -> usize {
        self.cores.len()
    }

    /// CPU of each core, by core index.
    pub fn cpus(&self) -> Vec<usize> {
        self.cores.iter().map(|c| c.cpu).collect()
    }

    /// The ring features each core ended up with, by core index.
    pub fn ring_features(&self) -> Vec<RingFeatures> {
        self.cores.iter().map(|c| c.features).collect()
    }

    /// Runs `f` on core `core`; the future it returns becomes a task there.
    ///
    /// # Panics
    ///
    /// When `core >= core_count()`.
    pub fn spawn_on<F, Fut>(&self, core: usize, f: F) -> RemoteHandle<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        let slot = Arc::new(HandleSlot {
            result: Mutex::new(None),
            done: Condvar::new(),
        });
        let reporter = Reporter { slot: slot.clone() };
        self.cores[core].shared.run(Box::new(move || {
            spawn_reporting(f(), move |result| reporter.report(result));
        }));
        RemoteHandle { slot }
    }

    /// Runs `f(core_index)` on every core.
    pub fn spawn_on_all<F, Fut>(&self, f: F) -> Vec<RemoteHandle<Fut::Output>>
    where
        F: Fn(usize) -> Fut + Send + Clone + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        (0..self.cores.len())
            .map(|i| {
                let f = f.clone();
                self.spawn_on(i, move || f(i))
            })
            .collect()
    }

    /// Runs `f` on core `core` and blocks the calling thread until its future
    /// finishes.
    pub fn block_on<F, Fut>(&self, core: usize, f: F) -> Result<Fut::Output, JoinError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        self.spawn_on(core, f).join()
    }

    /// A snapshot of every core's counters, taken on each core.
    pub fn stats(&self) -> Vec<CoreStats> {
        let handles: Vec<_> = (0..self.cores.len())
            .map(|i| self.spawn_on(i, || async { crate::core::core_stats() }))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join_timeout(Duration::from_secs(5)).and_then(Result::ok))
            .collect()
    }

    /// A handle that can start shutdown from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            cores: self.cores.iter().map(|c| c.shared.clone()).collect(),
        }
    }

    /// Stops the runtime: listeners stop accepting and receives end at once;
    /// tasks get until `grace` to finish (sends in flight complete); then
    /// remaining tasks are dropped, every kernel operation is cancelled and
    /// waited for, and the core threads are joined.
    pub fn shutdown(mut self, grace: Duration) -> ShutdownReport {
        self.shutdown_inner(grace)
    }

    fn shutdown_inner(&mut self, grace: Duration) -> ShutdownReport {
        let deadline = Instant::now() + grace;
        for c in &self.cores {
            c.shared.shutdown(deadline);
        }
        let mut report = ShutdownReport::default();
        for c in &mut self.cores {
            if let Some(t) = c.thread.take() {
                match t.join() {
                    Ok(exit) => {
                        report.tasks_aborted += exit.tasks_aborted;
                        report.ops_leaked += exit.ops_leaked;
                    }
                    Err(_) => report.cores_panicked += 1,
                }
            }
        }
        report
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if self.cores.iter().any(|c| c.thread.is_some()) {
            self.shutdown_inner(Duration::from_secs(5));
        }
    }
}

/// What happened during [`Runtime::shutdown`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Tasks still running at the deadline, dropped.
    pub tasks_aborted: usize,
    /// Kernel operations that did not finish cancelling; their buffers were
    /// leaked rather than freed.
    pub ops_leaked: usize,
    /// Core threads that panicked.
    pub cores_panicked: usize,
}

/// Starts a runtime's shutdown from any thread (e.g. a signal handler
/// thread). Cloneable.
#[derive(Clone)]
pub struct ShutdownHandle {
    cores: Vec<Arc<Shared>>,
}

impl ShutdownHandle {
    /// Starts shutdown with `grace` for tasks to finish; does not wait.
    pub fn shutdown(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for c in &self.cores {
            c.shutdown(deadline);
        }
    }
}

struct HandleSlot<T> {
    result: Mutex<Option<Result<T, JoinError>>>,
    done: Condvar,
}

/// Reports the task's result, or cancellation if dropped before it could.
struct Reporter<T> {
    slot: Arc<HandleSlot<T>>,
}

impl<T> Reporter<T> {
    fn report(self, r: Result<T, JoinError>) {
        let mut g = self.slot.result.lock().unwrap_or_else(|p| p.into_inner());
        *g = Some(r);
        self.slot.done.notify_all();
    }
}

impl<T> Drop for Reporter<T> {
    fn drop(&mut self) {
        let mut g = self.slot.result.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(Err(JoinError::Cancelled));
            self.slot.done.notify_all();
        }
    }
}

/// The result of work started with [`Runtime::spawn_on`], awaited from any
/// thread by blocking.
pub struct RemoteHandle<T> {
    slot: Arc<HandleSlot<T>>,
}

impl<T> RemoteHandle<T> {
    /// Blocks until the task finishes.
    pub fn join(self) -> Result<T, JoinError> {
        let mut g = self.slot.result.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = g.take() {
                return r;
            }
            g = self.slot.done.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Blocks until the task finishes or `timeout` passes (`None`).
    pub fn join_timeout(self, timeout: Duration) -> Option<Result<T, JoinError>> {
        let deadline = Instant::now() + timeout;
        let mut g = self.slot.result.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = g.take() {
                return Some(r);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            g = self
                .slot
                .done
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Whether the task has finished.
    pub fn is_finished(&self) -> bool {
        self.slot
            .result
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}
