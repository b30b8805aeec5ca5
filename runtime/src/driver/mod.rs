//! The per-core io_uring driver.
//!
//! One [`Driver`] per core owns that core's ring and the table of operations
//! in flight. Each submission carries the key of its slot in that table as
//! `user_data`; a completion is dispatched back to the slot, whose
//! [`Lifecycle`] says what to do with it:
//!
//! ```text
//! Submitted --poll--> Waiting(waker) --CQE--> Completed(cqe) --poll--> (slot freed)
//!     \                   |
//!      \--future dropped--+--> Ignored(resources) --final CQE--> (resources dropped, slot freed)
//! ```
//!
//! Operations own their buffers and addresses ([`op::Op`]): when the future
//! that started an operation is dropped before its completion, the resources
//! move into the slot and stay there until the kernel is done with them, and an
//! `ASYNC_CANCEL` is submitted. A descriptor returned by a late completion
//! (accept, connect) is closed. Multishot operations keep a queue of
//! completions in their slot ([`Multi`]).
//!
//! The order of calls per loop turn is: ops push SQEs while tasks run
//! ([`Driver::push`]), then the executor calls [`Driver::enter`] once, which
//! submits and reaps in one `io_uring_enter`, then [`Driver::dispatch`].

pub(crate) mod bufring;
pub(crate) mod op;
pub(crate) mod sendpool;

use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::task::Waker;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;

use crate::mailbox::doorbell::{DOORBELL_LOW_MASK, DOORBELL_SOURCE_BIT, DOORBELL_TARGET_BIT};
use crate::stats::Stats;

/// `user_data` of completions nobody waits for (cancel requests).
pub(crate) const TAG_IGNORE: u64 = u64::MAX;
/// `user_data` of the eventfd read that wakes a parked core from other threads.
pub(crate) const TAG_WAKE: u64 = u64::MAX - 1;
/// `IORING_ENTER_GETEVENTS`: run deferred task work and reap completions.
const IORING_ENTER_GETEVENTS: u32 = 1;
/// Set in a zero-copy notification's result when the kernel copied anyway.
const IORING_NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;

/// One completion, copied out of the completion queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cqe {
    pub(crate) result: i32,
    pub(crate) flags: u32,
}

impl Cqe {
    /// The result as an `io::Result`: negative values are `-errno`.
    pub(crate) fn io_result(&self) -> io::Result<u32> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as u32)
        }
    }
}

/// State of a multishot operation's slot.
#[derive(Default)]
pub(crate) struct Multi {
    /// Completions not yet taken by the owner.
    pub(crate) queue: VecDeque<Cqe>,
    /// Task to wake when a completion arrives.
    pub(crate) waker: Option<Waker>,
    /// Whether an SQE for this slot is in the kernel (no terminal CQE yet).
    pub(crate) armed: bool,
    /// Stopped for lack of buffers; waiting in the driver's starved list.
    pub(crate) starved: bool,
}

/// Where an operation is in its life.
pub(crate) enum Lifecycle {
    /// In the kernel; nobody has polled it yet.
    Submitted,
    /// In the kernel; this task waits for it.
    Waiting(Waker),
    /// Done; the result waits for the owner's next poll.
    Completed(Cqe),
    /// A zero-copy send reported its result; the buffer stays with the
    /// kernel until the notification CQE, which completes the op.
    Notif(Cqe, Option<Waker>),
    /// The owner went away; these resources stay until the final CQE.
    Ignored(Box<dyn Any>),
    /// A multishot operation.
    Multi(Multi),
}

/// One slot of the operation table.
pub(crate) struct Slot {
    pub(crate) state: Lifecycle,
    /// The operation returns a descriptor that must be closed if nobody takes it.
    pub(crate) returns_fd: bool,
}

/// Ring set-up options, derived from the runtime builder.
#[derive(Clone, Debug)]
pub(crate) struct RingConfig {
    pub(crate) entries: u32,
    pub(crate) sqpoll_idle_ms: Option<u32>,
    pub(crate) buf_count: u16,
    pub(crate) buf_size: u32,
    pub(crate) send_count: u16,
    pub(crate) send_size: u32,
}

/// Which optional ring features this core ended up with.
#[derive(Clone, Copy, Debug, Default)]
pub struct RingFeatures {
    /// `IORING_SETUP_SINGLE_ISSUER` is on.
    pub single_issuer: bool,
    /// `IORING_SETUP_COOP_TASKRUN` is on.
    pub coop_taskrun: bool,
    /// `IORING_SETUP_DEFER_TASKRUN` is on.
    pub defer_taskrun: bool,
    /// `IORING_SETUP_SQPOLL` is on.
    pub sqpoll: bool,
    /// `IORING_OP_SEND_ZC` is supported.
    pub send_zc: bool,
}

/// The per-core io_uring driver: ring plus table of operations in flight.
pub(crate) struct Driver {
    ring: IoUring,
    slots: Slab<Slot>,
    /// Multishot receives that ended for lack of buffers, to re-arm once
    /// buffers come back.
    pub(crate) starved: Vec<(usize, RawFd)>,
    /// Resources of finished ignored ops, dropped after the driver borrow ends.
    pub(crate) graveyard: Vec<Box<dyn Any>>,
    /// SQEs that did not fit the submission queue, in order.
    backlog: VecDeque<squeue::Entry>,
    /// Doorbell tokens received through MSG_RING this turn.
    pub(crate) doorbells: Vec<u64>,
    /// Target cores of MSG_RING doorbells that failed (to ring by eventfd).
    pub(crate) failed_doorbells: Vec<usize>,
    /// 8-byte target of the wake eventfd read. Leaked on purpose (8 bytes per
    /// core): the kernel may finish cancelling the read after the ring closes.
    wake_buf: &'static mut u64,
    wake_fd: RawFd,
    pub(crate) features: RingFeatures,
}

impl Driver {
    /// Creates the ring, probing the optional flags from most to least
    /// capable, and checks that every opcode the runtime needs is there.
    pub(crate) fn new(cfg: &RingConfig, wake_fd: RawFd) -> io::Result<Driver> {
        let (ring, mut features) = build_ring(cfg)?;
        features.send_zc = check_opcodes(&ring)?;
        let mut driver = Driver {
            ring,
            slots: Slab::with_capacity(256),
            starved: Vec::new(),
            graveyard: Vec::new(),
            backlog: VecDeque::new(),
            doorbells: Vec::new(),
            failed_doorbells: Vec::new(),
            wake_buf: Box::leak(Box::new(0)),
            wake_fd,
            features,
        };
        driver.arm_wake();
        Ok(driver)
    }

    /// The ring's descriptor (the target of other cores' MSG_RING doorbells).
    pub(crate) fn ring_fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.ring.as_raw_fd()
    }

    /// The ring, for registering buffers.
    pub(crate) fn ring(&self) -> &IoUring {
        &self.ring
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
            .filter(|(_, s)| match &s.state {
                Lifecycle::Completed(_) => false,
                Lifecycle::Multi(m) => m.armed,
                _ => true,
            })
            .count()
    }

    /// Re-arms the read of the wake eventfd.
    fn arm_wake(&mut self) {
        let buf: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(types::Fd(self.wake_fd), buf.cast(), 8)
            .build()
            .user_data(TAG_WAKE);
        // SAFETY: `wake_buf` is leaked, so it outlives any read the kernel may
        // still perform, and the eventfd is kept open by the core's shared
        // state, which outlives the ring.
        unsafe { self.push_raw(&entry) };
    }

    /// Pushes an SQE, submitting first when the submission queue is full.
    ///
    /// # Safety
    ///
    /// Every buffer, address and descriptor the entry names must stay valid
    /// until its completion arrives.
    pub(crate) unsafe fn push_raw(&mut self, entry: &squeue::Entry) {
        if self.backlog.is_empty() {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
            // Queue full: hand what is there to the kernel and retry once.
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    tracing::error!(error = %e, "io_uring submit failed while the SQ was full")
                }
            }
            // SAFETY: as above.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
        }
        // Still full (the kernel refuses more while completions wait to be
        // reaped): keep the entry, in order, for the next `enter`, which
        // pushes the backlog after the loop has reaped completions.
        self.backlog.push_back(entry.clone());
    }

    /// Moves backlogged SQEs into the submission queue while there is room.
    fn flush_backlog(&mut self) {
        while let Some(entry) = self.backlog.front() {
            // SAFETY: backlogged entries were pushed through `push_raw`,
            // whose callers keep what they name alive until completion.
            if unsafe { self.ring.submission().push(entry) }.is_err() {
                return;
            }
            self.backlog.pop_front();
        }
    }

    /// Takes a slot and pushes the entry built for it.
    ///
    /// # Safety
    ///
    /// As for [`push_raw`](Self::push_raw): the caller keeps everything the
    /// entry names alive until completion (the [`op::Op`] machinery does).
    pub(crate) unsafe fn submit(
        &mut self,
        state: Lifecycle,
        returns_fd: bool,
        build: impl FnOnce() -> squeue::Entry,
    ) -> usize {
        let key = self.slots.insert(Slot { state, returns_fd });
        debug_assert!((key as u64) < DOORBELL_SOURCE_BIT);
        let entry = build().user_data(key as u64);
        // SAFETY: forwarded from this function's contract.
        unsafe { self.push_raw(&entry) };
        key
    }

    /// Pushes another SQE for an existing (multishot) slot.
    ///
    /// # Safety
    ///
    /// As for [`push_raw`](Self::push_raw).
    pub(crate) unsafe fn resubmit(&mut self, key: usize, entry: squeue::Entry) {
        let entry = entry.user_data(key as u64);
        // SAFETY: forwarded from this function's contract.
        unsafe { self.push_raw(&entry) };
    }

    /// Access to a slot.
    pub(crate) fn slot_mut(&mut self, key: usize) -> &mut Slot {
        &mut self.slots[key]
    }

    /// Frees a slot whose operation is finished.
    pub(crate) fn remove(&mut self, key: usize) -> Slot {
        self.slots.remove(key)
    }

    /// Asks the kernel to cancel the operation in `key`.
    pub(crate) fn cancel(&mut self, key: usize) {
        let entry = opcode::AsyncCancel::new(key as u64)
            .build()
            .user_data(TAG_IGNORE);
        // SAFETY: a cancel request names no memory, only a user_data value.
        unsafe { self.push_raw(&entry) };
    }

    /// The owner of `key` went away: keep `data` until the kernel is done.
    pub(crate) fn abandon(&mut self, key: usize, data: Box<dyn Any>) {
        let slot = &mut self.slots[key];
        match slot.state {
            Lifecycle::Completed(cqe) => {
                if slot.returns_fd && cqe.result >= 0 {
                    crate::sys::close(cqe.result);
                }
                self.slots.remove(key);
                self.graveyard.push(data);
            }
            _ => {
                slot.state = Lifecycle::Ignored(data);
                self.cancel(key);
            }
        }
    }

    /// Submits queued SQEs and collects completions in one `io_uring_enter`.
    /// `wait` asks to block until at least one completion is there.
    pub(crate) fn enter(&mut self, wait: bool, stats: &Stats) -> io::Result<()> {
        self.flush_backlog();
        // Backlogged SQEs wait for room, which only reaping makes: do not
        // block with work that cannot be submitted.
        let wait = wait && self.backlog.is_empty();
        let to_submit = self.ring.submission().len() as u32;
        stats
            .ops_submitted
            .set(stats.ops_submitted.get() + u64::from(to_submit));
        if self.features.sqpoll {
            // The kernel thread submits; only wake it and wait if asked.
            self.ring.submission().sync();
            let want = usize::from(wait);
            return transient_ok(self.ring.submitter().submit_and_wait(want));
        }
        let min_complete = u32::from(wait);
        // SAFETY: no extra argument is passed; the SQEs in the queue obey the
        // contract of `push_raw`.
        let res = unsafe {
            self.ring.submitter().enter::<libc::sigset_t>(
                to_submit,
                min_complete,
                IORING_ENTER_GETEVENTS,
                None,
            )
        };
        transient_ok(res)
    }

    /// Like [`enter`](Self::enter) with `wait`, but gives up after `timeout`.
    pub(crate) fn enter_timeout(
        &mut self,
        timeout: std::time::Duration,
        stats: &Stats,
    ) -> io::Result<()> {
        self.enter_batch(1, timeout, stats)
    }

    /// Blocks until `want` completions are there or `max_wait` passed,
    /// whichever comes first.
    pub(crate) fn enter_batch(
        &mut self,
        want: u32,
        max_wait: std::time::Duration,
        stats: &Stats,
    ) -> io::Result<()> {
        self.flush_backlog();
        let want = if self.backlog.is_empty() { want } else { 0 };
        let to_submit = self.ring.submission().len() as u64;
        Stats::add(&stats.ops_submitted, to_submit);
        self.ring.submission().sync();
        let ts = types::Timespec::from(max_wait);
        let args = types::SubmitArgs::new().timespec(&ts);
        transient_ok(self.ring.submitter().submit_with_args(want as usize, &args))
    }

    /// Whether completions wait in the completion queue.
    pub(crate) fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Kernel-reported count of completions dropped for a full CQ.
    pub(crate) fn cq_overflow(&mut self) -> u32 {
        self.ring.completion().overflow()
    }

    /// Moves completions out of the completion queue into their slots, waking
    /// the tasks that wait for them. Buffer ids of completions nobody will
    /// read go back to `bufs`. Returns whether the wake eventfd fired.
    pub(crate) fn dispatch(&mut self, bufs: &mut bufring::BufRing, stats: &Stats) -> bool {
        let mut woke = false;
        let mut completed = 0u64;
        // Take completions in batches so that the CQ borrow ends before slots
        // are touched.
        let mut batch: [(u64, Cqe); 64] = [(
            0,
            Cqe {
                result: 0,
                flags: 0,
            },
        ); 64];
        loop {
            let mut n = 0;
            {
                let mut cq = self.ring.completion();
                for cqe in &mut cq {
                    batch[n] = (
                        cqe.user_data(),
                        Cqe {
                            result: cqe.result(),
                            flags: cqe.flags(),
                        },
                    );
                    n += 1;
                    if n == batch.len() {
                        break;
                    }
                }
                cq.sync();
            }
            if n == 0 {
                break;
            }
            completed += n as u64;
            for &(ud, cqe) in &batch[..n] {
                match ud {
                    TAG_IGNORE => {}
                    TAG_WAKE => {
                        woke = true;
                        self.arm_wake();
                    }
                    ud if ud & DOORBELL_TARGET_BIT != 0 => {
                        self.doorbells.push(ud & DOORBELL_LOW_MASK);
                    }
                    ud if ud & DOORBELL_SOURCE_BIT != 0 => {
                        // Only failures post a source CQE (SKIP_SUCCESS).
                        if cqe.result < 0 {
                            self.failed_doorbells
                                .push((ud & DOORBELL_LOW_MASK) as usize);
                        }
                    }
                    key => self.complete(key as usize, cqe, bufs, stats),
                }
            }
        }
        stats
            .ops_completed
            .set(stats.ops_completed.get() + completed);
        woke
    }

    fn complete(&mut self, key: usize, cqe: Cqe, bufs: &mut bufring::BufRing, stats: &Stats) {
        let Some(slot) = self.slots.get_mut(key) else {
            // A multishot's trailing completion after its slot was released
            // (cannot happen while slots are only freed on a final CQE, but a
            // buffer must never be lost if it did).
            if let Some(bid) = cqueue::buffer_select(cqe.flags) {
                bufs.taken();
                bufs.recycle(bid);
            }
            return;
        };
        let more = cqueue::more(cqe.flags);
        if cqueue::buffer_select(cqe.flags).is_some() {
            bufs.taken();
        }
        match &mut slot.state {
            // A single-shot op whose CQE says "more to come" is a zero-copy
            // send: the result is here, the buffer release is not.
            Lifecycle::Submitted if more => slot.state = Lifecycle::Notif(cqe, None),
            Lifecycle::Waiting(_) if more => {
                let prev = std::mem::replace(&mut slot.state, Lifecycle::Notif(cqe, None));
                if let (Lifecycle::Waiting(w), Lifecycle::Notif(_, slot_w)) =
                    (prev, &mut slot.state)
                {
                    *slot_w = Some(w);
                }
            }
            Lifecycle::Notif(result, waker) => {
                Stats::add(&stats.zc_notifications, 1);
                if cqe.result as u32 & IORING_NOTIF_USAGE_ZC_COPIED != 0 {
                    Stats::add(&stats.zc_copied, 1);
                }
                let result = *result;
                let waker = waker.take();
                slot.state = Lifecycle::Completed(result);
                if let Some(w) = waker {
                    w.wake();
                }
            }
            Lifecycle::Submitted => slot.state = Lifecycle::Completed(cqe),
            Lifecycle::Waiting(_) => {
                let prev = std::mem::replace(&mut slot.state, Lifecycle::Completed(cqe));
                if let Lifecycle::Waiting(waker) = prev {
                    waker.wake();
                }
            }
            Lifecycle::Completed(_) => {
                debug_assert!(false, "second completion for a single-shot op");
            }
            Lifecycle::Ignored(_) => {
                if let Some(bid) = cqueue::buffer_select(cqe.flags) {
                    bufs.recycle(bid);
                }
                if slot.returns_fd && cqe.result >= 0 {
                    crate::sys::close(cqe.result);
                }
                if !more {
                    let slot = self.slots.remove(key);
                    if let Lifecycle::Ignored(data) = slot.state {
                        self.graveyard.push(data);
                    }
                }
            }
            Lifecycle::Multi(m) => {
                if !more {
                    m.armed = false;
                }
                if cqe.result < 0 {
                    stats.errors.set(stats.errors.get() + 1);
                }
                m.queue.push_back(cqe);
                if let Some(w) = m.waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// Cancels every operation still in the table (used at shutdown).
    pub(crate) fn cancel_all(&mut self) {
        let keys: Vec<usize> = self.slots.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.cancel(key);
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The core drains every operation before dropping the driver (see
        // `Core::finish`); anything still here is an operation the kernel did
        // not finish cancelling within the shutdown deadline. Closing the ring
        // cancels it asynchronously, so its resources are leaked, never freed
        // while the kernel might still write into them.
        for slot in self.slots.drain() {
            if let Lifecycle::Ignored(data) = slot.state {
                std::mem::forget(data);
            }
        }
    }
}

/// An `io_uring_enter` result with interruptions and time-outs treated as
/// success (the loop just goes round again).
fn transient_ok(res: io::Result<usize>) -> io::Result<()> {
    match res {
        Ok(_) => Ok(()),
        Err(e) if is_transient(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ETIME)
    )
}

/// Builds the ring with the best flag set the kernel accepts.
fn build_ring(cfg: &RingConfig) -> io::Result<(IoUring, RingFeatures)> {
    type Attempt = (RingFeatures, fn(&mut io_uring::Builder));
    let mut attempts: Vec<Attempt> = Vec::new();
    if cfg.sqpoll_idle_ms.is_none() {
        attempts.push((
            RingFeatures {
                single_issuer: true,
                coop_taskrun: true,
                defer_taskrun: true,
                ..Default::default()
            },
            |b| {
                b.setup_single_issuer()
                    .setup_coop_taskrun()
                    .setup_defer_taskrun();
            },
        ));
        attempts.push((
            RingFeatures {
                coop_taskrun: true,
                ..Default::default()
            },
            |b| {
                b.setup_coop_taskrun();
            },
        ));
        attempts.push((RingFeatures::default(), |_| {}));
    } else {
        attempts.push((
            RingFeatures {
                single_issuer: true,
                sqpoll: true,
                ..Default::default()
            },
            |b| {
                b.setup_single_issuer();
            },
        ));
        attempts.push((
            RingFeatures {
                sqpoll: true,
                ..Default::default()
            },
            |_| {},
        ));
    }
    let mut last_err = None;
    for (features, apply) in attempts {
        let mut builder = IoUring::builder();
        apply(&mut builder);
        builder.setup_cqsize(cfg.entries.saturating_mul(4).max(cfg.entries));
        if let Some(idle) = cfg.sqpoll_idle_ms {
            builder.setup_sqpoll(idle);
        }
        match builder.build(cfg.entries) {
            Ok(ring) => return Ok((ring, features)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last_err = Some(e),
            Err(e) => return Err(explain_setup_error(e, cfg)),
        }
    }
    let e = last_err.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL));
    Err(explain_setup_error(e, cfg))
}

/// Turns an `io_uring_setup` failure into an error that says what to do.
fn explain_setup_error(e: io::Error, cfg: &RingConfig) -> io::Error {
    let msg = match e.raw_os_error() {
        Some(libc::ENOSYS) => {
            "io_uring is not available: this kernel was built without it (ENOSYS)".to_string()
        }
        Some(libc::EPERM) | Some(libc::EACCES) => {
            let sysctl = crate::sys::io_uring_disabled_sysctl();
            format!(
                "io_uring is not permitted for this process ({e}); \
                 kernel.io_uring_disabled = {sysctl} (0 allows everyone, 1 only the \
                 io_uring_group, 2 nobody), or a seccomp filter (a container runtime's \
                 default profile) blocks io_uring_setup"
            )
        }
        Some(libc::ENOMEM) => format!(
            "io_uring_setup with {} entries failed for lack of memory ({e}); the locked-memory \
             limit (ulimit -l) is {} — raise it or ask for fewer ring entries",
            cfg.entries,
            describe_memlock()
        ),
        Some(libc::EINVAL) => format!(
            "io_uring_setup refused {} entries{} ({e}); entries must be a power of two \
             between 1 and 32768",
            cfg.entries,
            if cfg.sqpoll_idle_ms.is_some() {
                " with SQPOLL"
            } else {
                ""
            }
        ),
        _ => format!("io_uring_setup failed: {e}"),
    };
    io::Error::new(e.kind(), msg)
}

/// The memlock limit in words.
pub(crate) fn describe_memlock() -> String {
    match crate::sys::memlock_limit() {
        None => "unlimited".to_string(),
        Some(b) => format!("{} KiB", b / 1024),
    }
}

/// Refuses to start on a kernel that lacks an opcode the runtime relies on;
/// returns whether the optional `SEND_ZC` is there.
fn check_opcodes(ring: &IoUring) -> io::Result<bool> {
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("io_uring probe failed ({e}); ringwire needs Linux 6.1 or newer"),
        )
    })?;
    let needed: [(u8, &str); 10] = [
        (opcode::WriteFixed::CODE, "WRITE_FIXED"),
        (opcode::Read::CODE, "READ"),
        (opcode::Send::CODE, "SEND"),
        (opcode::Recv::CODE, "RECV"),
        (opcode::Accept::CODE, "ACCEPT"),
        (opcode::Connect::CODE, "CONNECT"),
        (opcode::Timeout::CODE, "TIMEOUT"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::Shutdown::CODE, "SHUTDOWN"),
        (opcode::Close::CODE, "CLOSE"),
    ];
    for (code, name) in needed {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("this kernel's io_uring lacks IORING_OP_{name}; ringwire needs Linux 6.1 or newer"),
            ));
        }
    }
    Ok(probe.is_supported(opcode::SendZc::CODE))
}
