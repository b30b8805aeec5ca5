//! Handles to a running runtime: [`RemoteHandle`] (the result of work sent
//! to a core), [`ShutdownHandle`] (starts shutdown from any thread) and
//! [`RuntimeHandle`] (sends work to any core from any thread).

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::executor::{spawn_reporting, JoinError};
use crate::mailbox::doorbell::Peer;
use crate::mailbox::MailboxError;
use crate::remote::{RemoteFn, Shared};

pub(super) struct HandleSlot<T> {
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

/// The closure that runs `f` on a core as one task reporting to the
/// returned handle (which reports `Cancelled` if the closure is dropped).
pub(super) fn remote_task<F, Fut>(f: F) -> (RemoteFn, RemoteHandle<Fut::Output>)
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
    let run: RemoteFn = Box::new(move || {
        spawn_reporting(f(), move |result| reporter.report(result));
    });
    (run, RemoteHandle { slot })
}

/// The result of work started with [`Runtime::spawn_on`](crate::Runtime::spawn_on),
/// awaited from any thread by blocking.
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

/// Starts a runtime's shutdown from any thread (e.g. a signal handler
/// thread). Cloneable.
#[derive(Clone)]
pub struct ShutdownHandle {
    pub(super) cores: Vec<Arc<Shared>>,
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

/// Sends work to the cores of a runtime from any thread.
///
/// Get one from [`Runtime::handle`](crate::Runtime::handle) or, on a core,
/// from [`current_runtime`]. It is `Send + Sync + Clone` and does not keep
/// the runtime running: once a core has stopped, work sent to it fails with
/// [`MailboxError::Closed`]. Work travels through each core's control queue
/// (a lock and an eventfd write), so it suits control traffic; use the core
/// mesh ([`crate::mailbox`]) for the data path between cores. While a handle
/// lives it keeps each core's control eventfd and a duplicate of its ring
/// descriptor open (a few kernel pages per core, no buffers).
#[derive(Clone)]
pub struct RuntimeHandle {
    pub(super) peers: Arc<Vec<Arc<Peer>>>,
}

impl RuntimeHandle {
    /// Number of cores.
    pub fn core_count(&self) -> usize {
        self.peers.len()
    }

    fn shared(&self, core: usize) -> Result<&Shared, MailboxError> {
        let peer = self.peers.get(core).ok_or(MailboxError::NoSuchCore(core))?;
        if peer.shared.is_stopped() {
            return Err(MailboxError::Closed(core));
        }
        Ok(&peer.shared)
    }

    /// Runs `f` on core `core` (like [`Runtime::spawn_on`](crate::Runtime::spawn_on)):
    /// the future it returns becomes a task there, whose result the returned
    /// handle delivers. Fails with [`MailboxError::NoSuchCore`] for a bad
    /// index and [`MailboxError::Closed`] once the core has stopped (work
    /// that reaches a core as it stops is reported as
    /// [`JoinError::Cancelled`] by the handle).
    pub fn spawn_on<F, Fut>(
        &self,
        core: usize,
        f: F,
    ) -> Result<RemoteHandle<Fut::Output>, MailboxError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        let shared = self.shared(core)?;
        let (run, handle) = remote_task(f);
        shared
            .try_run(run)
            .map_err(|_| MailboxError::Closed(core))?;
        Ok(handle)
    }

    /// Runs `f` on core `core`, fire and forget. Fails with
    /// [`MailboxError::NoSuchCore`] for a bad index and
    /// [`MailboxError::Closed`] once the core has stopped (then `f` is
    /// dropped on the calling thread).
    pub fn post<F>(&self, core: usize, f: F) -> Result<(), MailboxError>
    where
        F: FnOnce() + Send + 'static,
    {
        let shared = self.shared(core)?;
        // The core runs it under its panic guard, like every closure sent
        // to it.
        shared
            .try_run(Box::new(f))
            .map_err(|_| MailboxError::Closed(core))
    }

    /// Fault injection, for tests only: makes the event loop of core `core`
    /// panic, outside the guards that catch panics of tasks and posted
    /// closures, as a bug in the runtime itself would. The request travels
    /// through the core's control queue (nothing on the data path checks
    /// for it); the loop panics the next time it drains that queue.
    ///
    /// What follows is what any core-thread panic leads to: the panic is
    /// logged (`tracing::error!` with the core index and the message), the
    /// core drops its tasks and winds down, work sent to it fails (see
    /// [`Runtime::block_on`](crate::Runtime::block_on) and
    /// [`submit_to`](crate::mailbox::submit_to)), the other cores keep
    /// running, and [`Runtime::shutdown`](crate::Runtime::shutdown) counts
    /// it in [`ShutdownReport::cores_panicked`](crate::ShutdownReport).
    ///
    /// Fails with [`MailboxError::NoSuchCore`] for a bad index and
    /// [`MailboxError::Closed`] once the core has stopped.
    #[doc(hidden)]
    pub fn inject_core_panic(&self, core: usize) -> Result<(), MailboxError> {
        let shared = self.shared(core)?;
        let message = format!("injected fault: core {core}'s event loop panics");
        if shared.inject_panic(message) {
            Ok(())
        } else {
            Err(MailboxError::Closed(core))
        }
    }
}

impl std::fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHandle")
            .field("cores", &self.peers.len())
            .finish()
    }
}

/// A handle to the runtime whose core runs the caller.
///
/// # Panics
///
/// Off a ringwire core thread.
pub fn current_runtime() -> RuntimeHandle {
    crate::mailbox::mesh::with(|m| RuntimeHandle {
        peers: m.peers.clone(),
    })
}
