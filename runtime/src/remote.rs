//! The part of a core that other threads may touch: its control queue.
//!
//! Each core has a [`Shared`]: a mutex-protected queue of closures,
//! cross-thread task wake-ups and a shutdown request ([`RemoteQueue`]), a
//! wake flag ([`WakeFlag`]) and an eventfd that the core's ring keeps a read
//! armed on. It carries control traffic (spawning from other threads, stats,
//! shutdown, wakers used off their core, lent buffers going home), never the
//! data path (that is the mesh of SPSC rings in [`crate::mailbox`]).
//!
//! The protocol that makes a post never go unnoticed, model-checked by loom
//! (`#[cfg(loom)]` tests below):
//!
//! - poster: push under the lock, unlock, then `notify` the wake flag (a swap
//!   to `true`); only the poster that turned it from `false` to `true` writes
//!   the eventfd;
//! - core: if the flag is set, clear it (`take`, a swap to `false`), then
//!   lock and take the queue. A post the core's drain missed went in after
//!   the drain's lock, so its `notify` comes after the `take` and finds the
//!   flag clear: it writes the eventfd, whose read completes in the ring and
//!   wakes the core, which sees the flag again.
//!
//! A process-wide registry maps executor ids to `Shared`s, so that a waker
//! (a plain integer) used off its core can find the core's queue.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool as StdAtomicBool, AtomicU32, Ordering as StdOrdering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use crate::loom::sync::atomic::{AtomicBool, Ordering};
use crate::loom::sync::Mutex as LoomMutex;

/// A closure sent to a core from another thread.
pub(crate) type RemoteFn = Box<dyn FnOnce() + Send>;

/// Work waiting in a core's control queue.
#[derive(Default)]
pub(crate) struct Pending {
    pub(crate) closures: Vec<RemoteFn>,
    pub(crate) wakes: Vec<u32>,
    pub(crate) shutdown: Option<Instant>,
    /// An injected fault: the loop panics with this message, outside every
    /// panic guard (see `RuntimeHandle::inject_core_panic`).
    pub(crate) fault: Option<String>,
    /// The core's loop has ended: closures are refused from now on.
    closed: bool,
}

/// A flag saying "the core has something to look at", set by other threads
/// and cleared by the core. It makes concurrent posters write the eventfd
/// once between two looks of the core.
pub(crate) struct WakeFlag {
    set: AtomicBool,
}

impl WakeFlag {
    pub(crate) fn new() -> WakeFlag {
        WakeFlag {
            set: AtomicBool::new(false),
        }
    }

    /// Raises the flag after publishing work; returns whether the caller must
    /// signal the core (the flag was down, so the core may be asleep).
    pub(crate) fn notify(&self) -> bool {
        !self.set.swap(true, Ordering::AcqRel)
    }

    /// Lowers the flag before the core looks at the work; returns whether it
    /// was up.
    pub(crate) fn take(&self) -> bool {
        self.set.swap(false, Ordering::AcqRel)
    }

    /// Whether the flag is up (a cheap check before `take`).
    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }
}

/// A core's control queue and its wake flag.
pub(crate) struct RemoteQueue {
    queue: LoomMutex<Pending>,
    flag: WakeFlag,
}

impl RemoteQueue {
    pub(crate) fn new() -> RemoteQueue {
        RemoteQueue {
            queue: LoomMutex::new(Pending::default()),
            flag: WakeFlag::new(),
        }
    }

    /// Adds work; returns whether the caller must signal the core.
    fn post(&self, f: impl FnOnce(&mut Pending)) -> bool {
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut q);
        }
        self.flag.notify()
    }

    /// Queues a closure; returns whether the caller must signal the core, or
    /// the closure when the core's loop has ended.
    pub(crate) fn post_closure(&self, f: RemoteFn) -> Result<bool, RemoteFn> {
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.closed {
                return Err(f);
            }
            q.closures.push(f);
        }
        Ok(self.flag.notify())
    }

    /// Queues a wake-up of task `key`; returns whether to signal the core.
    pub(crate) fn post_wake(&self, key: u32) -> bool {
        self.post(|q| q.wakes.push(key))
    }

    /// Asks for shutdown by `deadline` (the first request wins); returns
    /// whether to signal the core.
    pub(crate) fn post_shutdown(&self, deadline: Instant) -> bool {
        self.post(|q| {
            if q.shutdown.is_none() {
                q.shutdown = Some(deadline);
            }
        })
    }

    /// Asks the core's loop to panic with `message` (fault injection);
    /// returns whether to signal the core, or `None` once its loop has ended.
    pub(crate) fn post_fault(&self, message: String) -> Option<bool> {
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.closed {
                return None;
            }
            q.fault.get_or_insert(message);
        }
        Some(self.flag.notify())
    }

    /// Whether work may be waiting.
    pub(crate) fn is_notified(&self) -> bool {
        self.flag.is_set()
    }

    /// Takes all waiting work if the flag was up.
    pub(crate) fn take(&self) -> Option<Pending> {
        if !self.flag.take() {
            return None;
        }
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        Some(Pending {
            closures: std::mem::take(&mut q.closures),
            wakes: std::mem::take(&mut q.wakes),
            shutdown: q.shutdown,
            fault: q.fault.take(),
            closed: q.closed,
        })
    }

    /// Closes the queue when the core's loop has ended: later closures are
    /// refused; those that arrived too late are dropped here, outside the
    /// lock (their remote handles then report cancellation).
    pub(crate) fn close(&self) {
        let closures = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.closed = true;
            std::mem::take(&mut q.closures)
        };
        drop(closures);
    }
}

/// The part of a core that other threads may touch.
pub(crate) struct Shared {
    /// Id of the core's executor (the upper half of its wakers).
    pub(crate) exec_id: u32,
    /// Written to wake the core; the core's ring keeps a read armed on it.
    eventfd: OwnedFd,
    queue: RemoteQueue,
    /// The core's loop has ended.
    stopped: StdAtomicBool,
}

impl Shared {
    /// A new core's shared part, registered for cross-thread wakers.
    pub(crate) fn new() -> io::Result<Arc<Shared>> {
        static NEXT_EXEC_ID: AtomicU32 = AtomicU32::new(1);
        let shared = Arc::new(Shared {
            exec_id: NEXT_EXEC_ID.fetch_add(1, StdOrdering::Relaxed),
            eventfd: crate::sys::eventfd()?,
            queue: RemoteQueue::new(),
            stopped: StdAtomicBool::new(false),
        });
        registry().push((shared.exec_id, Arc::downgrade(&shared)));
        Ok(shared)
    }

    /// The eventfd the core's ring reads.
    pub(crate) fn eventfd(&self) -> &OwnedFd {
        &self.eventfd
    }

    /// Whether the core's loop has ended (work sent now will not run).
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(StdOrdering::Acquire)
    }

    /// Marks the core's loop as ended.
    pub(crate) fn mark_stopped(&self) {
        self.stopped.store(true, StdOrdering::Release);
    }

    /// Runs `f` on the core (it typically spawns a task there); once the
    /// core's loop has ended, hands `f` back instead.
    pub(crate) fn try_run(&self, f: RemoteFn) -> Result<(), RemoteFn> {
        if self.queue.post_closure(f)? {
            self.signal();
        }
        Ok(())
    }

    /// Runs `f` on the core; drops it (on the calling thread) once the
    /// core's loop has ended.
    pub(crate) fn run(&self, f: RemoteFn) {
        if let Err(f) = self.try_run(f) {
            drop(f);
        }
    }

    /// Wakes task `key` of the core's executor.
    fn wake(&self, key: u32) {
        if self.queue.post_wake(key) {
            self.signal();
        }
    }

    /// Asks the core to shut down by `deadline`.
    pub(crate) fn shutdown(&self, deadline: Instant) {
        if self.queue.post_shutdown(deadline) {
            self.signal();
        }
    }

    /// Makes the core's loop panic with `message`, outside every panic guard
    /// (fault injection); `false` once the core's loop has ended.
    pub(crate) fn inject_panic(&self, message: String) -> bool {
        match self.queue.post_fault(message) {
            Some(signal) => {
                if signal {
                    self.signal();
                }
                true
            }
            None => false,
        }
    }

    /// Signals the core's eventfd without posting (a doorbell's fallback).
    pub(crate) fn signal(&self) {
        crate::sys::eventfd_signal(self.eventfd.as_raw_fd());
    }

    /// The control queue.
    pub(crate) fn queue(&self) -> &RemoteQueue {
        &self.queue
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let id = self.exec_id;
        registry().retain(|(i, _)| *i != id);
    }
}

type Registry = Vec<(u32, Weak<Shared>)>;

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    static REGISTRY: Mutex<Registry> = Mutex::new(Vec::new());
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
        shared.wake(key);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::loom::sync::atomic::AtomicU64;
    use crate::loom::sync::Arc;

    /// The eventfd, modelled as a counter: posters add, the core's armed read
    /// takes everything and completes only when the counter is non-zero.
    struct EventFd(AtomicU64);

    impl EventFd {
        fn signal(&self) {
            self.0.fetch_add(1, Ordering::AcqRel);
        }

        /// Blocks (spins with loom's yield) until the counter is non-zero,
        /// then reads it to zero, as the ring's read of the eventfd does.
        fn wait(&self) {
            loop {
                if self.0.swap(0, Ordering::AcqRel) != 0 {
                    return;
                }
                crate::loom::spin_loop();
            }
        }
    }

    /// One turn of the core's loop as far as the control queue goes: drain
    /// what is flagged; returns how many closures ran.
    fn drain(q: &RemoteQueue) -> usize {
        q.take().map_or(0, |p| p.closures.len())
    }

    #[test]
    fn two_posters_never_leave_work_unnoticed() {
        loom::model(|| {
            let q = Arc::new(RemoteQueue::new());
            let efd = Arc::new(EventFd(AtomicU64::new(0)));
            let posters: Vec<_> = (0..2)
                .map(|_| {
                    let (q, efd) = (q.clone(), efd.clone());
                    loom::thread::spawn(move || {
                        if q.post_closure(Box::new(|| {})).ok() == Some(true) {
                            efd.signal();
                        }
                    })
                })
                .collect();
            // The core: drain, and while work is missing, park on the eventfd
            // (which must have been signalled for every post it missed).
            let mut got = drain(&q);
            while got < 2 {
                efd.wait();
                got += drain(&q);
            }
            for p in posters {
                p.join().unwrap();
            }
            assert_eq!(got, 2);
        });
    }

    #[test]
    fn a_post_during_a_drain_signals_again() {
        loom::model(|| {
            let q = Arc::new(RemoteQueue::new());
            let efd = Arc::new(EventFd(AtomicU64::new(0)));
            // One post before the core starts (its signal is consumed by the
            // first park), one racing with the drain.
            if q.post_wake(1) {
                efd.signal();
            }
            let poster = {
                let (q, efd) = (q.clone(), efd.clone());
                loom::thread::spawn(move || {
                    if q.post_wake(2) {
                        efd.signal();
                    }
                })
            };
            let mut wakes = Vec::new();
            while wakes.len() < 2 {
                efd.wait();
                if let Some(p) = q.take() {
                    wakes.extend(p.wakes);
                }
            }
            poster.join().unwrap();
            wakes.sort_unstable();
            assert_eq!(wakes, vec![1, 2]);
        });
    }
}
