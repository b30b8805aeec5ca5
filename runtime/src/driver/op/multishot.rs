//! The handle of a multishot operation: a stream of completions in one slot.
//!
//! [`Multi::arm`] submits the operation's SQE, which the driver keeps for
//! re-arming: the owner re-arms it when it ended by itself, the driver when it
//! stopped for lack of provided buffers. The handle owns the operation's
//! resources while it lives; dropped, it moves them into the slot, which
//! keeps them until the final completion (see the lifecycle's `Multishot`).

use std::marker::PhantomData;
use std::task::Context;

use io_uring::squeue;

use crate::driver::lifecycle::Cqe;

/// A multishot io_uring operation that owns what its SQE names.
///
/// # Safety
///
/// The entry returned by [`entry`](MultishotOperation::entry) may name only
/// memory and descriptors that `self` keeps valid (heap memory owned by
/// `self`, descriptors it keeps open, `'static` memory) while it lives,
/// however it is moved: the driver may submit the same entry again at any
/// time until the handle is dropped, and keeps `self` after that until the
/// final completion.
pub(crate) unsafe trait MultishotOperation: 'static {
    /// A non-negative result is a descriptor created by the kernel (closed by
    /// the driver when nobody takes it).
    const RETURNS_FD: bool;

    /// Its completions carry buffers of the core's shared buffer ring: the
    /// operation is throttled while [`untaken_limit`] of them wait for its
    /// owner, so that one socket whose owner does not read cannot empty the
    /// ring for every other socket of the core.
    const TAKES_BUFFERS: bool = false;

    /// Builds the SQE (its `user_data` is set by the driver).
    fn entry(&self) -> squeue::Entry;
}

/// How many completions carrying ring buffers one operation may leave
/// untaken before it is throttled: a sixteenth of the ring (16 of the
/// default 256, 256 KiB of 16 KiB buffers), at least 4. An owner that keeps
/// up never comes near it (it takes each loop turn's completions in that
/// turn); one that does not leaves fifteen sixteenths to the other sockets.
/// A ring of 4 buffers or fewer has nothing to share: no limit (the
/// operation starves and is re-armed as buffers come back).
pub(crate) fn untaken_limit(ring_buffers: u16) -> usize {
    let limit = (usize::from(ring_buffers) / 16).max(4);
    if limit >= usize::from(ring_buffers) {
        usize::MAX
    } else {
        limit
    }
}

/// A multishot operation in flight on the current core.
pub(crate) struct Multi<O: MultishotOperation> {
    key: usize,
    op: Option<O>,
    /// Operations belong to the ring of the core that made them.
    _not_send: PhantomData<*const ()>,
}

impl<O: MultishotOperation> Multi<O> {
    /// Submits `op` on the current core.
    ///
    /// # Panics
    ///
    /// Off a ringwire core thread.
    pub(crate) fn arm(op: O) -> Multi<O> {
        let entry = op.entry();
        let key = crate::driver::with(|cx| {
            let limit = if O::TAKES_BUFFERS {
                untaken_limit(cx.bufs.borrow().count())
            } else {
                usize::MAX
            };
            // SAFETY: `O: MultishotOperation` promises the entry names only
            // what `op` keeps valid; `op` stays in this handle, and in the
            // slot after the handle is dropped, until the final completion.
            unsafe {
                cx.driver
                    .borrow_mut()
                    .submit_multi(entry, O::RETURNS_FD, limit)
            }
        });
        Multi {
            key,
            op: Some(op),
            _not_send: PhantomData,
        }
    }

    /// The operation's slot (for operation types that read completions
    /// together with other driver state).
    pub(crate) fn key(&self) -> usize {
        self.key
    }

    /// Keeps the task's waker for the next completion, re-arming the
    /// operation if it ended by itself.
    pub(crate) fn wait(&mut self, cx: &mut Context<'_>) {
        let key = self.key;
        crate::driver::with(|d| d.driver.borrow_mut().wait_multi(key, cx.waker()));
    }

    /// The next completion that already arrived.
    pub(crate) fn try_next(&mut self) -> Option<Cqe> {
        let key = self.key;
        crate::driver::with(|d| d.driver.borrow_mut().multi(key).take())
    }

    /// Completions waiting to be taken.
    pub(crate) fn queued(&self) -> usize {
        let key = self.key;
        crate::driver::with(|d| d.driver.borrow_mut().multi(key).queued())
    }

    /// Stops the operation (cancels it if it is in the kernel); completions
    /// that race with the cancel still arrive. Done once [`is_idle`].
    ///
    /// [`is_idle`]: Multi::is_idle
    pub(crate) fn pause(&mut self) {
        let key = self.key;
        crate::driver::with(|d| d.driver.borrow_mut().pause_multi(key));
    }

    /// Whether nothing of the operation is in the kernel.
    pub(crate) fn is_idle(&self) -> bool {
        let key = self.key;
        crate::driver::with(|d| d.driver.borrow_mut().multi(key).is_idle())
    }

    /// Waits (keeping the task's waker) until the next completion or the end
    /// of a pause; never re-arms.
    pub(crate) fn wait_paused(&mut self, cx: &mut Context<'_>) {
        let key = self.key;
        crate::driver::with(|d| {
            // A paused operation is never re-armed by `wait`.
            let _ = d.driver.borrow_mut().multi(key).wait(cx.waker());
        });
    }

    /// Ends a pause; the operation is re-armed on the next
    /// [`poll_next`](Multi::poll_next).
    pub(crate) fn resume(&mut self) {
        let key = self.key;
        crate::driver::with(|d| d.driver.borrow_mut().multi(key).resume());
    }
}

impl<O: MultishotOperation> Drop for Multi<O> {
    fn drop(&mut self) {
        let Some(op) = self.op.take() else { return };
        let key = self.key;
        // Handles are not `Send`, so this runs on the core that armed the
        // operation. Should its driver be gone anyway (the handle outlived
        // the core in a thread-local), the resources are leaked, never freed
        // while the kernel may still use them.
        let mut op = Some(op);
        crate::driver::try_with(|cx| {
            if let Some(op) = op.take() {
                let mut bufs = cx.bufs.borrow_mut();
                cx.driver
                    .borrow_mut()
                    .abandon_multi(key, Box::new(op), &mut bufs);
            }
        });
        if let Some(op) = op {
            std::mem::forget(op);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::untaken_limit;

    #[test]
    fn untaken_limit_is_a_sixteenth_of_the_ring_and_never_all_of_it() {
        assert_eq!(untaken_limit(256), 16);
        assert_eq!(untaken_limit(4096), 256);
        assert_eq!(untaken_limit(64), 4);
        assert_eq!(untaken_limit(5), 4);
        assert_eq!(untaken_limit(4), usize::MAX);
        assert_eq!(untaken_limit(1), usize::MAX);
    }
}
