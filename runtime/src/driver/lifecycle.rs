//! The life of an operation, as pure state machines.
//!
//! Every operation in the driver's table is either a [`Single`]-shot
//! operation (one SQE, one result) or a [`Multishot`] one (one SQE, a stream
//! of completions). Their states are private; the driver and the operation
//! types move them only through the transitions below, each of which returns
//! the [`Actions`] the driver must carry out (wake a task, free the slot, bury
//! resources, close a descriptor, recycle a receive buffer, submit a cancel,
//! re-arm later). Nothing here touches a ring, so every transition is
//! unit-tested without one (and under miri).
//!
//! Single-shot:
//!
//! ```text
//!             poll               CQE                        poll
//! Submitted ------> Waiting(w) ------> Completed(cqe) -------------> (slot freed)
//!     |  \______________|_____ CQE with F_MORE (zero-copy send) ____
//!     |                 |                                           v
//!     |                 |                          Notified(cqe, w) --notification CQE--> Completed
//!     +-- abandon ------+------------------+
//!                                          v
//!                              Ignored(resources) --final CQE--> resources buried, slot freed
//! ```
//!
//! An abandoned operation keeps its resources (the buffers and addresses its
//! SQE points into) in the slot until the kernel's last completion, then hands
//! them to the driver's graveyard, dropped outside any borrow.
//!
//! Multishot: a queue of completions the owner has not taken, the owner's
//! waker, and flags: `armed` (an SQE is in the kernel), `starved` (stopped for
//! lack of provided buffers, waiting on the driver's starved list), `paused`
//! (the owner cancelled it on purpose and will re-arm it), `throttled` (its
//! untaken completions reached the slot's limit: cancelled by the driver,
//! re-armed when the owner has taken them all), `abandoned` (the owner went
//! away; resources wait for the final completion).
//!
//! The limit exists for operations that take provided buffers: every core's
//! sockets share one buffer ring, and a receive whose owner is not reading
//! (a task blocked on its send to a peer that never reads) would otherwise
//! keep taking buffers until the ring is empty and every other socket of the
//! core is starved. Throttled, its data waits in the socket, where the
//! kernel's flow control pushes back on the peer.

use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::task::{Poll, Waker};

/// `IORING_CQE_F_MORE`: more completions follow for this SQE.
const F_MORE: u32 = 1 << 1;
/// `IORING_CQE_F_BUFFER`: the upper 16 bits of `flags` hold a buffer id.
const F_BUFFER: u32 = 1 << 0;
/// Set in a zero-copy notification's result when the kernel copied anyway.
const NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;

/// One completion, copied out of the completion queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

    /// Whether more completions follow for the same SQE.
    #[inline]
    pub(crate) fn more(&self) -> bool {
        self.flags & F_MORE != 0
    }

    /// The provided buffer this completion filled, if any.
    #[inline]
    pub(crate) fn buffer(&self) -> Option<u16> {
        (self.flags & F_BUFFER != 0).then_some((self.flags >> 16) as u16)
    }
}

/// What the driver must do after a transition. Dropping it does the safe
/// default for what it owns (closes `close`, drops `bury`), but the driver
/// buries resources itself so that user `Drop` code never runs inside a
/// driver borrow.
///
/// Kept small (flags in one byte): the common results, "wake this task" and
/// "nothing", are handled by the driver's fast path.
#[derive(Default)]
#[must_use]
pub(crate) struct Actions {
    /// Wake this task.
    pub(crate) wake: Option<Waker>,
    /// Drop these resources once no borrow is held (the graveyard).
    pub(crate) bury: Option<Box<dyn Any>>,
    /// A descriptor nobody will take: close it.
    pub(crate) close: Option<OwnedFd>,
    /// A provided buffer nobody will read: give it back to the ring.
    pub(crate) recycle: Option<u16>,
    flags: u8,
}

impl Actions {
    /// The operation is over: free its slot.
    const FREE: u8 = 1;
    /// Submit an `ASYNC_CANCEL` for the slot.
    const CANCEL: u8 = 1 << 1;
    /// The multishot stopped for lack of provided buffers: put the slot on
    /// the starved list, to re-arm when buffers come back.
    const STARVED: u8 = 1 << 2;
    /// The completion carried an error (counted).
    const FAILED: u8 = 1 << 3;
    /// A zero-copy notification arrived.
    const ZC_NOTIFIED: u8 = 1 << 4;
    /// ... and the kernel copied anyway.
    const ZC_COPIED: u8 = 1 << 5;
    /// A multishot reached its limit of untaken completions (counted; the
    /// cancel that stops it is `CANCEL`).
    const THROTTLED: u8 = 1 << 6;

    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        }
    }

    /// Whether this is at most a wake-up (the common case).
    #[inline]
    pub(crate) fn is_only_wake(&self) -> bool {
        self.flags == 0 && self.bury.is_none() && self.close.is_none() && self.recycle.is_none()
    }

    /// Free the slot.
    pub(crate) fn free(&self) -> bool {
        self.flags & Self::FREE != 0
    }

    /// Submit a cancel for the slot.
    pub(crate) fn cancel(&self) -> bool {
        self.flags & Self::CANCEL != 0
    }

    /// Put the slot on the starved list.
    pub(crate) fn starved(&self) -> bool {
        self.flags & Self::STARVED != 0
    }

    /// Count an error.
    pub(crate) fn failed(&self) -> bool {
        self.flags & Self::FAILED != 0
    }

    /// A multishot was throttled (count it).
    pub(crate) fn throttled(&self) -> bool {
        self.flags & Self::THROTTLED != 0
    }

    /// A zero-copy notification arrived: `Some(copied)`.
    pub(crate) fn zc_notified(&self) -> Option<bool> {
        (self.flags & Self::ZC_NOTIFIED != 0).then_some(self.flags & Self::ZC_COPIED != 0)
    }
}

/// What a completion nobody reads carries: a provided buffer to recycle, a
/// descriptor to close.
pub(crate) struct Released {
    pub(crate) recycle: Option<u16>,
    pub(crate) close: Option<OwnedFd>,
}

impl Released {
    /// Decodes what `cqe` carries; `returns_fd` says whether a non-negative
    /// result is a descriptor the kernel created (accept).
    pub(crate) fn of(cqe: Cqe, returns_fd: bool) -> Released {
        let close = (returns_fd && cqe.result >= 0).then(|| {
            // SAFETY: the kernel created this descriptor for the completion of
            // an accept that nobody will take; nothing else knows its number,
            // so this is its only owner.
            unsafe { OwnedFd::from_raw_fd(cqe.result) }
        });
        Released {
            recycle: cqe.buffer(),
            close,
        }
    }
}

// ---------------------------------------------------------------------------
// Single-shot

enum SingleState {
    /// In the kernel; nobody has polled it yet.
    Submitted,
    /// In the kernel; this task waits for it.
    Waiting(Waker),
    /// A zero-copy send reported its result; the buffer stays with the
    /// kernel until the notification CQE, which completes the op.
    Notified(Cqe, Option<Waker>),
    /// Done; the result waits for the owner's next poll.
    Completed(Cqe),
    /// The owner went away; these resources stay until the final CQE.
    Ignored(Box<dyn Any>),
}

/// A single-shot operation's lifecycle.
pub(crate) struct Single {
    state: SingleState,
}

impl Single {
    /// A freshly submitted operation.
    pub(crate) fn new() -> Single {
        Single {
            state: SingleState::Submitted,
        }
    }

    /// The owner polls: the result when it is there (the driver then frees
    /// the slot), otherwise the owner's waker is kept for the completion.
    ///
    /// # Panics
    ///
    /// When polled after being abandoned (a bug of the operation type).
    pub(crate) fn poll(&mut self, waker: &Waker) -> Poll<Cqe> {
        match &mut self.state {
            SingleState::Completed(cqe) => Poll::Ready(*cqe),
            SingleState::Waiting(w) => {
                if !w.will_wake(waker) {
                    *w = waker.clone();
                }
                Poll::Pending
            }
            SingleState::Notified(_, w) => {
                match w {
                    Some(w) if w.will_wake(waker) => {}
                    w => *w = Some(waker.clone()),
                }
                Poll::Pending
            }
            SingleState::Submitted => {
                self.state = SingleState::Waiting(waker.clone());
                Poll::Pending
            }
            SingleState::Ignored(_) => polled_after_abandon(),
        }
    }

    /// A completion arrived for this operation.
    pub(crate) fn complete(&mut self, cqe: Cqe) -> Actions {
        let mut act = Actions::default();
        match std::mem::replace(&mut self.state, SingleState::Submitted) {
            // A single-shot op whose CQE says "more to come" is a zero-copy
            // send: the result is here, the buffer release is not.
            SingleState::Submitted if cqe.more() => {
                self.state = SingleState::Notified(cqe, None);
            }
            SingleState::Waiting(w) if cqe.more() => {
                self.state = SingleState::Notified(cqe, Some(w));
            }
            SingleState::Submitted => self.state = SingleState::Completed(cqe),
            SingleState::Waiting(w) => {
                self.state = SingleState::Completed(cqe);
                act.wake = Some(w);
            }
            SingleState::Notified(result, w) => {
                act.set(Actions::ZC_NOTIFIED, true);
                act.set(
                    Actions::ZC_COPIED,
                    cqe.result as u32 & NOTIF_USAGE_ZC_COPIED != 0,
                );
                self.state = SingleState::Completed(result);
                act.wake = w;
            }
            SingleState::Completed(first) => {
                // A single-shot op gets one completion (or result plus
                // notification); keep the first and ignore a stray one.
                debug_assert!(false, "second completion for a single-shot op");
                self.state = SingleState::Completed(first);
            }
            SingleState::Ignored(resources) => {
                let rel = Released::of(cqe, false);
                act.recycle = rel.recycle;
                if cqe.more() {
                    self.state = SingleState::Ignored(resources);
                } else {
                    act.set(Actions::FREE, true);
                    act.bury = Some(resources);
                }
            }
        }
        act
    }

    /// The owner went away before taking the result: keep `resources` (what
    /// the SQE points into) until the kernel is done.
    pub(crate) fn abandon(&mut self, resources: Box<dyn Any>) -> Actions {
        let mut act = Actions::default();
        match &self.state {
            SingleState::Completed(_) => {
                act.set(Actions::FREE, true);
                act.bury = Some(resources);
            }
            SingleState::Ignored(_) => polled_after_abandon(),
            _ => {
                self.state = SingleState::Ignored(resources);
                act.set(Actions::CANCEL, true);
            }
        }
        act
    }

    /// Whether the kernel may still use what the operation names.
    pub(crate) fn in_kernel(&self) -> bool {
        !matches!(self.state, SingleState::Completed(_))
    }

    /// Leaks the resources of an abandoned operation (the ring is closing
    /// while the kernel may still use them).
    pub(crate) fn leak(self) {
        if let SingleState::Ignored(resources) = self.state {
            std::mem::forget(resources);
        }
    }
}

#[cold]
#[inline(never)]
fn polled_after_abandon() -> ! {
    panic!("ringwire operation used after its owner abandoned it")
}

// ---------------------------------------------------------------------------
// Multishot

/// A multishot operation's lifecycle.
pub(crate) struct Multishot {
    /// Completions not yet taken by the owner.
    queue: VecDeque<Cqe>,
    /// Task to wake when a completion arrives.
    waker: Option<Waker>,
    /// An SQE for this slot is in the kernel (no terminal CQE yet).
    armed: bool,
    /// Stopped for lack of provided buffers; on the driver's starved list.
    starved: bool,
    /// Cancelled on purpose by the owner, who re-arms it later.
    paused: bool,
    /// Cancelled by the driver because `limit` completions were untaken;
    /// re-armed when the owner has taken them all and waits.
    throttled: bool,
    /// Untaken completions at which a running operation is throttled.
    limit: usize,
    /// The owner went away (never re-armed again).
    gone: bool,
    /// Resources of an abandoned operation, kept until the final CQE.
    abandoned: Option<Box<dyn Any>>,
    /// A non-negative result is a descriptor the kernel created (accept).
    returns_fd: bool,
}

impl Multishot {
    /// A freshly armed multishot operation, throttled whenever `limit`
    /// completions are waiting for its owner (`usize::MAX`: never).
    pub(crate) fn new(returns_fd: bool, limit: usize) -> Multishot {
        Multishot {
            queue: VecDeque::new(),
            waker: None,
            armed: true,
            starved: false,
            paused: false,
            throttled: false,
            limit: limit.max(1),
            gone: false,
            abandoned: None,
            returns_fd,
        }
    }

    /// A completion arrived.
    pub(crate) fn complete(&mut self, cqe: Cqe) -> Actions {
        let mut act = Actions::default();
        let more = cqe.more();
        if self.gone {
            let rel = Released::of(cqe, self.returns_fd);
            act.recycle = rel.recycle;
            act.close = rel.close;
            if !more {
                self.armed = false;
                act.set(Actions::FREE, true);
                act.bury = self.abandoned.take();
            }
            return act;
        }
        if !more {
            self.armed = false;
            if (self.paused || self.throttled)
                && (cqe.result == -libc::ECANCELED || cqe.result == -libc::ENOBUFS)
            {
                // The end of a pause or a throttle (or of a starved run
                // during one): nothing for the owner but the news that it
                // ended.
                act.wake = self.waker.take();
                return act;
            }
            if cqe.result == -libc::ENOBUFS {
                // Out of provided buffers: the data waits in the socket; the
                // driver re-arms the operation once buffers are back.
                self.starved = true;
                act.set(Actions::STARVED, true);
                return act;
            }
        }
        act.set(Actions::FAILED, cqe.result < 0);
        self.queue.push_back(cqe);
        if more && self.queue.len() >= self.limit && !self.throttled && !self.paused {
            // The owner is not keeping up: stop taking (buffers) for it.
            self.throttled = true;
            act.set(Actions::CANCEL, true);
            act.set(Actions::THROTTLED, true);
        }
        act.wake = self.waker.take();
        act
    }

    /// Takes the oldest completion the owner has not taken.
    pub(crate) fn take(&mut self) -> Option<Cqe> {
        self.queue.pop_front()
    }

    /// Completions waiting for the owner.
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The owner found nothing and waits: keeps its waker. Returns `true` when
    /// the operation must be submitted again now (it ended on its own, e.g.
    /// a single-shot receive, or a multishot the kernel stopped), in which
    /// case it counts as armed from here on.
    pub(crate) fn wait(&mut self, waker: &Waker) -> bool {
        match &mut self.waker {
            Some(w) if w.will_wake(waker) => {}
            w => *w = Some(waker.clone()),
        }
        if self.throttled && !self.armed && self.queue.is_empty() {
            // The owner took everything and the throttle's cancel is over.
            self.throttled = false;
        }
        self.rearm_if_idle()
    }

    /// Re-arms now if nothing is in the kernel and nothing holds it back
    /// (starved, paused or throttled); returns whether to submit.
    pub(crate) fn rearm_if_idle(&mut self) -> bool {
        if self.armed || self.starved || self.paused || self.throttled || self.gone {
            return false;
        }
        self.armed = true;
        true
    }

    /// Buffers are back: re-arm a starved operation; returns whether to submit.
    pub(crate) fn rearm_starved(&mut self) -> bool {
        if !self.starved || self.armed || self.gone {
            return false;
        }
        self.starved = false;
        if self.paused {
            // The owner paused it meanwhile; it re-arms on resume.
            return false;
        }
        self.armed = true;
        true
    }

    /// The owner pauses the operation; returns whether to submit a cancel
    /// (nothing to cancel when it is not in the kernel, or when a pause
    /// already asked for it).
    pub(crate) fn pause(&mut self) -> bool {
        let first = !self.paused;
        self.paused = true;
        self.armed && first
    }

    /// Whether a pause is complete: nothing of this operation is in the
    /// kernel any more (its terminal completion arrived).
    pub(crate) fn is_idle(&self) -> bool {
        !self.armed
    }

    /// The owner ends its pause (it re-arms on its next [`wait`](Self::wait)).
    pub(crate) fn resume(&mut self) {
        self.paused = false;
    }

    /// Whether the kernel may still post completions for it.
    pub(crate) fn in_kernel(&self) -> bool {
        self.armed
    }

    /// The owner went away: completions it never took are returned (for the
    /// driver to release the buffers and descriptors they carry, see
    /// [`Released::of`]), and `resources` stay until the final completion if
    /// the operation is still in the kernel (a cancel goes out).
    pub(crate) fn abandon(&mut self, resources: Box<dyn Any>) -> (Actions, VecDeque<Cqe>) {
        let mut act = Actions::default();
        let untaken = std::mem::take(&mut self.queue);
        self.waker = None;
        self.gone = true;
        if self.armed {
            self.abandoned = Some(resources);
            act.set(Actions::CANCEL, true);
        } else {
            act.set(Actions::FREE, true);
            act.bury = Some(resources);
        }
        (act, untaken)
    }

    /// Whether a non-negative result is a descriptor (for releasing queued
    /// completions).
    pub(crate) fn returns_fd(&self) -> bool {
        self.returns_fd
    }

    /// Leaks the resources of an abandoned operation (the ring is closing
    /// while the kernel may still use them).
    pub(crate) fn leak(self) {
        if let Some(resources) = self.abandoned {
            std::mem::forget(resources);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    /// A waker that counts its wake-ups.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn waker() -> (Waker, Arc<Count>) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (Waker::from(c.clone()), c)
    }

    /// Resources that record being dropped.
    struct Res(Rc<Cell<bool>>);

    impl Drop for Res {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }

    fn res() -> (Box<dyn Any>, Rc<Cell<bool>>) {
        let flag = Rc::new(Cell::new(false));
        (Box::new(Res(flag.clone())), flag)
    }

    fn cqe(result: i32, flags: u32) -> Cqe {
        Cqe { result, flags }
    }

    fn with_buffer(result: i32, bid: u16, more: bool) -> Cqe {
        cqe(
            result,
            F_BUFFER | (u32::from(bid) << 16) | if more { F_MORE } else { 0 },
        )
    }

    fn fire(act: Actions) -> Actions {
        if let Some(w) = act.wake.as_ref() {
            w.wake_by_ref();
        }
        act
    }

    #[test]
    fn cqe_decodes_more_and_buffer() {
        assert!(cqe(0, F_MORE).more());
        assert!(!cqe(0, 0).more());
        assert_eq!(with_buffer(5, 9, false).buffer(), Some(9));
        assert_eq!(cqe(5, 0).buffer(), None);
        assert_eq!(
            cqe(-libc::EPIPE, 0).io_result().unwrap_err().raw_os_error(),
            Some(libc::EPIPE)
        );
        assert_eq!(cqe(7, 0).io_result().unwrap(), 7);
    }

    #[test]
    fn single_completes_before_poll() {
        let mut op = Single::new();
        let act = op.complete(cqe(42, 0));
        assert!(act.wake.is_none() && !act.free() && !act.cancel());
        let (w, _) = waker();
        assert_eq!(op.poll(&w), Poll::Ready(cqe(42, 0)));
        assert!(!op.in_kernel());
    }

    #[test]
    fn single_polled_then_completed_wakes_the_waiter_once() {
        let mut op = Single::new();
        let (w, count) = waker();
        assert_eq!(op.poll(&w), Poll::Pending);
        assert!(op.in_kernel());
        // A second poll with another waker replaces it.
        let (w2, count2) = waker();
        assert_eq!(op.poll(&w2), Poll::Pending);
        let _ = fire(op.complete(cqe(3, 0)));
        assert_eq!(count.0.load(Ordering::Relaxed), 0);
        assert_eq!(count2.0.load(Ordering::Relaxed), 1);
        assert_eq!(op.poll(&w2), Poll::Ready(cqe(3, 0)));
    }

    #[test]
    fn zero_copy_send_completes_only_on_its_notification() {
        let mut op = Single::new();
        let (w, count) = waker();
        assert_eq!(op.poll(&w), Poll::Pending);
        // The result (F_MORE): not done yet, nobody woken.
        let act = op.complete(cqe(4096, F_MORE));
        assert!(act.wake.is_none() && act.zc_notified().is_none());
        assert_eq!(op.poll(&w), Poll::Pending);
        assert!(op.in_kernel());
        // The notification completes it with the result, reporting a copy.
        let act = fire(op.complete(cqe(NOTIF_USAGE_ZC_COPIED as i32, 0)));
        assert_eq!(act.zc_notified(), Some(true));
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert_eq!(op.poll(&w), Poll::Ready(cqe(4096, F_MORE)));
    }

    #[test]
    fn zero_copy_result_before_any_poll_still_waits_for_the_notification() {
        let mut op = Single::new();
        let _ = op.complete(cqe(10, F_MORE));
        let (w, count) = waker();
        assert_eq!(op.poll(&w), Poll::Pending);
        let act = fire(op.complete(cqe(0, 0)));
        assert_eq!(act.zc_notified(), Some(false));
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert_eq!(op.poll(&w), Poll::Ready(cqe(10, F_MORE)));
    }

    #[test]
    fn abandoned_single_keeps_resources_until_the_final_completion() {
        let mut op = Single::new();
        let (w, _) = waker();
        let _ = op.poll(&w);
        let (r, dropped) = res();
        let act = op.abandon(r);
        assert!(act.cancel() && !act.free() && act.bury.is_none());
        assert!(!dropped.get());
        assert!(op.in_kernel());
        // The cancelled op's completion frees the slot and hands the
        // resources to the graveyard (dropped by the driver, not here).
        let act = op.complete(cqe(-libc::ECANCELED, 0));
        assert!(act.free() && act.wake.is_none());
        assert!(!dropped.get());
        drop(act.bury);
        assert!(dropped.get());
    }

    #[test]
    fn abandoned_zero_copy_send_waits_for_the_notification() {
        let mut op = Single::new();
        let _ = op.complete(cqe(100, F_MORE));
        let (r, dropped) = res();
        let act = op.abandon(r);
        assert!(act.cancel() && !act.free());
        let act = op.complete(cqe(0, 0));
        assert!(act.free());
        drop(act);
        assert!(dropped.get());
    }

    #[test]
    fn abandoned_after_completion_frees_at_once() {
        let mut op = Single::new();
        let _ = op.complete(cqe(1, 0));
        let (r, dropped) = res();
        let act = op.abandon(r);
        assert!(act.free() && !act.cancel());
        assert!(act.bury.is_some());
        drop(act);
        assert!(dropped.get());
    }

    #[test]
    fn abandoned_single_recycles_a_buffer_its_late_completion_carries() {
        let mut op = Single::new();
        let (r, _) = res();
        let _ = op.abandon(r);
        let act = op.complete(with_buffer(64, 5, false));
        assert_eq!(act.recycle, Some(5));
        assert!(act.free());
    }

    #[test]
    #[should_panic(expected = "abandoned")]
    fn polling_an_abandoned_single_is_a_bug() {
        let mut op = Single::new();
        let (r, _) = res();
        let _ = op.abandon(r);
        let (w, _) = waker();
        let _ = op.poll(&w);
    }

    #[test]
    fn multishot_queues_completions_in_order_and_wakes_the_owner() {
        let mut m = Multishot::new(false, usize::MAX);
        let (w, count) = waker();
        assert!(!m.wait(&w), "armed: nothing to re-submit");
        let _ = fire(m.complete(with_buffer(10, 1, true)));
        let _ = fire(m.complete(with_buffer(20, 2, true)));
        // The waker is taken by the first completion.
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert_eq!(m.queued(), 2);
        assert_eq!(m.take(), Some(with_buffer(10, 1, true)));
        assert_eq!(m.take(), Some(with_buffer(20, 2, true)));
        assert_eq!(m.take(), None);
        assert!(m.in_kernel());
    }

    #[test]
    fn multishot_error_is_queued_and_counted() {
        let mut m = Multishot::new(false, usize::MAX);
        let act = m.complete(cqe(-libc::ECONNRESET, 0));
        assert!(act.failed());
        assert!(!m.in_kernel());
        assert_eq!(m.take(), Some(cqe(-libc::ECONNRESET, 0)));
    }

    #[test]
    fn multishot_that_ends_by_itself_is_rearmed_by_the_waiting_owner() {
        let mut m = Multishot::new(false, usize::MAX);
        let _ = m.complete(with_buffer(5, 0, false)); // single-shot style end
        assert_eq!(m.take().map(|c| c.result), Some(5));
        let (w, _) = waker();
        assert!(m.wait(&w), "ended: the owner re-submits");
        assert!(m.in_kernel());
        assert!(!m.wait(&w), "armed again: nothing more to submit");
    }

    #[test]
    fn starved_multishot_is_not_queued_and_rearms_only_through_the_driver() {
        let mut m = Multishot::new(false, usize::MAX);
        let act = m.complete(cqe(-libc::ENOBUFS, 0));
        assert!(act.starved() && !act.failed() && act.wake.is_none());
        assert_eq!(m.queued(), 0);
        let (w, _) = waker();
        assert!(
            !m.wait(&w),
            "a starved op waits for buffers, not for its owner"
        );
        assert!(m.rearm_starved());
        assert!(m.in_kernel());
        assert!(!m.rearm_starved(), "re-armed once");
    }

    #[test]
    fn multishot_with_too_many_untaken_completions_is_throttled_until_taken() {
        let mut m = Multishot::new(false, 3);
        let (w, count) = waker();
        assert!(!m.wait(&w));
        assert!(fire(m.complete(with_buffer(1, 0, true))).is_only_wake());
        let act = m.complete(with_buffer(1, 1, true));
        assert!(!act.cancel());
        let act = m.complete(with_buffer(1, 2, true));
        assert!(act.cancel() && act.throttled(), "third untaken: cancel");
        // Completions racing with the cancel are still data, in order; no
        // second cancel.
        let act = m.complete(with_buffer(1, 3, true));
        assert!(!act.cancel() && !act.throttled());
        // The owner takes two, then waits: still throttled (two queued,
        // the cancel not done), nothing to re-submit.
        assert_eq!(m.take().and_then(|c| c.buffer()), Some(0));
        assert_eq!(m.take().and_then(|c| c.buffer()), Some(1));
        assert!(!m.wait(&w));
        // The cancel's terminal completion is not an error for the owner.
        let act = fire(m.complete(cqe(-libc::ECANCELED, 0)));
        assert!(!act.failed() && !act.starved());
        assert!(m.is_idle());
        assert!(!m.wait(&w), "two completions still untaken: no re-arm");
        assert_eq!(m.take().and_then(|c| c.buffer()), Some(2));
        assert_eq!(m.take().and_then(|c| c.buffer()), Some(3));
        assert_eq!(m.take(), None);
        assert!(m.wait(&w), "all taken: the owner re-arms");
        assert!(m.in_kernel());
        assert!(count.0.load(Ordering::Relaxed) >= 1);
    }

    #[test]
    fn a_throttle_that_ends_in_enobufs_is_not_starvation() {
        let mut m = Multishot::new(false, 1);
        let act = m.complete(with_buffer(1, 0, true));
        assert!(act.cancel() && act.throttled());
        let act = m.complete(cqe(-libc::ENOBUFS, 0));
        assert!(!act.starved() && !act.failed());
        assert!(!m.rearm_starved(), "not on the starved list");
        assert!(m.take().is_some());
        let (w, _) = waker();
        assert!(m.wait(&w), "the owner re-arms");
    }

    #[test]
    fn a_throttled_multishot_ending_by_itself_keeps_its_data() {
        // The kernel ends the operation (a final data completion without
        // F_MORE) before the throttle's cancel reaches it: the data is
        // queued, the cancel finds nothing, the owner re-arms after taking.
        let mut m = Multishot::new(false, 1);
        let act = m.complete(with_buffer(1, 0, true));
        assert!(act.cancel());
        let act = m.complete(with_buffer(2, 1, false));
        assert!(!act.cancel() && !act.failed());
        assert_eq!(m.queued(), 2);
        assert!(m.take().is_some() && m.take().is_some());
        let (w, _) = waker();
        assert!(m.wait(&w));
    }

    #[test]
    fn paused_multishot_delivers_data_then_goes_idle_until_resumed() {
        let mut m = Multishot::new(false, usize::MAX);
        let (w, count) = waker();
        assert!(!m.wait(&w));
        assert!(m.pause(), "armed: cancel it");
        assert!(!m.pause(), "cancelled once");
        assert!(!m.is_idle());
        // Data that raced with the cancel still arrives, in order.
        let _ = fire(m.complete(with_buffer(7, 3, true)));
        assert_eq!(m.take(), Some(with_buffer(7, 3, true)));
        // The terminal completion of the pause is not data.
        assert!(!m.wait(&w), "paused: no re-arm");
        let act = fire(m.complete(cqe(-libc::ECANCELED, 0)));
        assert!(!act.failed());
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        assert!(m.is_idle());
        assert_eq!(m.take(), None);
        assert!(!m.wait(&w), "still paused");
        m.resume();
        assert!(m.wait(&w), "resumed: the owner re-arms");
    }

    #[test]
    fn pausing_an_idle_multishot_needs_no_cancel() {
        let mut m = Multishot::new(false, usize::MAX);
        let _ = m.complete(cqe(-libc::ENOBUFS, 0));
        assert!(!m.pause());
        assert!(m.is_idle());
        // Buffers come back while paused: stays paused, off the starved list.
        assert!(!m.rearm_starved());
        m.resume();
        let (w, _) = waker();
        assert!(m.wait(&w));
    }

    #[test]
    fn end_of_stream_during_a_pause_is_delivered() {
        let mut m = Multishot::new(false, usize::MAX);
        assert!(m.pause());
        let _ = m.complete(cqe(0, 0));
        assert!(m.is_idle());
        assert_eq!(m.take(), Some(cqe(0, 0)));
    }

    #[test]
    fn abandoned_multishot_releases_queued_buffers_and_waits_for_its_end() {
        let mut m = Multishot::new(false, usize::MAX);
        let _ = m.complete(with_buffer(10, 4, true));
        let _ = m.complete(with_buffer(10, 6, true));
        let (r, dropped) = res();
        let (act, untaken) = m.abandon(r);
        assert!(act.cancel() && !act.free());
        let bids: Vec<_> = untaken
            .iter()
            .map(|c| Released::of(*c, false).recycle)
            .collect();
        assert_eq!(bids, vec![Some(4), Some(6)]);
        // A late data completion: its buffer goes back, the slot stays.
        let act = m.complete(with_buffer(3, 8, true));
        assert_eq!(act.recycle, Some(8));
        assert!(!act.free() && act.wake.is_none());
        assert!(!dropped.get());
        // The final one frees the slot and buries the resources.
        let act = m.complete(cqe(-libc::ECANCELED, 0));
        assert!(act.free());
        drop(act);
        assert!(dropped.get());
    }

    #[test]
    fn abandoned_idle_multishot_frees_at_once() {
        let mut m = Multishot::new(false, usize::MAX);
        let _ = m.complete(cqe(0, 0));
        let (r, dropped) = res();
        let (act, untaken) = m.abandon(r);
        assert!(act.free() && !act.cancel());
        assert_eq!(untaken.len(), 1);
        drop(act);
        assert!(dropped.get());
        assert!(!m.rearm_if_idle());
    }

    #[test]
    fn abandoned_accept_closes_descriptors_nobody_takes() {
        // Real descriptors, so that closing them is observable.
        let fds: Vec<i32> = (0..2)
            .map(|_| {
                // SAFETY: eventfd takes no pointers.
                let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
                assert!(fd >= 0);
                fd
            })
            .collect();
        let is_open = |fd: i32| {
            // SAFETY: F_GETFD takes no pointers; a closed fd gives EBADF.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            flags != -1
        };
        let mut m = Multishot::new(true, usize::MAX);
        let _ = m.complete(cqe(fds[0], F_MORE));
        let (r, _) = res();
        let (act, untaken) = m.abandon(r);
        assert!(act.cancel());
        for c in untaken {
            drop(Released::of(c, m.returns_fd()).close);
        }
        assert!(!is_open(fds[0]));
        // An accept that raced with the cancel: closed too.
        let act = m.complete(cqe(fds[1], F_MORE));
        assert!(act.close.is_some());
        drop(act);
        assert!(!is_open(fds[1]));
        // Errors carry no descriptor.
        let act = m.complete(cqe(-libc::ECANCELED, 0));
        assert!(act.close.is_none() && act.free());
    }

    #[test]
    #[cfg_attr(miri, ignore = "leaks on purpose, which miri reports")]
    fn leaking_keeps_resources_alive() {
        let mut op = Single::new();
        let (r, dropped) = res();
        let _ = op.abandon(r);
        op.leak();
        assert!(!dropped.get());
        let mut m = Multishot::new(false, usize::MAX);
        let (r, dropped) = res();
        let _ = m.abandon(r);
        m.leak();
        assert!(!dropped.get());
    }
}
