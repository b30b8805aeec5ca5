//! One core: its thread, event loop and the state the loop owns.
//!
//! A [`Core`] lives on the stack of its pinned thread and is reachable from
//! code running on that thread through a thread-local pointer
//! ([`with_core`]). It owns the executor, the io_uring driver, the provided
//! buffer ring and the counters. Other threads reach a core only through its
//! [`Shared`] part: a mutex-protected queue of closures and wake-ups plus an
//! eventfd doorbell, used for control (spawning, stats, shutdown, cross-thread
//! wakers), never on the data path.
//!
//! One loop turn: run the ready tasks -> drop finished operations' resources
//! -> re-arm starved receives -> drain the remote queue -> submit and reap in
//! one `io_uring_enter` (blocking only when nothing is ready, as the idle
//! strategy says) -> dispatch completions, which wakes tasks.

use std::cell::{Cell, RefCell};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::driver::bufring::BufRing;
use crate::driver::sendpool::SendPool;
use crate::driver::{Driver, RingConfig};
use crate::executor::Executor;
use crate::mailbox::doorbell::{Doorbell, Peer};
use crate::mailbox::ring::{Consumer, Producer};
use crate::mailbox::{Envelope, Mesh};
use crate::runtime::IdleStrategy;
use crate::stats::{CoreStats, Stats};

/// A closure sent to a core from another thread.
pub(crate) type RemoteFn = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Remote {
    closures: Vec<RemoteFn>,
    wakes: Vec<u32>,
    shutdown: Option<Instant>,
}

/// The part of a core that other threads may touch.
pub(crate) struct Shared {
    pub(crate) exec_id: u32,
    pub(crate) eventfd: std::os::fd::OwnedFd,
    queue: Mutex<Remote>,
    notified: AtomicBool,
    /// The core's loop has ended.
    stopped: AtomicBool,
}

impl Shared {
    pub(crate) fn new() -> io::Result<Arc<Shared>> {
        static NEXT_EXEC_ID: AtomicU32 = AtomicU32::new(1);
        let shared = Arc::new(Shared {
            exec_id: NEXT_EXEC_ID.fetch_add(1, Ordering::Relaxed),
            eventfd: crate::sys::eventfd()?,
            queue: Mutex::new(Remote::default()),
            notified: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        registry().push((shared.exec_id, Arc::downgrade(&shared)));
        Ok(shared)
    }

    fn post(&self, f: impl FnOnce(&mut Remote)) {
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut q);
        }
        if !self.notified.swap(true, Ordering::AcqRel) {
            use std::os::fd::AsRawFd;
            crate::sys::eventfd_signal(self.eventfd.as_raw_fd());
        }
    }

    /// Whether the core's loop has ended (work sent now will not run).
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Runs `f` on the core (it typically spawns a task there).
    pub(crate) fn run(&self, f: RemoteFn) {
        self.post(|q| q.closures.push(f));
    }

    /// Asks the core to shut down by `deadline`.
    pub(crate) fn shutdown(&self, deadline: Instant) {
        self.post(|q| {
            if q.shutdown.is_none() {
                q.shutdown = Some(deadline);
            }
        });
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let id = self.exec_id;
        registry().retain(|(i, _)| *i != id);
    }
}

fn registry() -> std::sync::MutexGuard<'static, Vec<(u32, Weak<Shared>)>> {
    static REGISTRY: Mutex<Vec<(u32, Weak<Shared>)>> = Mutex::new(Vec::new());
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wakes task `key` of executor `exec_id` from a thread that is not its core.
pub(crate) fn wake_remote(exec_id: u32, key: u32) {
    let shared = registry()
        .iter()
        .find(|(id, _)| *id == exec_id)
        .and_then(|(_, w)| w.upgrade());
    // A core that is gone has no task left to wake.
    if let Some(shared) = shared {
        shared.post(|q| q.wakes.push(key));
    }
}

// ---------------------------------------------------------------------------

thread_local! {
    static CURRENT: Cell<*const Core> = const { Cell::new(std::ptr::null()) };
}

/// Runs `f` with the current core, or returns `None` off a core thread.
pub(crate) fn try_with_core<R>(f: impl FnOnce(&Core) -> R) -> Option<R> {
    let p = CURRENT.try_with(|c| c.get()).unwrap_or(std::ptr::null());
    if p.is_null() {
        return None;
    }
    // SAFETY: CURRENT is non-null only between `CurrentGuard::set` and the
    // guard's drop in `run_core`, during which the `Core` it points to lives on
    // that same thread's stack and is only ever borrowed shared.
    Some(f(unsafe { &*p }))
}

/// Runs `f` with the current core.
///
/// # Panics
///
/// Off a ringwire core thread.
pub(crate) fn with_core<R>(f: impl FnOnce(&Core) -> R) -> R {
    match try_with_core(f) {
        Some(r) => r,
        None => not_on_core(),
    }
}

#[cold]
fn not_on_core() -> ! {
    panic!("this ringwire function must be called from a task running on a ringwire core")
}

struct CurrentGuard;

impl CurrentGuard {
    fn set(core: &Core) -> CurrentGuard {
        CURRENT.with(|c| c.set(core as *const Core));
        CurrentGuard
    }
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(std::ptr::null()));
    }
}

/// Index (0-based, in placement order) of the core running the caller.
///
/// # Panics
///
/// Off a ringwire core thread.
pub fn current_core() -> usize {
    with_core(|c| c.index)
}

/// Index of the core running the caller, or `None` off a ringwire core
/// thread.
pub fn try_current_core() -> Option<usize> {
    try_with_core(|c| c.index)
}

/// CPU the calling core is pinned to.
///
/// # Panics
///
/// Off a ringwire core thread.
pub fn current_cpu() -> usize {
    with_core(|c| c.cpu)
}

/// Whether the calling core is shutting down: listeners stop accepting and
/// receives end; tasks should finish what they send and return.
///
/// # Panics
///
/// Off a ringwire core thread.
pub fn is_shutting_down() -> bool {
    with_core(|c| c.is_shutting_down())
}

/// A snapshot of the calling core's counters.
///
/// # Panics
///
/// Off a ringwire core thread.
pub fn core_stats() -> CoreStats {
    with_core(|c| c.snapshot())
}

/// Everything one core owns. Field order matters for drop: the driver (and
/// with it the ring) goes before the buffer memory the ring points into.
pub(crate) struct Core {
    pub(crate) index: usize,
    pub(crate) cpu: usize,
    pub(crate) exec: Executor,
    pub(crate) driver: RefCell<Driver>,
    pub(crate) bufs: RefCell<BufRing>,
    pub(crate) send_pool: RefCell<SendPool>,
    pub(crate) mesh: Mesh,
    pub(crate) io: IoConfig,
    pub(crate) stats: Stats,
    pub(crate) shared: Arc<Shared>,
    shutdown_deadline: Cell<Option<Instant>>,
    idle: IdleStrategy,
    /// Streams with a receive started (a proxy for how many completions a
    /// busy loop turn can expect).
    pub(crate) receiving_streams: Cell<usize>,
    wait_batch: Option<(u32, Duration)>,
}

/// How sockets on a core receive and send (switches kept for A/B measurement).
#[derive(Clone, Copy, Debug)]
pub(crate) struct IoConfig {
    /// Multishot receive (one SQE per socket) rather than one SQE per receive.
    pub(crate) recv_multishot: bool,
    /// Send pool buffers through the registered-buffer path.
    pub(crate) fixed_send: bool,
    /// Sends of at least this many bytes use SEND_ZC.
    pub(crate) zc_threshold: Option<usize>,
}

/// Settings a core thread starts with.
pub(crate) struct CoreConfig {
    pub(crate) index: usize,
    pub(crate) cpu: usize,
    pub(crate) ring: RingConfig,
    pub(crate) io: IoConfig,
    pub(crate) idle: IdleStrategy,
    pub(crate) pin: bool,
    pub(crate) doorbell: Doorbell,
    pub(crate) peers: Arc<Vec<Arc<Peer>>>,
    pub(crate) mesh_out: Vec<Option<Producer<Envelope>>>,
    pub(crate) mesh_in: Vec<Consumer<Envelope>>,
    pub(crate) wait_batch: Option<(u32, Duration)>,
}

/// What a core reports when its thread ends.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CoreExit {
    pub(crate) tasks_aborted: usize,
    pub(crate) ops_leaked: usize,
}

/// Body of a core thread: set up, report readiness, run, wind down.
pub(crate) fn run_core(
    cfg: CoreConfig,
    shared: Arc<Shared>,
    ready: std::sync::mpsc::Sender<io::Result<crate::driver::RingFeatures>>,
) -> CoreExit {
    let CoreConfig {
        index,
        cpu,
        ring,
        io,
        idle,
        pin,
        doorbell,
        peers,
        mesh_out,
        mesh_in,
        wait_batch,
    } = cfg;
    let cfg_ring = ring;
    let setup = move || -> io::Result<Core> {
        if pin && !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            return Err(io::Error::other(format!(
                "could not pin a thread to CPU {cpu} (sched_setaffinity refused)"
            )));
        }
        use std::os::fd::AsRawFd;
        let driver = Driver::new(&cfg_ring, shared.eventfd.as_raw_fd())?;
        let bufs = BufRing::new(driver.ring(), cfg_ring.buf_count, cfg_ring.buf_size)?;
        let send_pool = SendPool::new(driver.ring(), cfg_ring.send_count, cfg_ring.send_size)?;
        let mut io = io;
        if !driver.features.send_zc {
            io.zc_threshold = None;
        }
        peers[index]
            .ring_fd
            .store(driver.ring_fd(), Ordering::Release);
        Ok(Core {
            index,
            cpu,
            exec: Executor::new(shared.exec_id),
            driver: RefCell::new(driver),
            bufs: RefCell::new(bufs),
            send_pool: RefCell::new(send_pool),
            mesh: Mesh::new(index, doorbell, peers, mesh_out, mesh_in),
            io,
            stats: Stats::default(),
            shared: shared.clone(),
            shutdown_deadline: Cell::new(None),
            idle,
            receiving_streams: Cell::new(0),
            wait_batch,
        })
    };
    let core = match setup() {
        Ok(core) => core,
        Err(e) => {
            let _ = ready.send(Err(e));
            return CoreExit::default();
        }
    };
    let features = core.driver.borrow().features;
    tracing::debug!(core = index, cpu, ?features, "core started");
    let _ = ready.send(Ok(features));
    drop(ready);

    let guard = CurrentGuard::set(&core);
    let span = tracing::debug_span!("core", index, cpu);
    let entered = span.enter();
    // User code runs inside the loop (task polls are already caught; closures
    // and drops are caught here too): whatever happens, the loop's end must
    // reach `finish` and the leak-or-free decision below, or memory the
    // kernel or other cores still use would be freed.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| core.run()));
    match &outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "io_uring_enter failed; core stops"),
        Err(_) => tracing::error!("core loop panicked; winding the core down"),
    }
    let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| core.finish()));
    drop(entered);
    drop(guard);
    // Send-pool buffers lent to other cores (`RemoteBuf`) point into the
    // pool's memory without owning it: keep it alive if any is still out.
    let lent = match core.send_pool.try_borrow() {
        Ok(pool) => pool.free_count() < usize::from(pool.count()),
        Err(_) => true,
    };
    let exit = finished.unwrap_or(CoreExit {
        tasks_aborted: 0,
        ops_leaked: usize::MAX,
    });
    if exit.ops_leaked > 0 || lent {
        // The kernel may still write into receive buffers of operations it
        // has not finished cancelling, and lent send buffers may still be
        // read: leak the memory rather than free it.
        let Core {
            bufs, send_pool, ..
        } = core;
        std::mem::forget(bufs);
        std::mem::forget(send_pool);
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    exit
}

/// Runs a closure that came from another thread or core, so that a panic in
/// it is reported instead of tearing the core down.
pub(crate) fn run_guarded(f: impl FnOnce(), what: &str) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        tracing::error!("{what} panicked; the core keeps running");
    }
}

impl Core {
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown_deadline.get().is_some()
    }

    fn run(&self) -> io::Result<()> {
        loop {
            Stats::add(&self.stats.loop_turns, 1);
            self.exec.run_ready();
            self.bury();
            self.rearm_starved();
            if self.shared.notified.load(Ordering::Acquire) {
                self.drain_remote();
            }
            let received = self.mesh.drain();
            if received > 0 {
                Stats::add(&self.stats.mailbox_received, received as u64);
            }
            if self.mesh.me().mailbox_pending.load(Ordering::Acquire) {
                self.mesh
                    .me()
                    .mailbox_pending
                    .store(false, Ordering::Release);
                self.mesh.wake_all_waiters();
            }
            if let Some(deadline) = self.shutdown_deadline.get() {
                if self.exec.task_count() == 0 || Instant::now() >= deadline {
                    return Ok(());
                }
            }
            let busy = self.exec.has_ready();
            if busy {
                self.driver.borrow_mut().enter(false, &self.stats)?;
            } else {
                self.idle_wait()?;
            }
            self.dispatch();
        }
    }

    /// Waits for completions as the idle strategy says. Before blocking, the
    /// park handshake runs on every inbound mesh ring, so that senders know
    /// to ring the doorbell; a ring that turns out non-empty cancels the park.
    fn idle_wait(&self) -> io::Result<()> {
        if self.idle == IdleStrategy::Poll && self.shutdown_deadline.get().is_none() {
            return self.driver.borrow_mut().enter(false, &self.stats);
        }
        if !self.mesh.prepare_park() {
            return self.driver.borrow_mut().enter(false, &self.stats);
        }
        let r = self.idle_block();
        self.mesh.cancel_park();
        r
    }

    fn idle_block(&self) -> io::Result<()> {
        let mut driver = self.driver.borrow_mut();
        if self.shutdown_deadline.get().is_some() {
            // Wake at least every few milliseconds to check the deadline.
            Stats::add(&self.stats.parks, 1);
            return driver.enter_timeout(Duration::from_millis(5), &self.stats);
        }
        match self.idle {
            IdleStrategy::Park => {
                Stats::add(&self.stats.parks, 1);
                match self.batch_target() {
                    Some((want, max_wait)) => driver.enter_batch(want, max_wait, &self.stats),
                    None => driver.enter(true, &self.stats),
                }
            }
            IdleStrategy::Poll => driver.enter(false, &self.stats),
            IdleStrategy::Spin(budget) => {
                let start = Instant::now();
                loop {
                    driver.enter(false, &self.stats)?;
                    if driver.has_completions() || self.shared.notified.load(Ordering::Acquire) {
                        return Ok(());
                    }
                    if start.elapsed() >= budget {
                        Stats::add(&self.stats.parks, 1);
                        return driver.enter(true, &self.stats);
                    }
                    std::hint::spin_loop();
                }
            }
        }
    }

    /// With many streams receiving, wait for several completions (bounded in
    /// time) rather than the first one: each wake-up then carries more data
    /// per connection, and fewer, larger sends follow. A lone connection
    /// (ping-pong) still wakes on its first completion.
    fn batch_target(&self) -> Option<(u32, Duration)> {
        let (max, max_wait) = self.wait_batch?;
        let want = (self.receiving_streams.get() / 4).min(max as usize) as u32;
        (want > 1).then_some((want, max_wait))
    }

    fn dispatch(&self) {
        let (doorbells, failed) = {
            let mut bufs = self.bufs.borrow_mut();
            let mut driver = self.driver.borrow_mut();
            driver.dispatch(&mut bufs, &self.stats);
            if driver.doorbells.is_empty() && driver.failed_doorbells.is_empty() {
                return;
            }
            (
                std::mem::take(&mut driver.doorbells),
                std::mem::take(&mut driver.failed_doorbells),
            )
        };
        Stats::add(&self.stats.doorbells_received, doorbells.len() as u64);
        for token in doorbells {
            self.mesh.wake_waiter(token);
        }
        for target in failed {
            if let Some(peer) = self.mesh.peers.get(target) {
                peer.ring_eventfd();
            }
        }
    }

    /// Drops resources of finished abandoned operations, outside any borrow.
    fn bury(&self) {
        let grave = {
            let mut d = self.driver.borrow_mut();
            if d.graveyard.is_empty() {
                return;
            }
            std::mem::take(&mut d.graveyard)
        };
        run_guarded(
            move || drop(grave),
            "dropping a finished operation's buffer",
        );
    }

    /// Re-arms multishot receives that stopped for lack of buffers, once
    /// buffers are back.
    fn rearm_starved(&self) {
        let bufs = self.bufs.borrow();
        if bufs.available() == 0 {
            return;
        }
        let mut driver = self.driver.borrow_mut();
        if driver.starved.is_empty() {
            return;
        }
        let starved = std::mem::take(&mut driver.starved);
        for (key, fd) in starved {
            crate::net::stream::rearm_recv(self, &mut driver, key, fd);
        }
    }

    fn drain_remote(&self) {
        self.shared.notified.store(false, Ordering::SeqCst);
        let (closures, wakes, shutdown) = {
            let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            (
                std::mem::take(&mut q.closures),
                std::mem::take(&mut q.wakes),
                q.shutdown,
            )
        };
        Stats::add(&self.stats.remote_wakeups, wakes.len() as u64);
        for key in wakes {
            self.exec.schedule(key);
        }
        for f in closures {
            run_guarded(f, "a closure sent to this core");
        }
        if let Some(deadline) = shutdown {
            if self.shutdown_deadline.get().is_none() {
                tracing::debug!(core = self.index, "shutdown started");
                self.shutdown_deadline.set(Some(deadline));
                self.exec.schedule_all();
            }
        }
    }

    /// Drops remaining tasks and waits (bounded) for the kernel to finish
    /// every operation, so that no buffer is freed while still in use.
    fn finish(&self) -> CoreExit {
        self.mesh.me().ring_fd.store(-1, Ordering::Release);
        self.shared.stopped.store(true, Ordering::Release);
        let tasks_aborted = self.exec.drop_all();
        if tasks_aborted > 0 {
            tracing::warn!(
                core = self.index,
                tasks_aborted,
                "shutdown deadline passed; dropped unfinished tasks"
            );
        }
        self.bury();
        self.driver.borrow_mut().cancel_all();
        // Always enter once: dropping tasks may have queued SQEs (doorbells
        // telling other cores a channel closed) even with no op in the table.
        let _ = self.driver.borrow_mut().enter(false, &self.stats);
        self.dispatch();
        let start = Instant::now();
        while self.driver.borrow().ops_in_kernel() > 0 && start.elapsed() < Duration::from_secs(2) {
            if self
                .driver
                .borrow_mut()
                .enter_timeout(Duration::from_millis(10), &self.stats)
                .is_err()
            {
                break;
            }
            self.dispatch();
            self.bury();
        }
        // Closures that arrived too late are dropped here, which reports
        // their remote handles as cancelled.
        drop(std::mem::take(
            &mut self
                .shared
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .closures,
        ));
        CoreExit {
            tasks_aborted,
            ops_leaked: self.driver.borrow().ops_in_kernel(),
        }
    }

    pub(crate) fn snapshot(&self) -> CoreStats {
        let s = &self.stats;
        let mut driver = self.driver.borrow_mut();
        let bufs = self.bufs.borrow();
        let pool = self.send_pool.borrow();
        CoreStats {
            core: self.index,
            cpu: self.cpu,
            ops_submitted: s.ops_submitted.get(),
            ops_completed: s.ops_completed.get(),
            bytes_received: s.bytes_received.get(),
            bytes_sent: s.bytes_sent.get(),
            accepts: s.accepts.get(),
            errors: s.errors.get(),
            loop_turns: s.loop_turns.get(),
            parks: s.parks.get(),
            bufring_starvation: s.bufring_starvation.get(),
            recv_copies_avoided: s.recv_copies_avoided.get(),
            recv_copies_made: s.recv_copies_made.get(),
            remote_wakeups: s.remote_wakeups.get(),
            tasks: self.exec.task_count() as u64,
            ops_in_flight: driver.ops_in_table() as u64,
            cq_overflow: u64::from(driver.cq_overflow()),
            recv_buffers_free: u64::from(bufs.available()),
            recv_buffers_total: u64::from(bufs.count()),
            send_buffers_free: pool.free_count() as u64,
            send_buffers_total: u64::from(pool.count()),
            zc_sends: s.zc_sends.get(),
            zc_notifications: s.zc_notifications.get(),
            zc_copied: s.zc_copied.get(),
            fixed_sends: s.fixed_sends.get(),
            batch_sends: s.batch_sends.get(),
            batched_messages: s.batched_messages.get(),
            doorbells_sent: s.doorbells_sent.get(),
            doorbells_received: s.doorbells_received.get(),
            mailbox_received: s.mailbox_received.get(),
            mailbox_depth: self.mesh.depth() as u64,
        }
    }
}
