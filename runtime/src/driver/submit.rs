//! Submission: pushing SQEs (with a backlog for a full queue), taking slots,
//! and the one `io_uring_enter` per loop turn that submits and reaps.

use std::any::Any;
use std::io;
use std::task::{Poll, Waker};
use std::time::Duration;

use io_uring::{opcode, squeue, types};

use super::lifecycle::{Actions, Cqe, Multishot, Released, Single};
use super::{tags, Driver, MultiSlot, Slot};
use crate::stats::{self, Stats};

/// `IORING_ENTER_GETEVENTS`: run deferred task work and reap completions.
const IORING_ENTER_GETEVENTS: u32 = 1;

impl Driver {
    /// Pushes an SQE, submitting first when the submission queue is full.
    ///
    /// # Safety
    ///
    /// Every buffer, address and descriptor the entry names must stay valid
    /// until its completion arrives (for a descriptor: until the kernel has
    /// consumed the SQE).
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

    /// Takes a slot for a single-shot operation and pushes its entry.
    ///
    /// # Safety
    ///
    /// As for [`push_raw`](Self::push_raw); [`super::op::Op`] upholds it
    /// through the [`Operation`](super::op::Operation) contract.
    pub(crate) unsafe fn submit_single(&mut self, entry: squeue::Entry) -> usize {
        let key = self.slots.insert(Slot::Single(Single::new()));
        let entry = entry.user_data(tags::slot(key));
        // SAFETY: forwarded from this function's contract.
        unsafe { self.push_raw(&entry) };
        key
    }

    /// Takes a slot for a multishot operation and pushes its entry; the
    /// entry is kept for re-arming.
    ///
    /// # Safety
    ///
    /// As for [`push_raw`](Self::push_raw), for as long as the slot is not
    /// abandoned (it may be re-submitted until then);
    /// [`super::op::multishot::Multi`] upholds it.
    pub(crate) unsafe fn submit_multi(
        &mut self,
        entry: squeue::Entry,
        returns_fd: bool,
        limit: usize,
    ) -> usize {
        let key = self.slots.insert(Slot::Multi(Box::new(MultiSlot {
            life: Multishot::new(returns_fd, limit),
            entry: entry.clone(),
        })));
        let entry = entry.user_data(tags::slot(key));
        // SAFETY: forwarded from this function's contract.
        unsafe { self.push_raw(&entry) };
        key
    }

    /// Pushes the arming entry of multishot slot `key` again.
    fn resubmit(&mut self, key: usize) {
        let Some(Slot::Multi(m)) = self.slots.get(key) else {
            return;
        };
        let entry = m.entry.clone().user_data(tags::slot(key));
        // SAFETY: the entry was accepted by `submit_multi`, whose caller keeps
        // what it names alive while the slot is not abandoned; the
        // lifecycle's re-arm transitions refuse to re-arm an abandoned slot.
        unsafe { self.push_raw(&entry) };
    }

    /// The owner of single-shot slot `key` polls it; frees the slot when the
    /// result is handed out.
    pub(crate) fn poll_single(&mut self, key: usize, waker: &Waker) -> Poll<Cqe> {
        let Some(Slot::Single(op)) = self.slots.get_mut(key) else {
            slot_lost(key)
        };
        let r = op.poll(waker);
        if r.is_ready() {
            self.slots.remove(key);
        }
        r
    }

    /// The owner of single-shot slot `key` went away before its result.
    pub(crate) fn abandon_single(&mut self, key: usize, resources: Box<dyn Any>) {
        let Some(Slot::Single(op)) = self.slots.get_mut(key) else {
            slot_lost(key)
        };
        let act = op.abandon(resources);
        self.apply(key, act, None);
    }

    /// The multishot slot `key`, for its owner's transitions.
    pub(crate) fn multi(&mut self, key: usize) -> &mut Multishot {
        match self.slots.get_mut(key) {
            Some(Slot::Multi(m)) => &mut m.life,
            _ => slot_lost(key),
        }
    }

    /// The owner of multishot slot `key` waits: keeps its waker and re-arms
    /// the operation if it ended by itself.
    pub(crate) fn wait_multi(&mut self, key: usize, waker: &Waker) {
        if self.multi(key).wait(waker) {
            self.resubmit(key);
        }
    }

    /// Pauses multishot slot `key` (cancels it if it is in the kernel).
    pub(crate) fn pause_multi(&mut self, key: usize) {
        if self.multi(key).pause() {
            self.cancel(key);
        }
    }

    /// The owner of multishot slot `key` went away; `buffers` receives the
    /// provided buffers of completions it never took.
    pub(crate) fn abandon_multi(
        &mut self,
        key: usize,
        resources: Box<dyn Any>,
        buffers: &mut super::bufring::BufRing,
    ) {
        let life = self.multi(key);
        let returns_fd = life.returns_fd();
        let (act, untaken) = life.abandon(resources);
        for cqe in untaken {
            let rel = Released::of(cqe, returns_fd);
            if let Some(bid) = rel.recycle {
                buffers.recycle(bid);
            }
            drop(rel.close);
        }
        self.apply(key, act, Some(buffers));
    }

    /// Re-arms the starved multishot slots (buffers are back).
    pub(super) fn rearm_starved(&mut self) {
        for key in std::mem::take(&mut self.starved) {
            if let Some(Slot::Multi(m)) = self.slots.get_mut(key) {
                if m.life.rearm_starved() {
                    self.resubmit(key);
                }
            }
        }
    }

    /// Carries out what a transition of slot `key` asked for. `buffers` is
    /// where provided buffers go back (`None` only when the transition
    /// cannot release any).
    #[inline]
    pub(super) fn apply(
        &mut self,
        key: usize,
        act: Actions,
        buffers: Option<&mut super::bufring::BufRing>,
    ) {
        if act.is_only_wake() {
            if let Some(w) = act.wake {
                w.wake();
            }
            return;
        }
        self.apply_slow(key, act, buffers);
    }

    #[inline(never)]
    fn apply_slow(
        &mut self,
        key: usize,
        mut act: Actions,
        buffers: Option<&mut super::bufring::BufRing>,
    ) {
        if let (Some(bid), Some(b)) = (act.recycle, buffers) {
            b.recycle(bid);
        }
        drop(act.close.take());
        if act.cancel() {
            self.cancel(key);
        }
        if act.throttled() {
            stats::with(|s| Stats::add(&s.recv_throttled, 1));
        }
        if act.starved() {
            self.starved.push(key);
            stats::with(|s| Stats::add(&s.bufring_starvation, 1));
        }
        if act.free() {
            self.slots.remove(key);
            self.starved.retain(|k| *k != key);
        }
        if let Some(r) = act.bury.take() {
            self.graveyard.push(r);
        }
        if let Some(copied) = act.zc_notified() {
            stats::with(|s| {
                Stats::add(&s.zc_notifications, 1);
                Stats::add(&s.zc_copied, u64::from(copied));
            });
        }
        if act.failed() {
            stats::with(|s| Stats::add(&s.errors, 1));
        }
        if let Some(w) = act.wake.take() {
            w.wake();
        }
    }

    /// Asks the kernel to cancel the operation in `key`.
    pub(crate) fn cancel(&mut self, key: usize) {
        let entry = opcode::AsyncCancel::new(tags::slot(key))
            .build()
            .user_data(tags::IGNORE);
        // SAFETY: a cancel request names no memory, only a user_data value.
        unsafe { self.push_raw(&entry) };
    }

    /// Submits queued SQEs and collects completions in one `io_uring_enter`.
    /// `wait` asks to block until at least one completion is there.
    pub(crate) fn enter(&mut self, wait: bool) -> io::Result<()> {
        self.flush_backlog();
        // Backlogged SQEs wait for room, which only reaping makes: do not
        // block with work that cannot be submitted.
        let wait = wait && self.backlog.is_empty();
        let to_submit = self.ring.submission().len() as u32;
        stats::with(|s| {
            if to_submit > 0 {
                Stats::add(&s.ops_submitted, u64::from(to_submit));
            }
            s.sqes_per_enter.record(u64::from(to_submit));
        });
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
    pub(crate) fn enter_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.enter_batch(1, timeout)
    }

    /// Blocks until `want` completions are there or `max_wait` passed,
    /// whichever comes first.
    pub(crate) fn enter_batch(&mut self, want: u32, max_wait: Duration) -> io::Result<()> {
        self.flush_backlog();
        let want = if self.backlog.is_empty() { want } else { 0 };
        let to_submit = self.ring.submission().len() as u64;
        stats::with(|s| {
            if to_submit > 0 {
                Stats::add(&s.ops_submitted, to_submit);
            }
            s.sqes_per_enter.record(to_submit);
        });
        self.ring.submission().sync();
        let ts = types::Timespec::from(max_wait);
        let args = types::SubmitArgs::new().timespec(&ts);
        transient_ok(self.ring.submitter().submit_with_args(want as usize, &args))
    }
}

#[cold]
#[inline(never)]
fn slot_lost(key: usize) -> ! {
    panic!("ringwire operation slot {key} is not in the state its owner expects")
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
