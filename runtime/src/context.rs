//! Which core the calling thread is, and whether it is shutting down.
//!
//! The loop publishes its [`Context`] for the lifetime of the core; the
//! public queries ([`current_core`], [`current_cpu`], [`is_shutting_down`])
//! and the sockets (which stop accepting and receiving at shutdown) read it.

use std::cell::Cell;
use std::time::Instant;

use crate::scoped::scoped_thread_local;

/// Identity and shutdown state of one core.
pub(crate) struct Context {
    index: usize,
    cpu: Option<usize>,
    shutdown: Cell<Option<Instant>>,
}

scoped_thread_local!(static CURRENT: Context);

impl Context {
    /// Core `index`, pinned to `cpu` (`None`: not pinned).
    pub(crate) fn new(index: usize, cpu: Option<usize>) -> Context {
        Context {
            index,
            cpu,
            shutdown: Cell::new(None),
        }
    }

    /// Publishes `self` as the current core's context while `f` runs.
    pub(crate) fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.set(self, f)
    }

    /// Index of the core.
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// CPU the core is pinned to.
    pub(crate) fn cpu(&self) -> Option<usize> {
        self.cpu
    }

    /// The shutdown deadline, once shutdown started.
    pub(crate) fn shutdown_deadline(&self) -> Option<Instant> {
        self.shutdown.get()
    }

    /// Starts shutdown (the first deadline wins); returns whether it was new.
    pub(crate) fn start_shutdown(&self, deadline: Instant) -> bool {
        if self.shutdown.get().is_some() {
            return false;
        }
        self.shutdown.set(Some(deadline));
        true
    }
}

/// Runs `f` with the current core's context.
///
/// # Panics
///
/// Off a ringwire core thread.
pub(crate) fn with<R>(f: impl FnOnce(&Context) -> R) -> R {
    CURRENT.with(f)
}

/// Index (0-based, in placement order) of the core running the caller.
///
/// # Panics
///
/// Off a ringwire core thread.
pub fn current_core() -> usize {
    CURRENT.with(|c| c.index)
}

/// Index of the core running the caller, or `None` off a ringwire core
/// thread (for code, such as a `Drop`, that may run on either).
pub fn try_current_core() -> Option<usize> {
    CURRENT.try_with(|c| c.index)
}

/// CPU the calling core is pinned to; `None` when the runtime's cores are not
/// pinned ([`Placement::Unpinned`](crate::Placement::Unpinned)).
///
/// # Panics
///
/// Off a ringwire core thread.
pub fn current_cpu() -> Option<usize> {
    CURRENT.with(|c| c.cpu)
}

/// Whether the calling core is shutting down: listeners stop accepting and
/// receives end; tasks should finish what they send and return.
///
/// # Panics
///
/// Off a ringwire core thread.
pub fn is_shutting_down() -> bool {
    CURRENT.with(|c| c.shutdown.get().is_some())
}
