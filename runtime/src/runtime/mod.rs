//! Building, using and stopping a runtime.
//!
//! In order: [`Runtime::builder`] -> [`RuntimeBuilder`] knobs ->
//! [`RuntimeBuilder::build`] (starts one pinned thread per core, each with its
//! own ring; returns the first start-up error of any core as a
//! [`BuildError`]) -> [`Runtime::spawn_on`] / [`Runtime::spawn_on_all`] /
//! [`Runtime::block_on`] to run work on cores (or a [`RuntimeHandle`] from
//! [`Runtime::handle`], usable from any thread) -> [`Runtime::stats`] for
//! counters -> [`Runtime::shutdown`] (or drop) to stop.
//!
//! Files: `builder.rs` (knobs and start-up), `placement.rs` (which CPUs),
//! `handle.rs` (handles to a running runtime).

mod builder;
mod handle;
mod placement;

use std::future::Future;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::core::CoreExit;
use crate::driver::RingFeatures;
use crate::executor::JoinError;
use crate::mailbox::doorbell::Peer;
use crate::remote::Shared;
use crate::stats::CoreStats;

pub use self::builder::RuntimeBuilder;
pub use self::handle::{current_runtime, RemoteHandle, RuntimeHandle, ShutdownHandle};
pub use self::placement::Placement;
pub use crate::core::IdleStrategy;
pub use crate::error::{BuildError, StartError};

struct CoreHandle {
    shared: Arc<Shared>,
    cpu: Option<usize>,
    features: RingFeatures,
    thread: Option<thread::JoinHandle<CoreExit>>,
}

/// A set of pinned cores, each running its own executor and io_uring ring.
///
/// Dropping the runtime shuts it down with a 5-second grace period.
pub struct Runtime {
    cores: Vec<CoreHandle>,
    /// What every core needs to reach every other core; held until all core
    /// threads have ended (each peer holds its core's duplicated ring
    /// descriptor, which SQEs on other cores' rings may name).
    peers: Arc<Vec<Arc<Peer>>>,
    /// Where the metrics endpoint listens, if it runs.
    metrics_addr: Option<std::net::SocketAddr>,
    /// The stall detector's thread, stopped once the cores are.
    watchdog: Option<crate::stall::watchdog::Watchdog>,
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

    /// CPU of each core, by core index (`None` for unpinned cores).
    pub fn cpus(&self) -> Vec<Option<usize>> {
        self.cores.iter().map(|c| c.cpu).collect()
    }

    /// The ring features each core ended up with, by core index.
    pub fn ring_features(&self) -> Vec<RingFeatures> {
        self.cores.iter().map(|c| c.features).collect()
    }

    /// The address the metrics endpoint listens on (see
    /// [`RuntimeBuilder::metrics`]); `None` when it does not run.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// A handle that sends work to the cores from any thread.
    pub fn handle(&self) -> RuntimeHandle {
        RuntimeHandle {
            peers: self.peers.clone(),
        }
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
        let (run, handle) = handle::remote_task(f);
        // A core that has stopped drops the work, which the handle reports
        // as cancelled.
        self.cores[core].shared.run(run);
        handle
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
    ///
    /// A core whose loop has ended (at [`shutdown`](Runtime::shutdown), or
    /// because the loop panicked) never runs `f`: the call returns
    /// [`JoinError::Cancelled`] at once, and a call waiting on a core whose
    /// loop panics returns it as that core winds down (its tasks dropped).
    /// The other cores keep running.
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
    ///
    /// A core thread that panicked earlier (its loop, outside the guards that
    /// catch task and closure panics) has already wound down: it is counted
    /// in [`ShutdownReport::cores_panicked`] and does not hold up the others.
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
                        // `usize::MAX`: a core that could not tell.
                        report.ops_leaked = report.ops_leaked.saturating_add(exit.ops_leaked);
                        report.cores_panicked += usize::from(exit.panicked);
                    }
                    Err(_) => report.cores_panicked += 1,
                }
            }
        }
        drop(self.watchdog.take());
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
    /// Tasks still running at the deadline, dropped (and those a core
    /// whose loop panicked dropped as it stopped).
    pub tasks_aborted: usize,
    /// Kernel operations that did not finish cancelling; their buffers were
    /// leaked rather than freed (`usize::MAX` when a core panicked while
    /// winding down and could not count them).
    pub ops_leaked: usize,
    /// Cores whose thread panicked outside the guards that catch task and
    /// closure panics (their loop, or its winding down); each stopped alone
    /// when it happened, logging the panic.
    pub cores_panicked: usize,
}
