//! The per-core io_uring driver.
//!
//! One [`Context`] per core owns that core's ring and table of operations in
//! flight ([`Driver`]), its provided buffer ring ([`bufring`]) and its pool of
//! registered send buffers ([`sendpool`]). Code on the core reaches it through
//! [`with`] / [`try_with`] while the core's loop runs.
//!
//! Every submission carries a `user_data` from the tag space of [`tags`]:
//! mostly the key of its slot in the operation table. A completion goes back
//! to its slot, whose [`lifecycle`] (a pure state machine) says what to do
//! with it. Operation types ([`op`]) build their own SQEs from data they own,
//! which is where the "everything the SQE names outlives the operation"
//! contract is argued, once per type.
//!
//! Files, by concern: [`setup`] (ring creation, flag and opcode probing),
//! [`submit`] (pushing SQEs, the backlog, `io_uring_enter`), [`complete`]
//! (reaping completions and dispatching them to slots), [`lifecycle`],
//! [`op`] (one file per operation type), [`bufring`], [`sendpool`], [`tags`].
//!
//! The order of calls per loop turn is: operations push SQEs while tasks
//! run, then the loop calls [`Driver::enter`] once (submit and reap in one
//! `io_uring_enter`), then [`Context::dispatch`].

pub(crate) mod bufring;
mod complete;
pub(crate) mod lifecycle;
pub(crate) mod op;
pub(crate) mod sendpool;
mod setup;
mod submit;
pub(crate) mod tags;

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;

use io_uring::{squeue, IoUring};
use slab::Slab;

use self::bufring::BufRing;
use self::lifecycle::{Multishot, Single};
use self::op::eventfd_read::WakeRead;
use self::sendpool::SendPool;
pub(crate) use self::setup::RingConfig;
pub use self::setup::RingFeatures;
use crate::error::StartError;
use crate::scoped::scoped_thread_local;

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

/// One slot of the operation table.
pub(crate) enum Slot {
    /// A single-shot operation.
    Single(Single),
    /// A multishot operation, with the SQE that (re-)arms it.
    Multi(Box<MultiSlot>),
}

/// A multishot operation's slot.
pub(crate) struct MultiSlot {
    pub(crate) life: Multishot,
    /// The SQE that arms it (without `user_data`), re-submitted on re-arm.
    /// It names only what the operation's owner keeps alive while the slot is
    /// not abandoned (see [`op::multishot`]).
    pub(crate) entry: squeue::Entry,
}

/// The ring and the table of operations in flight.
pub(crate) struct Driver {
    ring: IoUring,
    slots: Slab<Slot>,
    /// Multishot slots that stopped for lack of provided buffers.
    starved: Vec<usize>,
    /// Resources of finished abandoned operations, dropped by the loop after
    /// the driver borrow ends.
    graveyard: Vec<Box<dyn Any>>,
    /// SQEs that did not fit the submission queue, in order.
    backlog: VecDeque<squeue::Entry>,
    /// Doorbell tokens received through MSG_RING this turn.
    doorbells: Vec<u64>,
    /// Target cores of MSG_RING doorbells that failed (to ring by eventfd).
    failed_doorbells: Vec<usize>,
    /// The read of the control eventfd that wakes a parked core.
    wake: WakeRead,
    features: RingFeatures,
}

/// Everything the driver owns on one core.
///
/// Field order matters for drop: the driver (and with it the ring) goes
/// before the buffer memory the ring points into; see [`Context::close`] for
/// the orderly end.
pub(crate) struct Context {
    pub(crate) driver: RefCell<Driver>,
    pub(crate) bufs: RefCell<BufRing>,
    pub(crate) pool: RefCell<SendPool>,
    pub(crate) io: IoConfig,
    /// Streams with a receive started (a proxy for how many completions a
    /// busy loop turn can expect).
    receiving: Cell<usize>,
}

scoped_thread_local!(static CURRENT: Context);

/// Runs `f` with the current core's driver.
///
/// # Panics
///
/// Off a ringwire core thread.
#[inline]
pub(crate) fn with<R>(f: impl FnOnce(&Context) -> R) -> R {
    CURRENT.with(f)
}

/// Runs `f` with the current core's driver, if on a core.
#[inline]
pub(crate) fn try_with<R>(f: impl FnOnce(&Context) -> R) -> Option<R> {
    CURRENT.try_with(f)
}

impl Context {
    /// Creates the ring (probing flags and opcodes), registers the provided
    /// buffer ring and the send pool, and arms the read of `wake_fd`, the
    /// core's control eventfd.
    ///
    /// # Safety
    ///
    /// `wake_fd` must stay open for as long as the ring context may consume
    /// the read's SQE: until the last descriptor of the ring (this driver's,
    /// and any duplicate of it) is closed.
    pub(crate) unsafe fn new(
        cfg: &RingConfig,
        io: IoConfig,
        wake_fd: RawFd,
    ) -> Result<Self, StartError> {
        let (ring, features) = setup::build_ring(cfg)?;
        let bufs = BufRing::new(&ring, cfg.buf_count, cfg.buf_size)?;
        let pool = SendPool::new(&ring, cfg.send_count, cfg.send_size)?;
        let mut io = io;
        if !features.send_zc {
            io.zc_threshold = None;
        }
        let mut driver = Driver {
            ring,
            slots: Slab::with_capacity(256),
            starved: Vec::new(),
            graveyard: Vec::new(),
            backlog: VecDeque::new(),
            doorbells: Vec::new(),
            failed_doorbells: Vec::new(),
            // SAFETY: forwarded from this function's contract.
            wake: unsafe { WakeRead::new(wake_fd) },
            features,
        };
        driver.arm_wake();
        Ok(Context {
            driver: RefCell::new(driver),
            bufs: RefCell::new(bufs),
            pool: RefCell::new(pool),
            io,
            receiving: Cell::new(0),
        })
    }

    /// Publishes `self` as the current core's driver while `f` runs.
    pub(crate) fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.set(self, f)
    }

    /// Streams with a receive started.
    pub(crate) fn receiving_streams(&self) -> usize {
        self.receiving.get()
    }

    /// A stream started receiving (`true`) or stopped (`false`).
    pub(crate) fn count_receiving(&self, started: bool) {
        let n = self.receiving.get();
        self.receiving
            .set(if started { n + 1 } else { n.saturating_sub(1) });
    }

    /// Takes the resources of finished abandoned operations, for the loop to
    /// drop outside any borrow.
    pub(crate) fn take_graveyard(&self) -> Vec<Box<dyn Any>> {
        let mut d = self.driver.borrow_mut();
        if d.graveyard.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut d.graveyard)
    }

    /// Re-arms multishot receives that stopped for lack of buffers, once
    /// buffers are back.
    pub(crate) fn rearm_starved(&self) {
        if self.bufs.borrow().available() == 0 {
            return;
        }
        let mut driver = self.driver.borrow_mut();
        if !driver.starved.is_empty() {
            driver.rearm_starved();
        }
    }

    /// Doorbell tokens and failed doorbell targets collected by the last
    /// dispatch.
    pub(crate) fn take_doorbells(&self) -> Option<(Vec<u64>, Vec<usize>)> {
        let mut d = self.driver.borrow_mut();
        if d.doorbells.is_empty() && d.failed_doorbells.is_empty() {
            return None;
        }
        Some((
            std::mem::take(&mut d.doorbells),
            std::mem::take(&mut d.failed_doorbells),
        ))
    }

    /// Ends the driver once the loop is over: with every operation finished
    /// (`ops_leaked == 0`), unregisters the buffer ring and the send buffers
    /// (the ring context may outlive this core: other cores hold a duplicate
    /// of its descriptor for doorbells) and frees their memory; otherwise, or
    /// when send buffers are still lent to other cores, leaks the memory
    /// rather than free it while the kernel or another core may use it.
    pub(crate) fn close(self, ops_leaked: usize) {
        let Context {
            driver, bufs, pool, ..
        } = self;
        let driver = driver.into_inner();
        let mut bufs = bufs.into_inner();
        let mut pool = pool.into_inner();
        if ops_leaked == 0 {
            if let Err(e) = bufs.unregister(&driver.ring) {
                tracing::warn!(error = %e, "unregistering the buffer ring failed; its memory is leaked");
            }
            if let Err(e) = pool.unregister(&driver.ring) {
                tracing::warn!(error = %e, "unregistering the send buffers failed; their memory is leaked");
            }
        }
        // Registered or possibly in use: the buffer ring and pool leak their
        // memory in their `Drop`; unregistered and idle: freed.
        drop(driver);
        drop(bufs);
        drop(pool);
    }
}

impl Driver {
    /// The ring's descriptor (duplicated for other cores' MSG_RING doorbells).
    pub(crate) fn ring_fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.ring.as_raw_fd()
    }

    /// Which optional ring features this core got.
    pub(crate) fn features(&self) -> RingFeatures {
        self.features
    }

    /// Number of operations whose slots are still taken (in flight or unread).
    pub(crate) fn ops_in_table(&self) -> usize {
        self.slots.len()
    }

    /// Number of operations the kernel may still be working on: every slot
    /// except completed single-shot ops and multishot ops whose last
    /// completion arrived (their owners may outlive the core, e.g. a socket
    /// parked in a thread-local, but the kernel is done with them).
    pub(crate) fn ops_in_kernel(&self) -> usize {
        self.slots
            .iter()
            .filter(|(_, s)| match s {
                Slot::Single(s) => s.in_kernel(),
                Slot::Multi(m) => m.life.in_kernel(),
            })
            .count()
    }

    /// Kernel-reported count of completions dropped for a full CQ.
    pub(crate) fn cq_overflow(&mut self) -> u32 {
        self.ring.completion().overflow()
    }

    /// SQEs queued and not yet consumed by the kernel (submission queue
    /// and backlog).
    pub(crate) fn sq_pending(&mut self) -> usize {
        self.backlog.len() + self.ring.submission().len()
    }

    /// CQEs waiting in the completion queue.
    pub(crate) fn cq_pending(&mut self) -> usize {
        self.ring.completion().len()
    }

    /// Whether completions wait in the completion queue.
    pub(crate) fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Whether SQEs wait to be consumed by the kernel (in the submission
    /// queue or the backlog).
    pub(crate) fn has_unsubmitted(&mut self) -> bool {
        !self.backlog.is_empty() || !self.ring.submission().is_empty()
    }

    /// Cancels every operation still in the table (used at shutdown).
    pub(crate) fn cancel_all(&mut self) {
        let keys: Vec<usize> = self.slots.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.cancel(key);
        }
    }

    /// Re-arms the read of the control eventfd.
    fn arm_wake(&mut self) {
        let entry = self.wake.entry().user_data(tags::WAKE);
        // SAFETY: `WakeRead` names its leaked 8-byte buffer (valid forever)
        // and the control eventfd, which the core's shared state keeps open
        // for longer than the ring can submit (see `WakeRead`).
        unsafe { self.push_raw(&entry) };
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The loop drains every operation before dropping the driver; anything
        // still here is an operation the kernel did not finish cancelling in
        // time. The ring cancels it asynchronously, so its resources are
        // leaked, never freed while the kernel might still use them.
        for slot in self.slots.drain() {
            match slot {
                Slot::Single(s) => s.leak(),
                Slot::Multi(m) => m.life.leak(),
            }
        }
    }
}
